"""Test a BDD100K instance-segmentation model; write and/or score bitmasks.

    python test.py CONFIG [CHECKPOINT] --format-only --format-dir OUT
    python test.py CONFIG [CHECKPOINT] --eval [--out-file results.json]
    python test.py CONFIG [CHECKPOINT] --img-dir FOLDER --format-dir OUT

Without CHECKPOINT the config's published weights are used (downloaded and
verified by bdd100k_ins_seg.zoo). OUT gets bitmasks/<image stem>.png and
score.json, the input of ``python -m bdd100k.eval.run -t ins_seg``
(``--out-format rle|both``: rles.json, Scalabel frames with RLE masks;
``--zip``: OUT.zip for the evaluation server). Multi-GPU:
tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS]; on a machine without CUDA
the processes run on CPU and talk over gloo.
"""
import argparse
import contextlib
import errno
import io
import json
import os
import os.path as osp


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test a BDD100K instance-segmentation model')
    parser.add_argument('config', help='config file, or a model name of '
                        'the zoo (e.g. mask_rcnn_r50_fpn_3x, or '
                        'mask_rcnn_r18_fpn_sample: the demo\'s)')
    parser.add_argument(
        'checkpoint', nargs='?',
        help='checkpoint file (default: the published weights of CONFIG; '
        'for the sample model, the checkpoint `make demo` trains)')
    parser.add_argument('--format-only', action='store_true',
                        help='only write the prediction bitmasks (no GT '
                        'needed, e.g. the test split)')
    parser.add_argument('--format-dir',
                        help='folder for bitmasks/*.png and score.json')
    parser.add_argument('--eval', action='store_true',
                        help='score against the GT bitmasks (the config\'s '
                        'test_evaluator.gt_dir) and print the official table')
    parser.add_argument('--gt-dir', help='GT bitmask folder for --eval')
    parser.add_argument('--gt-file',
                        help='GT as an RLE json for --eval (Scalabel frames, '
                        'e.g. labels/ins_seg/rles/ins_seg_val.json) instead '
                        'of the GT bitmask folder')
    parser.add_argument('--out-format', choices=['bitmask', 'rle', 'both'],
                        default='bitmask',
                        help='what --format-dir keeps: bitmasks/ + '
                        'score.json (default), rles.json (Scalabel frames '
                        'with RLE masks, made from the bitmasks), or both')
    parser.add_argument('--zip', action='store_true',
                        help='also pack --format-dir as the evaluation '
                        'server takes it: <format-dir>.zip with score.json '
                        'and bitmasks/ at its top')
    parser.add_argument('--out-file',
                        help='save the full official results (json)')
    parser.add_argument('--compare-published', action='store_true',
                        help='after --eval, compare the scores class by '
                        'class with the published ones of this zoo model')
    parser.add_argument('--img-dir',
                        help='run on every image of this folder (no labels; '
                        'implies --format-only)')
    parser.add_argument('--show-dir',
                        help='save mmdet\'s drawings of the predictions in '
                        'this folder')
    parser.add_argument('--work-dir',
                        help='keep the logs and the config copy in WORK_DIR/'
                        '<timestamp>/ (default: none kept, the log is on the '
                        'console; never touches a training\'s files)')
    parser.add_argument('--cfg-options', nargs='+', action='extend',
                        metavar='KEY=VALUE',
                        help='override config settings, e.g. '
                        'test_dataloader.batch_size=2')
    parser.add_argument('--non-strict', action='store_true',
                        help='load a checkpoint whose keys/shapes do not all '
                        'match the model (default: refuse it)')
    parser.add_argument('--resume', action='store_true',
                        help='continue an interrupted run into --format-dir:'
                        ' images already written there are not inferred '
                        'again')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='load a checkpoint that holds types outside '
                        'the safe allowlist (full pickle: trusted files only)')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BatchNorm into the convolutions before '
                        'inference, and on CPU use channels_last memory and '
                        'Winograd 3x3 convolutions (faster; scores equal '
                        'within ~1e-4)')
    parser.add_argument('--emulate-tf32', choices=['nearest', 'truncate'],
                        help='CPU: round the inputs and weights of every '
                        'convolution to TF32, as a GPU of compute '
                        'capability 8.0+ does by default, to see what it '
                        'does to the scores (docs/determinism.md)')
    parser.add_argument('--only-predicted', action='store_true',
                        help='--eval: score the GT bitmasks of the images '
                        'this run predicts only (default: every GT bitmask '
                        'of the folder needs a prediction, as in the '
                        'official evaluator)')
    parser.add_argument('--verbose', action='store_true',
                        help='also print the environment, the config and '
                        'the hooks on the console (always in the log file '
                        'of --work-dir)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2) or
    # --local_rank (older); torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
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
    if args.img_dir:
        if args.eval:
            parser.error('--eval needs labels; --img-dir images have none')
        args.format_only = True
    if args.format_only and args.eval:
        parser.error('--format-only writes predictions without scoring them;'
                     ' use --eval with --format-dir to do both')
    if args.format_only and args.out_file:
        parser.error('--out-file saves scores; --format-only computes none')
    if args.format_only and not args.format_dir:
        parser.error('--format-only/--img-dir need --format-dir')
    if args.resume and not args.format_dir:
        parser.error('--resume continues a --format-dir folder')
    if (args.zip or args.out_format != 'bitmask') and not args.format_dir:
        parser.error('--zip/--out-format need --format-dir')
    if args.zip and args.out_format == 'rle':
        parser.error('--zip packs the bitmasks (the evaluation server takes '
                     'bitmasks only): use --out-format bitmask or both')
    if args.gt_dir and args.gt_file:
        parser.error('--gt-dir and --gt-file: give one GT')
    if not (args.format_only or args.format_dir or args.eval):
        args.eval = True  # plain `test.py CONFIG CKPT` scores, as in mmdet
    if args.compare_published and not args.eval:
        parser.error('--compare-published compares scores: use it with '
                     '--eval')
    if args.only_predicted and not args.eval:
        parser.error('--only-predicted chooses the GT to score: use it with '
                     '--eval')
    if args.emulate_tf32 and args.fuse_conv_bn:
        parser.error('--emulate-tf32 rounds the plain forward\'s '
                     'convolutions: leave out --fuse-conv-bn')
    return args


def _rank():
    """This process's rank, before the runner knows it."""
    return int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')))


def _device(torch):
    """``cpu, 1 process, 4 threads`` / ``cuda (NVIDIA H100), 8 processes``."""
    processes = int(os.environ.get('WORLD_SIZE',
                                   os.environ.get('SLURM_NTASKS', '1')))
    threads = torch.get_num_threads()
    where = (f'cuda ({torch.cuda.get_device_name()})'
             if torch.cuda.is_available() else 'cpu')
    return (f'{where}, {processes} process{"es" * (processes != 1)} of '
            f'{threads} thread{"s" * (threads != 1)}')


def _tf32_emulation(rounding):
    """``--emulate-tf32``: TF32's rounding of every convolution, on CPU."""
    if rounding is None:
        return contextlib.nullcontext()
    from bdd100k_ins_seg.engine.tf32 import emulate_tf32
    return emulate_tf32(rounding)


@contextlib.contextmanager
def _quiet_unless(verbose):
    """Keep what mmengine prints (not logs) off the console."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def main():
    args = parse_args()
    from bdd100k_ins_seg.cli import fail
    from bdd100k_ins_seg.zoo.catalogue import ZooError, resolve_config
    try:  # a file, or a model name of the zoo
        args.config = resolve_config(args.config)
    except ZooError as e:
        fail(f'config {args.config}', e)
    if args.img_dir and not osp.isdir(args.img_dir):
        fail(f'image folder {args.img_dir}', 'not found')
    if (args.checkpoint and '://' not in args.checkpoint
            and not osp.isfile(args.checkpoint)):
        fail(f'checkpoint {args.checkpoint}', 'not found')

    if args.compare_published:  # published scores fetched before inference
        from bdd100k_ins_seg.zoo import compare
        try:
            zoo_name = compare.published_for_config(args.config)
        except Exception as e:  # not a zoo model, download failure
            fail('--compare-published', e)

    import torch
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.config_lookup import install_base_config_lookup
    from bdd100k_ins_seg.engine.launch import init_cpu_distributed
    from bdd100k_ins_seg.engine.runners import TestRunner, test_work_dir

    try:
        # Before parsing: mmdet:: bases resolve without reading mmdet's
        # ~100 metafiles (seconds per config otherwise).
        install_base_config_lookup()
        cfg = Config.fromfile(args.config)
    except Exception as e:  # syntax errors, missing bases, bad imports
        fail(f'config {args.config}', f'cannot be loaded: {type(e).__name__}'
             f': {e}')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    from bdd100k_ins_seg.engine import tf32
    try:
        tf32.setting(cfg.get('env_cfg'))
    except ValueError as e:
        fail(f'config {args.config}', e)
    if args.emulate_tf32 and torch.cuda.is_available():
        fail('--emulate-tf32', 'emulates TF32 on CPU; on this CUDA machine '
             'it runs for real: --cfg-options env_cfg.tf32=True (or False)')

    checkpoint = args.checkpoint
    if checkpoint is None:
        from bdd100k_ins_seg.zoo import checkpoint_for_config
        from bdd100k_ins_seg.zoo.catalogue import local_checkpoint
        try:  # the sample model: the demo's checkpoint
            checkpoint = local_checkpoint(args.config)
        except ZooError as e:
            fail(f'config {args.config}', e)
    if checkpoint is None:
        try:
            checkpoint = checkpoint_for_config(args.config)
        except Exception as e:  # unknown config, download/md5 failure
            fail(f'config {args.config}', f'no published weights: {e}')
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        fail(f'checkpoint {checkpoint}', 'not found')
    from bdd100k_ins_seg.plugin.checkpoint import check_checkpoint_or_fail
    # before the runner: unreadable or foreign weights stop here
    check_checkpoint_or_fail(cfg, checkpoint, strict=not args.non_strict)

    cfg.work_dir = test_work_dir(args.work_dir)
    # Only the test loop runs: leave out the training/validation parts
    # (mmengine wants each trio complete or absent).
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler', 'val_dataloader', 'val_cfg',
                'val_evaluator'):
        cfg[key] = None
    if cfg.get('test_cfg') is None:
        cfg.test_cfg = dict(type='TestLoop')
    # Weights are loaded below, where a bad file gives a one-line error.
    cfg.load_from = None
    cfg.resume = False

    if args.img_dir:
        # An unlabeled folder: images only, the base's unlabeled pipeline.
        dataloader = cfg.test_dataloader
        dataset = dict(
            type='BDD100KImageFolderDataset',
            data_root='',
            data_prefix=dict(img=args.img_dir),
            pipeline=cfg.get('unlabeled_test_pipeline',
                             dataloader.dataset.pipeline),
            test_mode=True)
        dataloader.dataset = dataset

    evaluator = dict(type='BDD100KInsSegMetric')
    old = cfg.get('test_evaluator', {})
    if isinstance(old, dict) and old.get('type') == 'BDD100KInsSegMetric':
        evaluator.update(old)
    evaluator['format_only'] = args.format_only
    if args.format_dir:
        evaluator['outfile_prefix'] = args.format_dir
    if args.gt_dir:
        evaluator['gt_dir'] = args.gt_dir
    if args.gt_file:
        if not osp.isfile(args.gt_file):
            fail(f'GT file {args.gt_file}', 'not found')
        evaluator['gt_file'] = args.gt_file
        evaluator['gt_dir'] = None
    evaluator['out_format'] = args.out_format
    if args.eval and not args.gt_file and not evaluator.get('gt_dir'):
        fail('--eval', 'needs GT bitmasks: set --gt-dir')
    if args.eval and not args.gt_file and not osp.isdir(evaluator['gt_dir']):
        fail(f'GT bitmask folder {evaluator["gt_dir"]}', 'not found')
    if args.format_only:
        evaluator['gt_dir'] = None
    evaluator['resume'] = args.resume
    evaluator['only_predicted'] = args.only_predicted
    cfg.test_evaluator = evaluator

    from bdd100k_ins_seg.cli import InputError
    from bdd100k_ins_seg.inference import preflight as inference
    images = []
    try:  # before the model is built: nothing is written if one fails
        cfg.test_evaluator.manifest = inference.preflight(
            cfg, checkpoint, evaluator['gt_dir'], args.format_dir,
            args.resume, args.fuse_conv_bn,
            only_predicted=args.only_predicted, say=images.append)
    except InputError as e:  # a check failed; another run in --format-dir
        fail(e.what, e.why)
    if cfg.test_evaluator.manifest is not None:
        # Where the inputs are, for tools/analyze.py --from-run (not part
        # of the run's identity).
        cfg.test_evaluator.manifest.update(inference.run_inputs(
            cfg, args.gt_file or evaluator['gt_dir']))

    if args.show_dir:
        hooks = cfg.default_hooks
        hooks.visualization = dict(
            type='DetVisualizationHook', draw=True,
            test_out_dir=osp.abspath(args.show_dir))

    cfg.launcher = args.launcher
    if not torch.cuda.is_available():
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
        cfg.env_cfg.dist_cfg.backend = 'gloo'
        if args.launcher != 'none':
            init_cpu_distributed(args.launcher)
            cfg.launcher = 'none'  # group is up; no DDP wrapper on CPU

    from bdd100k_ins_seg.engine.threads import configure_threads
    configure_threads(cfg)
    if _rank() == 0:  # the header: the environment goes to the log file
        print(f'config: {args.config}\ncheckpoint: {checkpoint}\n'
              f'images: {"".join(images)}\ndevice: {_device(torch)}',
              flush=True)
    TestRunner.verbose = args.verbose
    runner = TestRunner.from_cfg(cfg)
    if args.work_dir and runner.rank == 0:
        print(f'log (environment, config): {runner.logger.log_file}',
              flush=True)
    try:
        with _quiet_unless(args.verbose):  # "Loads checkpoint by ..."
            runner.load_checkpoint(checkpoint, map_location='cpu')
    except Exception as e:  # truncated, not a checkpoint, unsafe pickle
        fail('cannot load checkpoint', e)
    if args.fuse_conv_bn:
        from bdd100k_ins_seg.inference.optimize import optimize_runner_model
        optimize_runner_model(runner)
    from bdd100k_ins_seg.inference.paste import box_masks_ok, enable_box_masks
    if box_masks_ok(cfg, 'test'):  # not when a hook draws full-size masks
        enable_box_masks(runner.model)
    inference.raise_on_sigterm()
    try:
        with _tf32_emulation(args.emulate_tf32) as emulated:
            metrics = runner.test()
        if emulated is not None:
            print(f'--emulate-tf32 {args.emulate_tf32}: {emulated.calls} '
                  'convolutions read TF32 inputs and weights', flush=True)
    except (inference.Terminated, KeyboardInterrupt):
        runner.test_evaluator.metrics[0].flush()
        fail('interrupted', 'the images written so far are kept: continue '
             'with --resume' if args.format_dir else 'stopped by a signal')
    except (FileNotFoundError, ValueError, AssertionError) as e:  # data, GT
        message = inference.one_line(e)
        if message is None:
            raise
        runner.test_evaluator.metrics[0].flush()  # keep what is finished
        fail('cannot run the test', message)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        try:  # finish what can be finished; the disk is still full
            runner.test_evaluator.metrics[0].flush()
        except OSError:
            pass
        where = args.format_dir or osp.dirname(e.filename or '') or 'output'
        fail(f'output folder {where}', f'the disk is full ({e.strerror}): '
             'free space, then run the same command with --resume; the '
             'images written so far are kept' if args.format_dir else
             f'the disk is full ({e.strerror}): free space and run again')

    official = runner.test_evaluator.metrics[0].last_result
    if args.out_file and runner.rank == 0 and official is not None:
        # The same json as `python -m bdd100k.eval.run ... --out-file`.
        os.makedirs(osp.dirname(osp.abspath(args.out_file)), exist_ok=True)
        with open(args.out_file, 'w', encoding='utf-8') as f:
            json.dump(official, f, indent=2)
    if args.compare_published and runner.rank == 0 and official is not None:
        print(compare.run(zoo_name, ours=official,
                          source=args.out_file or 'this run').text)
    if args.zip and runner.rank == 0:
        from bdd100k_ins_seg.formats.submission import write_submission
        try:
            print(f'submission: {write_submission(args.format_dir)}')
        except (OSError, ValueError) as e:
            fail('--zip', e)
    return metrics


if __name__ == '__main__':
    main()
