"""The whole pipeline on the embedded sample, end to end (what `make demo` runs).

1. generate the sample dataset (tools/make_sample_data.py), unless present;
2. train the sample config from scratch (train.py), unless a finished
   checkpoint is present;
3. predict the val split and write BDD100K bitmasks + score.json
   (test.py --format-only);
4. score them with the official evaluator (python -m bdd100k.eval.run) and
   print its table;
5. draw the predictions on a few images (vis.py).

Everything lands under --data (the sample), --work-dir (training) and --out
(predictions, scores, pictures). Run it again and it reuses what is there;
--retrain starts the training over.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/sample/mask_rcnn_r18_fpn_sample.py'
SEED = 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default='data/bdd100k_sample',
                        help='sample dataset folder')
    parser.add_argument('--work-dir',
                        default='work_dirs/mask_rcnn_r18_fpn_sample',
                        help='training folder (logs, checkpoints)')
    parser.add_argument('--out', default='demo_output',
                        help='folder for predictions, scores and pictures')
    parser.add_argument('--num-vis', type=int, default=4,
                        help='images to draw the predictions on')
    parser.add_argument('--retrain', action='store_true',
                        help='train again even if a checkpoint exists')
    return parser.parse_args(argv)


def step(title):
    print(f'\n==> {title}', flush=True)


def run(cmd, what):
    """Run a command in the repository root, streaming its output; stop
    the demo with a one-line message if it fails."""
    print('$ ' + ' '.join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        sys.exit(f'demo: {what} failed (exit code {rc}); see the output '
                 'above')


def main(argv=None):
    args = parse_args(argv)
    os.chdir(ROOT)
    py = sys.executable
    t_start = time.time()
    times = {}

    from mmengine.config import Config

    from bdd100k_ins_seg.sample_data import is_complete
    cfg = Config.fromfile(CONFIG)
    max_iters = cfg.train_cfg.max_iters
    data_root = args.data.rstrip('/') + '/'

    step(f'1/5 sample dataset in {args.data}')
    t = time.time()
    if is_complete(args.data, seed=SEED):
        print('present, reused')
    else:
        if osp.isdir(args.data) and os.listdir(args.data):
            sys.exit(f'demo: {args.data} holds something else than the '
                     'sample (or an unfinished one); move it away or pass '
                     '--data')
        run([py, 'tools/make_sample_data.py', '--out', args.data,
             '--seed', str(SEED)], 'generating the sample')
    times['data'] = time.time() - t

    step(f'2/5 training {CONFIG} ({max_iters} iterations)')
    t = time.time()
    ckpt = osp.join(args.work_dir, f'iter_{max_iters}.pth')
    data_options = [f'train_dataloader.dataset.data_root={data_root}',
                    f'val_dataloader.dataset.data_root={data_root}',
                    f'test_dataloader.dataset.data_root={data_root}']
    if osp.isfile(ckpt) and not args.retrain:
        print(f'finished checkpoint {ckpt} present, reused '
              '(--retrain to train again)')
    else:
        # test.py below scores the model: no validation pass during
        # training, it would do the same work twice.
        run([py, 'train.py', CONFIG, '--work-dir', args.work_dir,
             '--cfg-options', 'val_cfg=None', 'val_dataloader=None',
             'val_evaluator=None', *data_options], 'training')
        if not osp.isfile(ckpt):
            sys.exit(f'demo: training ended without {ckpt}')
    times['train'] = time.time() - t

    step('3/5 predicting the val split (BDD100K bitmasks + score.json)')
    t = time.time()
    pred_dir = osp.join(args.out, 'predictions')
    run([py, 'test.py', CONFIG, ckpt, '--format-only', '--format-dir',
         pred_dir, '--cfg-options', *data_options], 'inference')
    times['test'] = time.time() - t

    step('4/5 official BDD100K evaluation (python -m bdd100k.eval.run)')
    t = time.time()
    gt_dir = osp.join(args.data, 'labels', 'ins_seg', 'bitmasks', 'val')
    scores_file = osp.join(args.out, 'eval_val.json')
    run([py, '-m', 'bdd100k.eval.run', '-t', 'ins_seg', '-g', gt_dir, '-r',
         osp.join(pred_dir, 'bitmasks'), '--score-file',
         osp.join(pred_dir, 'score.json'), '--out-file', scores_file,
         '--nproc', '2'], 'evaluation')
    times['eval'] = time.time() - t

    step(f'5/5 drawing the predictions on {args.num_vis} val images')
    t = time.time()
    vis_dir = osp.join(args.out, 'vis')
    run([py, 'vis.py', '-i', osp.join(args.data, 'images', '10k', 'val'),
         '-c', osp.join(pred_dir, 'bitmasks'), '-o', vis_dir, '-n',
         str(args.num_vis), '--score-file',
         osp.join(pred_dir, 'score.json')], 'drawing')
    times['vis'] = time.time() - t

    mask_ap = _overall_ap(scores_file)
    total = time.time() - t_start
    print('\n==> done in {:.0f} s ({})'.format(
        total, ', '.join(f'{k} {v:.0f} s' for k, v in times.items())))
    if mask_ap is not None:
        print(f'val mask AP (official BDD100K evaluator): {mask_ap:.1f}')
    print(f'sample data:   {args.data}/ (images/10k, labels/ins_seg, jsons)')
    print(f'training:      {args.work_dir}/ (checkpoint {ckpt}, logs)')
    print(f'predictions:   {pred_dir}/bitmasks/*.png, {pred_dir}/score.json')
    print(f'scores:        {scores_file}')
    print(f'pictures:      {vis_dir}/')


def _overall_ap(path):
    """The overall mask AP in the evaluator's --out-file, or None."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    for key in ('AP', 'ap'):
        value = results.get(key)
        if isinstance(value, dict):
            value = value.get('OVERALL')
        if isinstance(value, (int, float)):
            return float(value)
    return None


if __name__ == '__main__':
    main()
