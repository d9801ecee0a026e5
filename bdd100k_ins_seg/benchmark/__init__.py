"""Speed of the pieces of a test run, each against a baseline in the same run.

``python tools/benchmark.py CONFIG --device cpu|cuda --json OUT`` runs the
stage modules of this package, prints a table and writes the rows (medians
and ratios) to OUT. Stages (letters as in ``--stages``):

- a: the model forward alone, one 1280x720 image (``model``);
- b, c: post-processing (masks to bitmask, PNG, files) and ``test.py
  --format-only`` end to end (``postprocess``);
- d: our evaluator against ``bdd100k.eval.run``'s code on the same files,
  one process each, identical numbers checked (``evaluator``);
- e: the forward against torchvision's ``maskrcnn_resnet50_fpn``, same image,
  same threads (``model``);
- f: the forward's 3x3 convolution layers, Winograd against the direct
  convolution (``conv``; CPU);
- t: a training step, channels_last weights against NCHW, and the RoIAlign
  forward's size rule against the separable form everywhere
  (``train_step``; CPU);
- g: the deformable convolutions' forward + backward, mmcv's DCN and DCNv2
  modules on this package's ops against torchvision's ``deform_conv2d``
  (``dcn``).

Each stage module has ``run(config, device, repeats, work_dir) -> list`` of
rows ``{'stage', 'what', 'ms_per_image', 'images_per_s', 'baseline',
'baseline_ms_per_image', 'speedup'}`` (speedup = baseline ms / our ms; the
baseline fields are empty strings / NaN where there is none). Sizes come
from :data:`SETTINGS` (``--size``, ``--images``), which the stages read.
"""
import importlib
import json
import math
import os
import os.path as osp
import platform
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Sequence

#: The stage modules, in the order they run.
STAGES = ['model', 'postprocess', 'evaluator', 'conv', 'train_step', 'dcn']
#: Which module measures each stage letter.
STAGE_MODULES = {'a': 'model', 'b': 'postprocess', 'c': 'postprocess',
                 'd': 'evaluator', 'e': 'model', 'f': 'conv',
                 't': 'train_step', 'g': 'dcn'}
ROW_KEYS = ('stage', 'what', 'ms_per_image', 'images_per_s', 'baseline',
            'baseline_ms_per_image', 'speedup')

#: Read by the stage modules: image size (width, height), the number of
#: images of the evaluator's synthetic split, the weights of the config's
#: model in stages a, c, e and t (None: untrained), stage t's batches
#: from the config's training set (0: one synthetic batch) and stage c's
#: test.py runs (None: half the repeats, at least 2); ``stages``: the
#: letters asked for (a module that measures several skips the others).
SETTINGS = dict(size=(1280, 720), images=8, checkpoint=None,
                train_batches=0, test_runs=None, stages=None)


def weights_label() -> str:
    """'weights of NAME' for ``--checkpoint``'s file in a row's label; ''
    for an untrained model."""
    checkpoint = SETTINGS['checkpoint']
    return 'weights of ' + osp.basename(checkpoint) if checkpoint else ''


def load_stage(name: str):
    """The stage module ``bdd100k_ins_seg.benchmark.<name>``; an error
    naming it if it is missing."""
    try:
        return importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError as e:
        if e.name == f'{__name__}.{name}':
            raise RuntimeError(f'benchmark stage module {__name__}.{name} '
                               'is missing') from None
        raise


def interleaved_medians(fns, repeats: int, sync=None) -> list:
    """Median ms of each of ``fns``, called in turn ``repeats`` times (after
    one warm-up call each): a load that comes and goes on the machine
    falls on all of them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for fn, spent in zip(fns, times):
            if sync:
                sync()
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            spent.append((time.perf_counter() - start) * 1000)
    return [statistics.median(spent) for spent in times]


def median_ms(fn, repeats: int, sync=None) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls (after one
    warm-up call)."""
    return interleaved_medians([fn], repeats, sync)[0]


def make_row(stage: str, what: str, ms: float, baseline: str = '',
             baseline_ms: float = float('nan')) -> dict:
    """A result row; ``ms`` and ``baseline_ms`` per image."""
    return dict(stage=stage, what=what, ms_per_image=ms,
                images_per_s=1000.0 / ms if ms > 0 else float('nan'),
                baseline=baseline, baseline_ms_per_image=baseline_ms,
                speedup=baseline_ms / ms if baseline and ms > 0 else
                float('nan'))


def run_stages(config: str, device: str, repeats: int, work_dir: str,
               stages: Optional[Sequence[str]] = None) -> List[dict]:
    """Run the stage modules that measure ``stages`` (letters; all if
    None) and return their rows of those stages; each module's elapsed
    time is printed when it ends."""
    letters = sorted(STAGE_MODULES) if stages is None else list(stages)
    modules = [m for m in STAGES
               if any(STAGE_MODULES[s] == m for s in letters)]
    SETTINGS['stages'] = letters
    rows = []
    for name in modules:
        start = time.perf_counter()
        module = load_stage(name)
        stage_dir = osp.join(work_dir, name)
        os.makedirs(stage_dir, exist_ok=True)
        done = module.run(config, device, repeats, stage_dir)
        measured = ', '.join(sorted(s for s in letters
                                    if STAGE_MODULES[s] == name))
        print(f'stage {measured} ({name}): '
              f'{time.perf_counter() - start:.1f} s', flush=True)
        for row in done:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise RuntimeError(f'stage module {name} returned a row '
                                   f'without {missing}')
            if row['stage'] in letters:
                rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table."""

    def num(value, digits=1):
        return '-' if value is None or (isinstance(value, float)
                                        and math.isnan(value)) else \
            f'{value:.{digits}f}'

    lines = ['| stage | what | ms / image | images / s | baseline | '
             'baseline ms / image | speedup |',
             '| --- | --- | ---: | ---: | --- | ---: | ---: |']
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['what']} | {num(r['ms_per_image'])} | "
            f"{num(r['images_per_s'], 2)} | {r['baseline'] or '-'} | "
            f"{num(r['baseline_ms_per_image'])} | "
            f"{num(r['speedup'], 2) + 'x' if r['baseline'] else '-'} |")
    return '\n'.join(lines)


def pace_probe_ms(repeats: int = 10) -> float:
    """Median ms of one fixed 3x3 convolution on one CPU thread (input
    32 x 64 x 48 x 80, 64 output channels, random weights): the pace of
    a shared machine at that moment, to tell runs in its fast and slow
    periods apart. The thread count is restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 64, 48, 80, generator=generator)
        w = torch.randn(64, 64, 3, 3, generator=generator)
        with torch.no_grad():
            return median_ms(
                lambda: torch.nn.functional.conv2d(x, w, padding=1),
                repeats)
    finally:
        torch.set_num_threads(threads)


def machine_info(device: str) -> Dict[str, object]:
    import torch
    from bdd100k_ins_seg.engine.threads import available_cores
    info = dict(platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, cores=available_cores(),
                threads=torch.get_num_threads(), device=device)
    try:
        info['load_average'] = os.getloadavg()
    except OSError:
        pass
    if device == 'cuda':
        from bdd100k_ins_seg.engine.tf32 import describe
        info['gpu'] = torch.cuda.get_device_name(0)
        info['tf32'] = describe()
    return info


def missing_training_files(cfg) -> Optional[str]:
    """The first of the config's training annotation file and image folder
    that is not on disk (None if both are)."""
    dataset = cfg.train_dataloader.dataset
    while 'dataset' in dataset:  # RepeatDataset and other wrappers
        dataset = dataset.dataset
    root = dataset.get('data_root') or ''
    paths = []
    if dataset.get('ann_file'):
        paths.append((osp.isfile, osp.join(root, dataset.ann_file)))
    prefix = (dataset.get('data_prefix') or {}).get('img')
    if prefix:
        paths.append((osp.isdir, osp.join(root, prefix)))
    for exists, path in paths:
        if not exists(path):
            return path
    return None


def run_cli(args) -> None:
    """What ``tools/benchmark.py`` does once its arguments are parsed
    (``args``: its argparse namespace)."""
    from bdd100k_ins_seg.cli import fail
    from bdd100k_ins_seg.zoo.catalogue import ZooError, resolve_config
    try:  # a file, or a model name of the zoo
        args.config = resolve_config(args.config)
    except ZooError as e:
        fail(f'config {args.config}', e)
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        fail('--device cuda', 'no CUDA device available')
    checkpoint, train_batches = args.checkpoint, args.train_batches
    if checkpoint or train_batches:
        # Named here, in one line, before any stage runs.
        from mmengine.config import Config

        from bdd100k_ins_seg.plugin.checkpoint import check_checkpoint_or_fail
        from bdd100k_ins_seg.plugin.config_lookup import (
            install_base_config_lookup)
        install_base_config_lookup()
        cfg = Config.fromfile(args.config)
        if checkpoint:
            check_checkpoint_or_fail(cfg, checkpoint)
        missing = train_batches and missing_training_files(cfg)
        if missing:
            fail('--train-batches', f'the training set of {args.config} is '
                 f'not there: {missing} not found')
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    else:
        from bdd100k_ins_seg.engine.threads import configure_threads
        configure_threads(num_workers=0)
    SETTINGS.update(size=args.size, images=args.images,
                    checkpoint=checkpoint, train_batches=train_batches,
                    test_runs=getattr(args, 'test_runs', None))
    pace = [pace_probe_ms()]
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        try:
            rows = run_stages(args.config, args.device, args.repeats,
                              work_dir, args.stages)
        except RuntimeError as e:
            fail('stage', e)
    pace.append(pace_probe_ms())
    print(format_table(rows), flush=True)
    print('pace probe (a fixed 3x3 convolution on one thread): '
          f'{pace[0]:.1f} ms before the stages, {pace[1]:.1f} ms after')
    machine = machine_info(args.device)
    machine['pace_probe_ms'] = pace
    result = dict(config=args.config, checkpoint=checkpoint,
                  repeats=args.repeats, size=list(args.size),
                  machine=machine, rows=rows)
    folder = osp.dirname(args.json)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp_json = args.json + '.tmp'
    with open(tmp_json, 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(tmp_json, args.json)
    print(f'written to {args.json}')
