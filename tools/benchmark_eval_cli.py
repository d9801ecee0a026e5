"""The evaluator CLI against the official one, end to end, medians.

    python tools/benchmark_eval_cli.py [--repeat 5] [--images 1 100]
        [--size 1280 720] [--preds 100] [--work DIR]

For each image count, writes a synthetic case (GT and prediction bitmasks
of SIZE, PREDS predictions an image less those wholly covered by
higher-scoring ones, a score file) into a folder
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


def write_clean_case(root, num_images, size, preds, seed=0):
    """GT and prediction bitmasks of ``size`` (W, H) and a score file:
    5..25 GT instances an image, exactly ``preds`` predictions (most near a
    GT, some anywhere, a wrong class now and then), every listed index
    painted. Returns dict(gt_dir, pred_dir, score_file)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    width, height = size
    gt_dir, pred_dir = osp.join(root, 'gt'), osp.join(root, 'pred')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    yy, xx = np.mgrid[:height, :width]

    def ellipse(cx, cy, rx, ry):
        return ((xx - cx) / rx)**2 + ((yy - cy) / ry)**2 <= 1

    def bitmask(ids, cats, crowd=None):
        out = np.zeros((height, width, 4), np.uint8)
        out[..., 0] = cats
        out[..., 1] = 0 if crowd is None else crowd * 2
        out[..., 2] = ids >> 8
        out[..., 3] = ids & 255
        return out

    frames = []
    for k in range(num_images):
        name = f'{k:05d}'
        shapes = []
        gt_ids = np.zeros((height, width), np.int32)
        gt_cat = np.zeros((height, width), np.uint8)
        for i in range(int(rng.integers(5, 26))):
            s = (rng.uniform(0, width), rng.uniform(0, height),
                 rng.uniform(8, width / 8), rng.uniform(8, height / 6))
            cat = int(rng.choice([1, 2, 3, 3, 3, 4, 5, 7, 8]))
            mask = ellipse(*s)
            gt_ids[mask] = i + 1
            gt_cat[mask] = cat
            shapes.append((s, cat))
        Image.fromarray(bitmask(gt_ids, gt_cat)).save(
            osp.join(gt_dir, name + '.png'))
        scores = np.sort(rng.random(preds))
        dt_ids = np.zeros((height, width), np.int32)
        dt_cat = np.zeros((height, width), np.uint8)
        labels = []
        for j in range(preds):  # lowest score first: higher scores on top
            if rng.random() < 0.5:
                (cx, cy, rx, ry), cat = shapes[int(rng.integers(len(shapes)))]
                s = (cx + rng.normal(0, 3), cy + rng.normal(0, 3),
                     rx * rng.uniform(0.8, 1.2), ry * rng.uniform(0.8, 1.2))
                if rng.random() < 0.1:
                    cat = int(rng.integers(1, 9))
            else:
                s = (rng.uniform(0, width), rng.uniform(0, height),
                     rng.uniform(6, width / 10), rng.uniform(6, height / 8))
                cat = int(rng.integers(1, 9))
            mask = ellipse(*s)
            dt_ids[mask] = j + 1
            dt_cat[mask] = cat
        present = set(np.unique(dt_ids).tolist()) - {0}
        for j in range(preds):
            if j + 1 in present:  # an index another mask covered is gone
                labels.append(dict(index=j + 1, score=float(scores[j])))
        Image.fromarray(bitmask(dt_ids, dt_cat)).save(
            osp.join(pred_dir, name + '.png'))
        frames.append(dict(name=name + '.jpg', labels=labels))
    score_file = osp.join(root, 'score.json')
    with open(score_file, 'w') as f:
        json.dump(frames, f)
    return dict(gt_dir=gt_dir, pred_dir=pred_dir, score_file=score_file)


def bench_case(root, num_images, args):
    case = write_clean_case(root, num_images, tuple(args.size), args.preds,
                            seed=num_images)
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
