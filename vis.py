"""Overlay BDD100K instance masks on their images and save JPEGs.

    python vis.py -i IMAGES -c MASKS -o OUT [--score-file score.json]
                  [--nproc N] [-n NUM]

MASKS holds bitmask PNGs (RGBA, as written by test.py or the GT labels) or
colored PNGs (RGB, from tools/colorize.py), named like the images. Each
instance gets its class's hue, outlines, and with --score-file a
"<class> <score>" caption. Writes OUT/<image stem>.jpg.
"""
import argparse
import os
import os.path as osp
import sys


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-i', '--images', required=True,
                        help='folder of images (.jpg/.png)')
    parser.add_argument('-c', '--masks', required=True,
                        help='folder of bitmask or colored PNGs')
    parser.add_argument('-o', '--out', required=True, help='output folder')
    parser.add_argument('--score-file',
                        help='score.json of the predictions (captions)')
    parser.add_argument('--nproc', type=int, default=4,
                        help='worker processes (default 4)')
    parser.add_argument('-n', '--num', type=int, default=None,
                        help='only the first NUM masks (sorted by name)')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='mask opacity (default 0.5)')
    return parser.parse_args()


def _render(task):
    import cv2
    import numpy as np
    from PIL import Image

    from bdd100k_ins_seg.bitmask import read_bitmask
    from bdd100k_ins_seg.visualization import overlay, read_image
    mask_path, img_path, out_path, labels, alpha = task
    image = read_image(img_path)
    with Image.open(mask_path) as mask:
        mode = mask.mode
    if mode == 'RGBA':
        categories, instances = read_bitmask(mask_path)
        out = overlay(image, categories, instances, labels=labels,
                      alpha=alpha)
    else:
        colored = read_image(mask_path)
        out = overlay(image, colored=colored, alpha=alpha)
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError(f'cannot encode {out_path}')
    from bdd100k_ins_seg.bitmask import atomic_write
    atomic_write(out_path, np.asarray(data).tobytes())
    return out_path


def main():
    args = parse_args()
    for name, folder in (('image', args.images), ('mask', args.masks)):
        if not osp.isdir(folder):
            sys.exit(f'vis.py: error: {name} folder not found: {folder}')
    from bdd100k_ins_seg.bitmask import load_score_file
    from bdd100k_ins_seg.parallel import map_with_progress
    from bdd100k_ins_seg.visualization import find_image
    scores = {}
    if args.score_file:
        try:
            scores = load_score_file(args.score_file)
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f'vis.py: error: cannot read score file '
                     f'{args.score_file}: {e}')
    masks = sorted(n for n in os.listdir(args.masks) if n.endswith('.png'))
    if args.num is not None:
        masks = masks[:args.num]
    if not masks:
        sys.exit(f'vis.py: error: no PNG masks in {args.masks}')
    tasks = []
    for name in masks:
        stem = osp.splitext(name)[0]
        img_path = find_image(args.images, stem)
        if img_path is None:
            sys.exit(f'vis.py: error: no image for mask {name} in '
                     f'{args.images}')
        tasks.append((osp.join(args.masks, name), img_path,
                      osp.join(args.out, stem + '.jpg'), scores.get(name),
                      args.alpha))
    os.makedirs(args.out, exist_ok=True)
    try:
        map_with_progress(_render, tasks, args.nproc, 'vis', ordered=False)
    except (ValueError, OSError) as e:  # unreadable mask/image, disk full
        sys.exit(f'vis.py: error: {e}')
    print(f'{len(tasks)} overlays written to {args.out}')


if __name__ == '__main__':
    main()
