"""Train a model of the zoo (or the sample config) with mmengine's Runner.

    python train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                           [--auto-scale-lr] [--cfg-options KEY=VALUE ...]

One process per GPU (or CPU process):
    torchrun --nproc_per_node 8 train.py CONFIG --launcher pytorch
    tools/dist_train.sh CONFIG 8 [args]          (multi-node: see README)
    tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR [args]

The zoo configs assume 8 processes x 2 images (lr 0.02); with another total
batch size pass --auto-scale-lr. Without CUDA, processes talk over gloo.
"""
import argparse
import importlib.util
import os
import os.path as osp
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a BDD100K instance-segmentation model')
    parser.add_argument('config', help='config file, or a model name of '
                        'the zoo (e.g. mask_rcnn_r50_fpn_3x, or '
                        'mask_rcnn_r18_fpn_sample: the demo\'s)')
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints '
        '(default: work_dirs/<config name>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work '
        'folder if no path is given')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (CUDA only)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr linearly with the total batch size '
        '(relative to the config\'s auto_scale_lr.base_batch_size)')
    parser.add_argument(
        '--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
        help='override config settings, e.g. train_cfg.max_epochs=1 '
        'model.backbone.depth=18 (lists: key="[a,b]", no spaces)')
    parser.add_argument(
        '--non-strict', action='store_true',
        help='let load_from load a checkpoint whose keys/shapes do not all '
        'match the model (default: refuse it)')
    parser.add_argument(
        '--unsafe-load', action='store_true',
        help='load checkpoints (--resume, load_from) that hold types outside '
        'the safe allowlist (full pickle: trusted files only)')
    parser.add_argument('--verbose', action='store_true',
                        help='also print the environment, the config and '
                        'the hooks on the console (always in the log file '
                        'of the work folder)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2) or
    # --local_rank (older); torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.cfg_options:  # mmengine's reading, imported after --help
        from bdd100k_ins_seg.cli import config_options
        try:
            args.cfg_options = config_options(args.cfg_options)
        except ValueError as e:
            parser.error(f'--cfg-options: {e}')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.unsafe_load:
        from bdd100k_ins_seg.plugin.checkpoint import UNSAFE_ENV
        os.environ[UNSAFE_ENV] = '1'

    return args


def build_config(args):
    """The config of ``args`` with the command-line overrides applied."""
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.config_lookup import install_base_config_lookup

    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file not found: {args.config}')
    # Before parsing: mmdet:: bases resolve without reading mmdet's
    # ~100 metafiles (seconds per config otherwise).
    install_base_config_lookup()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    import torch
    cuda = torch.cuda.is_available()
    if args.amp:
        if not cuda:
            raise ValueError('--amp needs a CUDA device (none found)')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr')
        if not scale or 'base_batch_size' not in scale:
            raise ValueError(f'{args.config} has no auto_scale_lr.'
                             'base_batch_size, cannot use --auto-scale-lr')
        cfg.auto_scale_lr.enable = True

    from bdd100k_ins_seg.engine import training
    if args.resume is not None:
        # A complete checkpoint, or a one-line error (never a silent start
        # from iteration 0, never a truncated file).
        cfg.resume = True
        cfg.load_from = (training.find_resume_checkpoint(cfg.work_dir)
                         if args.resume == 'auto' else
                         training.check_checkpoint_file(args.resume)
                         or args.resume)
    # Atomic checkpoints, stop on signals / non-finite loss, exact resume.
    training.configure(cfg)

    if not cuda:
        # NCCL needs GPUs; DDP of a CPU model takes no device ids.
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
        cfg.env_cfg.dist_cfg.backend = 'gloo'
        if args.launcher != 'none':
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None,
                broadcast_buffers=False,
                # Gradients live in the all-reduce buckets: no copy in and
                # out of them at every step.
                gradient_as_bucket_view=True,
                find_unused_parameters=cfg.get('find_unused_parameters',
                                               False))

    if (importlib.util.find_spec('tensorboard') is not None
            and cfg.get('visualizer')):
        backends = cfg.visualizer.setdefault('vis_backends', [])
        if not any(b.get('type') == 'TensorboardVisBackend'
                   for b in backends):
            backends.append(dict(type='TensorboardVisBackend'))
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from bdd100k_ins_seg.cli import InputError, fail, reason
    from bdd100k_ins_seg.zoo.catalogue import ZooError, resolve_config
    try:  # a file, or a model name of the zoo
        args.config = resolve_config(args.config)
    except ZooError as e:
        fail(f'config {args.config}', e)
    from bdd100k_ins_seg.engine import training
    try:
        cfg = build_config(args)
    except training.ResumeError as e:
        fail(e.path, e.why)
    except Exception as e:  # noqa: BLE001 - any config error: one line
        fail(f'config {args.config}', e if isinstance(
            e, (FileNotFoundError, ValueError)) else
            f'{type(e).__name__}: {reason(e)}')

    from bdd100k_ins_seg.engine.inputs import check_training_inputs
    try:  # before the runner and its environment report
        check_training_inputs(cfg)
    except InputError as e:
        fail(e.what, e.why)

    if cfg.get('load_from') and not cfg.get('resume'):
        from bdd100k_ins_seg.plugin.checkpoint import check_checkpoint_or_fail
        # before the runner: unreadable or foreign weights stop here
        check_checkpoint_or_fail(cfg, cfg.load_from,
                                 strict=not args.non_strict)

    with training.stop_on_signals():
        try:
            _run(args, cfg)
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint
            print('train.py: interrupted; --resume continues from the last '
                  'complete checkpoint', file=sys.stderr)
            sys.exit(130)


def _run(args, cfg):
    import torch
    from mmengine.registry import RUNNERS

    from bdd100k_ins_seg.engine import training
    from bdd100k_ins_seg.cli import InputError, fail, reason
    from bdd100k_ins_seg.engine.launch import init_cpu_distributed
    from bdd100k_ins_seg.engine.runners import TrainRunner
    from bdd100k_ins_seg.engine.threads import configure_threads

    configure_threads(cfg)
    if int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))) == 0:
        # The header: the environment and the config go to the log file.
        processes = int(os.environ.get('WORLD_SIZE', '1'))
        threads = torch.get_num_threads()
        device = (f'cuda ({torch.cuda.get_device_name()})'
                  if torch.cuda.is_available() else 'cpu')
        start = (f'\nresume: {cfg.load_from}' if cfg.get('resume') else
                 f'\nweights: {cfg.load_from}' if cfg.get('load_from')
                 else '')
        print(f'config: {args.config}\nwork folder: {cfg.work_dir}{start}\n'
              f'device: {device}, {processes} process'
              f'{"es" * (processes != 1)} of {threads} thread'
              f'{"s" * (threads != 1)}', flush=True)
    if args.launcher != 'none' and not torch.cuda.is_available():
        init_cpu_distributed(args.launcher, cfg.env_cfg.dist_cfg.backend)
    TrainRunner.verbose = args.verbose
    try:
        if 'runner_type' in cfg:
            runner = RUNNERS.build(cfg)
        else:
            runner = TrainRunner.from_cfg(cfg)
    except (KeyError, TypeError, ValueError, ImportError) as e:
        fail(f'config {args.config}', f'cannot build the runner: '
             f'{type(e).__name__}: {reason(e)}')
    if runner.rank == 0:
        print(f'log (environment, config): {runner.logger.log_file}',
              flush=True)
    from bdd100k_ins_seg.inference.paste import box_masks_ok, enable_box_masks
    if box_masks_ok(cfg, 'val'):  # validation paints masks in their boxes
        enable_box_masks(runner.model)
    try:
        runner.train()
    except training.TrainingStopped as e:  # SIGTERM/SIGINT: checkpoint saved
        print(f'train.py: {e}', file=sys.stderr)
        sys.exit(e.exit_code)
    except training.NonFiniteLossError as e:
        fail(e.what, e.why)
    except training.CheckpointWriteError as e:
        fail(e.filename, f'cannot write it: {e.strerror}; the previous '
             'checkpoint is intact (--resume continues from it)')
    except InputError as e:  # the data, checked before iteration 1
        fail(e.what, f'{e.why} (checked before the first iteration)')
    except FileNotFoundError as e:
        # Usually the data: say which file, without a traceback.
        fail('cannot train', e)


if __name__ == '__main__':
    main()
