"""Speed of the model forward, post-processing, test.py and the evaluator,
each against a baseline in the same run (bdd100k_ins_seg.benchmark).

    python tools/benchmark.py CONFIG --device cpu|cuda --json OUT
                              [--repeats N] [--threads T] [--stages a,d,e]
                              [--size WxH] [--checkpoint CKPT]
                              [--train-batches N] [--test-runs N]
"""
import argparse

#: Stage letters, as in bdd100k_ins_seg.benchmark.STAGE_MODULES (not
#: imported here: --help answers without loading the stack).
STAGE_LETTERS = ('a', 'b', 'c', 'd', 'e', 'f', 't', 'g')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Images/s and ms per image of the model forward (a), '
        'post-processing (b), test.py --format-only (c), the evaluator (d), '
        "the forward against torchvision's maskrcnn_resnet50_fpn (e), the "
        'convolutions (f), a training step (t) and the deformable '
        "convolutions' forward + backward against torchvision's (g), each "
        'against its baseline in the same run (medians).')
    parser.add_argument('config', help='model config, or a model name of '
                        'the zoo (e.g. mask_rcnn_r50_fpn_3x, '
                        'mask_rcnn_r18_fpn_sample)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--json', required=True, metavar='OUT',
                        help='write the rows and the machine here')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed repetitions per measure (median; after '
                        'one warm-up)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: '
                        'bdd100k_ins_seg.engine.threads, OMP_NUM_THREADS wins)')
    parser.add_argument('--stages', default=None,
                        help='comma-separated subset of a,b,c,d,e,f,t,g '
                        '(default: all)')
    parser.add_argument('--size', default='1280x720',
                        help='image WIDTHxHEIGHT (default 1280x720)')
    parser.add_argument('--checkpoint', default=None, metavar='CKPT',
                        help="weights of the config's model in stages a, c, "
                        'e and t (default: untrained)')
    parser.add_argument('--train-batches', type=int, default=0, metavar='N',
                        help='stage t: step over N batches of the '
                        "config's training set (its pipeline sets the "
                        'size) instead of one synthetic batch')
    parser.add_argument('--test-runs', type=int, default=None, metavar='N',
                        help='stage c: test.py processes to time (default: '
                        'half of --repeats, at least 2)')
    parser.add_argument('--images', type=int, default=8,
                        help="images of the evaluator's synthetic split")
    parser.add_argument('--work-dir', default=None,
                        help='scratch folder (default: a temporary one)')
    args = parser.parse_args(argv)
    if args.stages is not None:
        args.stages = [s.strip() for s in args.stages.split(',') if s.strip()]
        bad = [s for s in args.stages if s not in STAGE_LETTERS]
        if bad or not args.stages:
            parser.error(f'--stages: unknown stage {bad[0] if bad else ""!r}'
                         f' (choose from {",".join(STAGE_LETTERS)})')
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
        if width < 32 or height < 32:
            raise ValueError
    except ValueError:
        parser.error(f'--size: expected WIDTHxHEIGHT of at least 32x32, got '
                     f'{args.size!r}')
    args.size = (width, height)
    for flag in ('repeats', 'images', 'threads', 'test_runs'):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f'--{flag.replace("_", "-")}: must be at least 1, '
                         f'got {value}')
    if args.train_batches < 0:
        parser.error(f'--train-batches: must be at least 0, got '
                     f'{args.train_batches}')
    if args.train_batches and args.stages and 't' not in args.stages:
        parser.error('--train-batches: it sets the batches of stage t, '
                     'which --stages leaves out')
    return args


def main(argv=None):
    args = parse_args(argv)
    from bdd100k_ins_seg.benchmark import run_cli
    run_cli(args)


if __name__ == '__main__':
    main()
