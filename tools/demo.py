"""The whole pipeline on the embedded sample (what `make demo` runs).

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
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/sample/mask_rcnn_r18_fpn_sample.py'
# A working pipeline scores well above this on the sample.
MIN_MASK_AP = 30.0
SEED = 0


def fail(what, why):
    """Stop with the entry points' one error format (exit status 1)."""
    # bdd100k_ins_seg.cli.fail says the same; this one needs no import of
    # the package (which loads the whole stack) to report a bad argument.
    sys.exit(f'{osp.basename(__file__)}: error: {what}: {why}')


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
    parser.add_argument('--vis-score-thr', type=float, default=0.3,
                        help='draw predictions scoring at least this '
                        '(the evaluation uses all of them)')
    parser.add_argument('--retrain', action='store_true',
                        help='train again even if a checkpoint exists')
    return parser.parse_args(argv)


def step(title):
    print(f'\n==> {title}', flush=True)


def run(cmd, what, env=None):
    """Run a command in the repository root, streaming its output; stop
    the demo with a one-line message if it fails."""
    print('$ ' + ' '.join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc != 0:
        fail(what, f'failed (exit code {rc}); see the output above')


def run_here(script, argv, what):
    """Run the command-line script ``script``'s ``main(argv)`` in this
    process, which has the stack loaded already (a new process would spend
    seconds importing it again); print the same command line as
    :func:`run`. Stop the demo with a one-line message if it fails."""
    print('$ ' + ' '.join([sys.executable, script] + argv), flush=True)
    name = osp.splitext(osp.basename(script))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT,
                                                                 script))
    module = importlib.util.module_from_spec(spec)
    # its worker processes find its functions by the module's name
    sys.modules[name] = module
    spec.loader.exec_module(module)
    try:
        module.main(argv)
    except SystemExit as e:
        if e.code not in (None, 0):
            if isinstance(e.code, str):  # the script's one-line error
                print(e.code, file=sys.stderr)
            fail(what, 'failed; see the output above')


def main(argv=None):
    args = parse_args(argv)
    os.chdir(ROOT)
    py = sys.executable
    t_start = time.time()
    times = {}

    from mmengine.config import Config

    from bdd100k_ins_seg.formats.sample_data import INFO_FILE, is_complete
    cfg = Config.fromfile(CONFIG)
    max_iters = cfg.train_cfg.max_iters
    data_root = args.data.rstrip('/') + '/'

    step(f'1/5 sample dataset in {args.data}')
    t = time.time()
    fresh_data = False
    if is_complete(args.data, seed=SEED):
        print('present, reused')
    else:
        if osp.isfile(osp.join(args.data, INFO_FILE)):
            # A sample from another version of the generator: ours to redo.
            print('an older sample, generating it again')
            shutil.rmtree(args.data)
        elif osp.isdir(args.data) and os.listdir(args.data):
            fail(args.data, 'holds something else than the sample; move '
                 'it away or pass --data')
        run_here('tools/make_sample_data.py',
                 ['--out', args.data, '--seed', str(SEED)],
                 'generating the sample')
        fresh_data = True
    times['data'] = time.time() - t

    env = _thread_env()
    step(f'2/5 training {CONFIG} ({max_iters} iterations)')
    t = time.time()
    ckpt = osp.join(args.work_dir, f'iter_{max_iters}.pth')
    train_data = f'train_dataloader.dataset.data_root={data_root}'
    test_data = f'test_dataloader.dataset.data_root={data_root}'
    for other in _other_checkpoints(args.work_dir, ckpt):
        print(f'ignoring {other} (not the {max_iters}-iteration schedule '
              f'of {CONFIG})')
    # A checkpoint trained on other data, or for another version of the
    # config's model, is not reused.
    why = None
    if osp.isfile(ckpt):
        why = ('--retrain' if args.retrain else
               'the sample was made anew' if fresh_data else
               _unfit(cfg, ckpt))
    if osp.isfile(ckpt) and why is None:
        print(f'reusing the finished checkpoint {ckpt} (--retrain to train '
              'again)')
    else:
        if osp.isfile(ckpt):
            print(f'ignoring the existing checkpoint {ckpt} ({why}): '
                  'training again')
        # test.py below scores the model: no validation pass during
        # training, it would do the same work twice.
        import torch

        from bdd100k_ins_seg.engine.threads import available_cores
        command, train_env = _train_command(
            py, args.work_dir, ['val_cfg=None', 'val_dataloader=None',
                                'val_evaluator=None', train_data],
            cfg.train_dataloader.batch_size, available_cores(),
            torch.cuda.is_available(), env)
        run(command, 'training', train_env)
        if not osp.isfile(ckpt):
            fail('training', f'ended without {ckpt}')
    times['train'] = time.time() - t

    step('3/5 predicting the val split (BDD100K bitmasks + score.json)')
    t = time.time()
    pred_dir = osp.join(args.out, 'predictions')
    run([py, 'test.py', CONFIG, ckpt, '--format-only', '--format-dir',
         pred_dir, '--cfg-options', test_data], 'inference', env)
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

    step(f'5/5 drawing the predictions with score >= {args.vis_score_thr} '
         f'on {args.num_vis} val images')
    t = time.time()
    vis_dir = osp.join(args.out, 'vis')
    shown_dir = osp.join(args.out, 'shown_predictions')
    _keep_confident(pred_dir, shown_dir, args.num_vis, args.vis_score_thr)
    run_here('vis.py', ['-i', osp.join(args.data, 'images', '10k', 'val'),
                        '-c', osp.join(shown_dir, 'bitmasks'), '-o',
                        vis_dir, '-n', str(args.num_vis), '--score-file',
                        osp.join(shown_dir, 'score.json')], 'drawing')
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
    print(f'pictures:      {vis_dir}/ (predictions scoring >= '
          f'{args.vis_score_thr})')
    # The sample is easy enough that a working pipeline scores well above
    # this; a broken piece (training, inference, export, scoring) shows as
    # an AP near 0, and the demo must not look like a success then.
    if mask_ap is None or mask_ap < MIN_MASK_AP:
        shown = 'missing' if mask_ap is None else f'{mask_ap:.1f}'
        fail(f'val mask AP {shown}', f'below {MIN_MASK_AP}: something in '
             'the pipeline is broken')


def _thread_env():
    """The environment of the training and inference commands.

    They size their threads to the cores (bdd100k_ins_seg.engine.threads); on a
    machine already busy with other work, threads that wait for each other
    lose much more than they gain (a training step of 5-14 s instead of
    ~1.5 s), so there they get one thread. Busy is what the machine's
    processes use over one second now (the load average, where that cannot
    be read, also counts the demo's own setup that has just ended).
    OMP_NUM_THREADS, if set, wins.
    """
    from bdd100k_ins_seg.engine.threads import available_cores, busy_cores
    env = dict(os.environ)
    cores = available_cores()
    if 'OMP_NUM_THREADS' in env:
        print(f'threads: OMP_NUM_THREADS={env["OMP_NUM_THREADS"]} (from '
              'the environment)')
        return env
    busy = busy_cores()
    if busy is not None:
        seen = f'{busy:.1f} of {cores} cores in use'
    else:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
        seen = f'load average {busy:.1f} on {cores} cores'
    if cores > 1 and busy >= cores / 2:
        env['OMP_NUM_THREADS'] = '1'
        print(f'threads: the machine is busy ({seen}): 1 thread per '
              'process (set OMP_NUM_THREADS to choose)')
    else:
        print(f'threads: {cores} (the cores; {seen}; set OMP_NUM_THREADS '
              'to choose)')
    return env


def _train_command(py, work_dir, options, batch_size, cores, cuda, env):
    """train.py's command line for the demo, and its environment.

    On a CPU machine with 2 or more cores: two data-parallel processes
    (``torch.distributed.run --standalone``, gloo), each with half of the
    config's batch (the same images per step, the same learning rate) and
    half the threads (bdd100k_ins_seg.engine.threads). A step of the sample model
    took 0.43-0.45 s so instead of 0.59 s in one 2-thread process (2-core
    machine, idle, an earlier recipe): Python overhead and the
    single-threaded ops run side by side. One process on a GPU, on one
    core, or with an odd batch.
    """
    if cuda or cores < 2 or batch_size % 2:
        return [py, 'train.py', CONFIG, '--work-dir', work_dir,
                '--cfg-options', *options], env
    env = dict(env)
    # Said here, torchrun and mmengine do not guess (and warn about it).
    env.setdefault('OMP_NUM_THREADS', str(cores // 2))
    env.setdefault('MKL_NUM_THREADS', env['OMP_NUM_THREADS'])
    print(f'training in 2 data-parallel processes of {batch_size // 2} '
          f'images each, {env["OMP_NUM_THREADS"]} thread(s) each')
    return [py, '-m', 'torch.distributed.run', '--standalone',
            '--nproc_per_node', '2', 'train.py', CONFIG, '--launcher',
            'pytorch', '--work-dir', work_dir, '--cfg-options', *options,
            f'train_dataloader.batch_size={batch_size // 2}'], env


def _unfit(cfg, ckpt):
    """Why ``ckpt`` cannot be the model of ``cfg`` (unreadable, or trained
    for another version of the config), or None if it fits."""
    import bdd100k_ins_seg.plugin  # noqa: F401 - registers the package's modules
    from bdd100k_ins_seg.plugin.checkpoint import (
        CheckpointError,
        CheckpointMismatchError,
        check_checkpoint)
    try:
        check_checkpoint(cfg, ckpt, keep_loaded=False)
    except CheckpointMismatchError as e:
        return f'it {e.mismatch}'
    except CheckpointError as e:
        return f'unreadable: {e}'
    return None


def _other_checkpoints(work_dir, ckpt):
    """Checkpoints of other schedules in ``work_dir`` (never reused)."""
    if not osp.isdir(work_dir):
        return []
    return sorted(osp.join(work_dir, n) for n in os.listdir(work_dir)
                  if n.startswith('iter_') and n.endswith('.pth')
                  and osp.join(work_dir, n) != ckpt)


def _keep_confident(pred_dir, out_dir, num, score_thr):
    """Copy the first ``num`` prediction bitmasks (sorted by name) and their
    score.json frames to ``out_dir``, without predictions scoring below
    ``score_thr`` (the evaluator wants every one; a picture does not)."""
    import numpy as np
    from PIL import Image

    with open(osp.join(pred_dir, 'score.json')) as f:
        frames = {fr['name'].rsplit('.', 1)[0]: fr for fr in json.load(f)}
    names = sorted(n for n in os.listdir(osp.join(pred_dir, 'bitmasks'))
                   if n.endswith('.png'))[:num]
    os.makedirs(osp.join(out_dir, 'bitmasks'), exist_ok=True)
    kept_frames = []
    for name in names:
        frame = frames[name[:-4]]
        kept = [lb for lb in frame['labels'] if lb['score'] >= score_thr]
        with Image.open(osp.join(pred_dir, 'bitmasks', name)) as im:
            bitmask = np.array(im)
        index = (bitmask[..., 2].astype(np.int32) << 8) | bitmask[..., 3]
        bitmask[~np.isin(index, [lb['index'] for lb in kept])] = 0
        Image.fromarray(bitmask).save(osp.join(out_dir, 'bitmasks', name))
        kept_frames.append(dict(frame, labels=kept))
    with open(osp.join(out_dir, 'score.json'), 'w') as f:
        json.dump(kept_frames, f)


def _overall_ap(path):
    """The overall mask AP in the evaluator's --out-file, or None.

    The file holds ``{"AP": [{class: AP, ...}, {"OVERALL": AP}], ...}``.
    """
    try:
        with open(path) as f:
            results = json.load(f)
        for part in results['AP']:
            if 'OVERALL' in part:
                return float(part['OVERALL'])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


if __name__ == '__main__':
    main()
