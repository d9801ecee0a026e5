"""Run an instance-segmentation model over a video and draw its predictions.

    python tools/video_demo.py VIDEO CONFIG [CHECKPOINT] --out OUT.mp4
        [--score-thr 0.3] [--device cuda:0] [--batch-size N] [--format-dir DIR]

VIDEO is any file OpenCV reads. OUT.mp4 has its size, frame count and
frame rate, with the predictions scoring >= --score-thr drawn as vis.py
draws them (class colors, outlines, "<class> <score>" captions). Without
CHECKPOINT the config's published weights are used, as in test.py.
--format-dir DIR also writes each frame's bitmask and DIR/score.json in the
official format (every prediction, as test.py writes them), frames named
<video stem>-<frame index from 1, 7 digits>, as BDD100K names video frames.
"""
import argparse
import os.path as osp


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='\n\n'.join(__doc__.split('\n\n')[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('video', help='input video (any format OpenCV reads)')
    parser.add_argument('config', help='model config')
    parser.add_argument(
        'checkpoint', nargs='?',
        help='checkpoint file (default: the published weights of CONFIG)')
    parser.add_argument('--out', required=True, help='output .mp4')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw predictions scoring at least this '
                        '(default 0.3)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda:0 if '
                        'available, else cpu)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='frames per forward pass (default: 4 on CUDA, '
                        '1 on CPU)')
    parser.add_argument('--format-dir',
                        help='also write bitmasks/ and score.json of every '
                        'frame here')
    parser.add_argument('--cfg-options', nargs='+', action='extend',
                        metavar='KEY=VALUE',
                        help='override config settings')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr: {args.score_thr} is not in [0, 1]')
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f'--batch-size: {args.batch_size} is not a positive '
                     'number')
    if not args.out.lower().endswith('.mp4'):
        parser.error(f'--out: {args.out} is not an .mp4 file name')
    if args.cfg_options:
        from bdd100k_ins_seg.cli import config_options
        try:
            args.cfg_options = config_options(args.cfg_options)
        except ValueError as e:
            parser.error(f'--cfg-options: {e}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from bdd100k_ins_seg.cli import InputError, fail
    if not osp.isfile(args.config):
        fail(f'config {args.config}', 'not found')
    if (args.checkpoint and '://' not in args.checkpoint
            and not osp.isfile(args.checkpoint)):
        fail(f'checkpoint {args.checkpoint}', 'not found')
    from bdd100k_ins_seg.inference.video import open_video
    try:  # before the model is built
        capture, info = open_video(args.video)
        capture.release()
    except InputError as e:
        fail(e.what, e.why)
    if args.format_dir:
        from bdd100k_ins_seg.inference.preflight import (PreflightError,
                                                         check_output_dir)
        try:
            check_output_dir(args.format_dir)
        except PreflightError as e:
            fail(e.what, e.why)

    import torch
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.config_lookup import (
        install_base_config_lookup)
    try:
        install_base_config_lookup()
        cfg = Config.fromfile(args.config)
    except Exception as e:  # syntax errors, missing bases, bad imports
        fail(f'config {args.config}', f'cannot be loaded: {type(e).__name__}'
             f': {e}')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from bdd100k_ins_seg.zoo import checkpoint_for_config
        try:
            checkpoint = checkpoint_for_config(args.config)
        except Exception as e:  # unknown config, download/md5 failure
            fail(f'config {args.config}', f'no published weights: {e}')
    from bdd100k_ins_seg.plugin.checkpoint import check_checkpoint_or_fail
    check_checkpoint_or_fail(cfg, checkpoint)
    device = args.device or ('cuda:0' if torch.cuda.is_available()
                             else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        fail(f'--device {device}', 'CUDA is not available')
    batch_size = args.batch_size or (4 if device.startswith('cuda') else 1)

    from bdd100k_ins_seg.inference.video import load_model, run_video
    try:
        model = load_model(cfg, checkpoint, device)
    except Exception as e:  # truncated, not a checkpoint, unsafe pickle
        fail('cannot load checkpoint', e)
    try:
        stats = run_video(model, cfg, args.video, args.out, args.score_thr,
                          batch_size, args.format_dir)
    except InputError as e:
        fail(e.what, e.why)
    print(f'{stats["frames"]} frames ({stats["width"]}x{stats["height"]}, '
          f'{stats["fps"]:g} fps) -> {args.out} in {stats["seconds"]:.1f} s '
          f'({stats["frames_per_second"]:.1f} frames/s on {device})' +
          (f'; bitmasks and score.json in {args.format_dir}'
           if args.format_dir else ''))


if __name__ == '__main__':
    main()
