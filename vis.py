"""Overlay BDD100K instance masks on their images and save JPEGs.

    python vis.py -i IMAGES -c MASKS -o OUT [--score-file score.json]
                  [--score-thr 0.3] [--max-per-image K] [--nproc N] [-n NUM]

MASKS holds bitmask PNGs (RGBA, as written by test.py or the GT labels) or
colored PNGs (RGB, from tools/colorize.py), named like the images. Each
instance gets its class's hue, outlines, and with --score-file a
"<class> <score>" caption. Writes OUT/<image stem>.jpg.

With --score-file only the confident predictions are drawn: those scoring at
least --score-thr (default 0.3; the evaluation uses all of them, down to
the models' 0.05, which would cover a real image in clutter), at most
--max-per-image of them. Masks without a score file (GT, colored PNGs) are
drawn in full.
"""
import argparse
import os
import os.path as osp

DEFAULT_SCORE_THR = 0.3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='\n\n'.join(__doc__.split('\n\n')[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--images', required=True,
                        help='folder of images (jpg, png, webp, tif, ...)')
    parser.add_argument('-c', '--masks', required=True,
                        help='folder of bitmask or colored PNGs')
    parser.add_argument('-o', '--out', required=True, help='output folder')
    parser.add_argument('--score-file',
                        help='score.json of the predictions (captions, '
                        'score threshold)')
    parser.add_argument('--score-thr', type=float, default=None,
                        help='draw predictions scoring at least this '
                        f'(default {DEFAULT_SCORE_THR}; 0 draws all; needs '
                        '--score-file)')
    parser.add_argument('--max-per-image', type=int, default=None,
                        metavar='K',
                        help='draw at most the K highest-scoring predictions '
                        'of an image (default: no limit; needs --score-file)')
    parser.add_argument('--nproc', type=int, default=4,
                        help='worker processes (default 4)')
    parser.add_argument('-n', '--num', type=int, default=None,
                        help='only the first NUM masks (sorted by name)')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='mask opacity (default 0.5)')
    args = parser.parse_args(argv)
    if not args.score_file:
        for given, flag in ((args.score_thr, '--score-thr'),
                            (args.max_per_image, '--max-per-image')):
            if given is not None:
                parser.error(f'{flag} needs --score-file (the scores)')
    if args.score_thr is None:
        args.score_thr = DEFAULT_SCORE_THR
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr: {args.score_thr} is not in [0, 1]')
    for value, flag in ((args.max_per_image, '--max-per-image'),
                        (args.num, '-n/--num'), (args.nproc, '--nproc')):
        if value is not None and value < 1:
            parser.error(f'{flag}: {value} is not a positive number')
    if not 0 <= args.alpha <= 1:
        parser.error(f'--alpha: {args.alpha} is not in [0, 1]')
    return args


def _render(task):
    import cv2
    import numpy as np
    from PIL import Image

    from bdd100k_ins_seg.formats.bitmask import atomic_write, read_bitmask
    from bdd100k_ins_seg.visualization.overlay import (
        overlay,
        read_image,
        select_instances)
    (mask_path, img_path, out_path, labels, alpha, score_thr,
     max_num) = task
    image = read_image(img_path)
    with Image.open(mask_path) as mask:
        mode = mask.mode
    if mode == 'RGBA':
        categories, instances = read_bitmask(mask_path)
        if labels is not None:
            categories, instances, labels = select_instances(
                categories, instances, labels, score_thr, max_num)
        out = overlay(image, categories, instances, labels=labels,
                      alpha=alpha)
    else:
        colored = read_image(mask_path)
        out = overlay(image, colored=colored, alpha=alpha)
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError(f'cannot encode {out_path}')
    atomic_write(out_path, np.asarray(data).tobytes())
    return out_path


def main(argv=None):
    args = parse_args(argv)
    from bdd100k_ins_seg.cli import fail
    for name, folder in (('image', args.images), ('mask', args.masks)):
        if not osp.isdir(folder):
            fail(f'{name} folder {folder}', 'not found')
    from bdd100k_ins_seg.formats.bitmask import load_score_file
    from bdd100k_ins_seg.parallel import map_with_progress
    from bdd100k_ins_seg.visualization.overlay import find_image
    scores = None
    if args.score_file:
        try:
            scores = load_score_file(args.score_file)
        except (OSError, ValueError, KeyError) as e:
            fail(f'score file {args.score_file}', e)
    masks = sorted(n for n in os.listdir(args.masks) if n.endswith('.png'))
    if args.num is not None:
        masks = masks[:args.num]
    if not masks:
        fail(f'mask folder {args.masks}', 'no PNG masks in it')
    tasks = []
    for name in masks:
        stem = osp.splitext(name)[0]
        img_path = find_image(args.images, stem)
        if img_path is None:
            fail(f'mask {name}', f'no image {stem}.* in {args.images}')
        labels = None if scores is None else scores.get(name, {})
        tasks.append((osp.join(args.masks, name), img_path,
                      osp.join(args.out, stem + '.jpg'), labels,
                      args.alpha, args.score_thr, args.max_per_image))
    os.makedirs(args.out, exist_ok=True)
    try:
        map_with_progress(_render, tasks, args.nproc, 'vis', ordered=False)
    except (ValueError, OSError) as e:  # unreadable mask/image, disk full
        fail(f'mask folder {args.masks}', e)
    print(f'{len(tasks)} overlays written to {args.out}')


if __name__ == '__main__':
    main()
