"""The evaluator CLI against the official one, end to end, medians.

    python tools/benchmark_eval_cli.py [--repeat 5] [--images 1 100]
        [--size 1280 720] [--preds 100] [--work DIR]

For each image count, writes a synthetic case (GT and prediction bitmasks
of SIZE, about PREDS predictions an image, a score file) into a folder
outside the checkout, then runs, in turn,

    python -m bdd100k_ins_seg.eval      -g GT -r PRED --score-file S --nproc 1
    python -m bdd100k.eval.run -t ins_seg -g GT -r PRED --score-file S --nproc 1

from that folder, REPEAT times each (interpreter start included), checks
that both ``--out-file`` jsons are identical, and prints each one's median
wall time and the ratio official / ours pair by pair (its median).
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Writes about 1 MB per image into --work (default: a '
        'temporary folder, removed afterwards).')
    parser.add_argument('--repeat', type=int, default=5,
                        help='runs of each command per case (default 5)')
    parser.add_argument('--images', type=int, nargs='+', default=[1, 100],
                        help='image counts, one case each (default 1 100)')
    parser.add_argument('--size', type=int, nargs=2, default=[1280, 720],
                        metavar=('W', 'H'), help='image size (1280 720)')
    parser.add_argument('--preds', type=int, default=100,
                        help='about this many predictions an image (100: '
                        "a model's max_per_img)")
    parser.add_argument('--work', default=None,
                        help='folder for the cases (kept)')
    args = parser.parse_args(argv)
    if args.repeat < 1 or min(args.images) < 1 or args.preds < 1:
        parser.error('--repeat, --images and --preds must be positive')
    return args


def run(cmd, cwd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        from bdd100k_ins_seg.cli import fail
        fail(' '.join(cmd[1:4]), f'exit {proc.returncode}: '
             f'{proc.stderr.strip().splitlines()[-1:]}')
    return seconds


def bench_case(root, num_images, args):
    from bdd100k_ins_seg.benchmark.synthetic import write_case
    case = write_case(root, seed=num_images, num_images=num_images,
                      size=tuple(args.size), num_gt=12, num_pred=args.preds)
    with open(case['score_file']) as f:
        labels = [len(fr['labels'] or []) for fr in json.load(f)]
    flags = ['-g', case['gt_dir'], '-r', case['pred_dir'], '--score-file',
             case['score_file'], '--nproc', '1', '--out-file']
    ours = [sys.executable, '-m', 'bdd100k_ins_seg.eval', *flags,
            osp.join(root, 'ours.json')]
    official = [sys.executable, '-m', 'bdd100k.eval.run', '-t', 'ins_seg',
                *flags, osp.join(root, 'official.json')]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    times = {'ours': [], 'official': []}
    ratios = []
    for _ in range(args.repeat):
        a = run(ours, root, env)
        b = run(official, root, env)
        times['ours'].append(a)
        times['official'].append(b)
        ratios.append(b / a)
    with open(osp.join(root, 'ours.json')) as f:
        mine = json.load(f)
    with open(osp.join(root, 'official.json')) as f:
        theirs = json.load(f)
    same = json.dumps(mine, sort_keys=True) == json.dumps(theirs,
                                                          sort_keys=True)
    return dict(images=num_images, preds=statistics.mean(labels),
                ours=statistics.median(times['ours']),
                official=statistics.median(times['official']),
                ratio=statistics.median(ratios), identical=same)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    base = args.work or tempfile.mkdtemp(prefix='bench_eval_')
    print(f'median of {args.repeat} runs each, --nproc 1, '
          f'{args.size[0]}x{args.size[1]}, cases in {base}')
    print(f'{"images":>7s}{"preds/img":>10s}{"ours s":>9s}'
          f'{"official s":>12s}{"official/ours":>15s}  identical json')
    failed = False
    for n in args.images:
        root = osp.join(base, f'{n}_images')
        os.makedirs(root, exist_ok=True)
        row = bench_case(root, n, args)
        failed |= not row['identical']
        print(f'{row["images"]:7d}{row["preds"]:10.1f}{row["ours"]:9.2f}'
              f'{row["official"]:12.2f}{row["ratio"]:15.2f}  '
              f'{"yes" if row["identical"] else "NO"}', flush=True)
    if not args.work:
        import shutil
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
