"""Training that survives faults and resumes exactly.

What :func:`configure` (called by ``train.py``) adds to mmengine's Runner:

* **Atomic checkpoints** (:func:`install_atomic_checkpoints`): mmengine's
  ``save_checkpoint`` (what ``Runner.save_checkpoint`` and ``CheckpointHook``
  call) writes a local checkpoint into a hidden temporary file in the same
  folder, flushes and fsyncs it, then ``os.replace``-s it onto the final
  name; ``CheckpointHook`` writes ``last_checkpoint`` the same way and
  deletes the checkpoints beyond ``max_keep_ckpts`` only after the new one
  is complete. A kill or a full disk during a write leaves the previous
  checkpoint and ``last_checkpoint`` intact.
* **Stop on SIGTERM / SIGINT** (:func:`stop_on_signals` +
  :class:`FaultTolerantTrainHook`): the signal only sets a flag; at the end
  of the running iteration all ranks agree (an all-reduce of the flag),
  rank 0 writes a resumable ``iter_N.pth`` and ``last_checkpoint``, and
  :class:`TrainingStopped` is raised. A second Ctrl-C stops at once.
* **Stop on a non-finite loss**: the same hook, before ``CheckpointHook``,
  raises :class:`NonFiniteLossError` naming the iteration and the
  non-finite loss terms, so no checkpoint of NaN weights is written.
* **Exact resume** (:class:`ResumableIterBasedTrainLoop`,
  :class:`ResumableEpochBasedTrainLoop`): the random state is a function of
  the position in the run, so a resumed run has nothing to restore but the
  iteration: every sample's augmentation is drawn from generators seeded by
  (seed, epoch, batch, slot, rank) in whichever process (main or dataloader
  worker) loads it, the global torch/numpy/random generators are re-seeded
  from (seed, iteration, rank) before every iteration, and a resumed run
  starts the sampler at the next batch (without loading the skipped ones).
"""
import contextlib
import copy
import errno
import logging
import math
import os
import os.path as osp
import random
import signal
import tempfile
import zipfile

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.dist import (all_gather_object, all_reduce, barrier, get_rank,
                           get_world_size, is_main_process)
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, DATASETS, HOOKS, LOOPS
from mmengine.runner.loops import (EpochBasedTrainLoop, IterBasedTrainLoop,
                                   _InfiniteDataloaderIterator)
from torch.utils.data import BatchSampler

# --------------------------------------------------------------------------
# Atomic files


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


class CheckpointWriteError(OSError):
    """A checkpoint (or ``last_checkpoint``) could not be written."""

    def __str__(self):
        return f'cannot write {self.filename}: {self.strerror}'


@contextlib.contextmanager
def atomic_open(path, mode='wb', encoding=None):
    """Open ``path`` for writing so that it appears complete or not at all.

    Writes go to a hidden temporary file in the same folder, which is
    flushed, fsynced and renamed onto ``path`` when the block ends without
    an exception (and removed otherwise). A kill during the block leaves
    ``path`` as it was (and the temporary file behind).
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.',
                               suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _open_for_checkpoint_hook(file, mode='r', *args, **kwargs):
    """``open`` as seen by mmengine's checkpoint_hook module (which uses it
    only to write ``last_checkpoint``): writes are atomic."""
    if isinstance(mode, str) and 'w' in mode and not args:
        return _atomic_write_or_error(file, mode, kwargs.get('encoding'))
    return open(file, mode, *args, **kwargs)


@contextlib.contextmanager
def _atomic_write_or_error(path, mode, encoding=None):
    try:
        with atomic_open(path, mode, encoding=encoding) as f:
            yield f
    except CheckpointWriteError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.save wraps OSErrors
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        why = (cause.strerror or str(cause)) if cause is not None else \
            _first_line(e)
        raise CheckpointWriteError(
            getattr(cause, 'errno', None) or errno.EIO, why,
            os.fspath(path)) from None


_ORIGINAL_SAVE = {}


def _is_local(filename, backend_args=None):
    from mmengine.fileio import LocalBackend, get_file_backend
    if str(filename).startswith('pavi://'):
        return False
    try:
        backend = get_file_backend(filename, backend_args=backend_args)
    except Exception:  # noqa: BLE001 - unknown prefix: let mmengine decide
        return False
    return isinstance(backend, LocalBackend)


def save_checkpoint(checkpoint, filename, file_client_args=None,
                    backend_args=None):
    """mmengine's ``save_checkpoint``, atomic for local files.

    The checkpoint is streamed by ``torch.save`` into a temporary file next
    to ``filename`` (no in-memory copy as mmengine's version makes), then
    renamed. Remote backends go through mmengine's original function.
    """
    if file_client_args is not None or not _is_local(filename, backend_args):
        return _ORIGINAL_SAVE['save_checkpoint'](
            checkpoint, filename, file_client_args=file_client_args,
            backend_args=backend_args)
    with _atomic_write_or_error(filename, 'wb') as f:
        torch.save(checkpoint, f)


class _DeferredRemoval:
    """A file backend whose ``remove``/``rmtree`` are queued, not done."""

    def __init__(self, backend):
        self._backend = backend
        self.queued = []

    def remove(self, path):
        self.queued.append(('remove', path))

    def rmtree(self, path):
        self.queued.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _delete_old_after_saving(method):
    """Wrap a CheckpointHook method that deletes old checkpoints and then
    saves a new one: delete only once the new one is written."""

    def wrapper(self, runner, *args, **kwargs):
        backend = self.file_backend
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            result = method(self, runner, *args, **kwargs)
        finally:
            self.file_backend = backend
        for op, path in deferred.queued:
            getattr(backend, op)(path)
        return result

    wrapper.__wrapped__ = method
    wrapper._bdd100k_deferred = True
    return wrapper


def install_atomic_checkpoints():
    """Make mmengine's checkpoint writes atomic (idempotent).

    Patches ``mmengine.runner.checkpoint.save_checkpoint`` (and the names it
    is imported under by the Runner and the package), the ``open`` that
    ``mmengine.hooks.checkpoint_hook`` uses for ``last_checkpoint``, and
    CheckpointHook's deletion of old checkpoints (after the new save).
    """
    import mmengine.hooks.checkpoint_hook as hook_module
    import mmengine.runner as runner_pkg
    import mmengine.runner.checkpoint as ckpt_module
    import mmengine.runner.runner as runner_module
    if 'save_checkpoint' not in _ORIGINAL_SAVE:
        _ORIGINAL_SAVE['save_checkpoint'] = ckpt_module.save_checkpoint
    for module in (ckpt_module, runner_module, runner_pkg):
        module.save_checkpoint = save_checkpoint
    hook_module.open = _open_for_checkpoint_hook
    for name in ('_save_checkpoint_with_step', '_save_best_checkpoint'):
        method = getattr(CheckpointHook, name)
        if not getattr(method, '_bdd100k_deferred', False):
            setattr(CheckpointHook, name, _delete_old_after_saving(method))


# --------------------------------------------------------------------------
# What to resume from


class ResumeError(ValueError):
    """No usable checkpoint to resume from: ``path`` and ``why``."""

    def __init__(self, path, why):
        self.path = str(path)
        self.why = why
        super().__init__(f'{path}: {why}')


def check_checkpoint_file(path):
    """Raise :class:`ResumeError` if ``path`` is not a complete checkpoint.

    Zip checkpoints (torch >= 1.6) are checked without unpickling: the
    central directory must be readable (a truncated file has none) and
    every member must match its CRC. Other files are loaded with
    :func:`bdd100k_ins_seg.checkpoint.safe_load`.
    """
    if not osp.isfile(path):
        raise ResumeError(path, 'no such checkpoint file')
    if osp.getsize(path) == 0:
        raise ResumeError(path, 'empty file (an interrupted write?)')
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':  # not a zip: the legacy torch format
        from .checkpoint import safe_load
        try:
            safe_load(path)
        except Exception as e:  # noqa: BLE001 - any failure: one line
            raise ResumeError(path, _first_line(e)) from None
        return
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith('/data.pkl') or n == 'data.pkl'
                       for n in names):
                raise ResumeError(path, 'a zip file but not a torch '
                                  'checkpoint (no data.pkl)')
            bad = zf.testzip()
    except ResumeError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt archive
        raise ResumeError(path, 'truncated or corrupt checkpoint '
                          f'({_first_line(e)})') from None
    if bad is not None:
        raise ResumeError(path, f'corrupt checkpoint (bad CRC in {bad})')


def find_resume_checkpoint(work_dir):
    """The checkpoint ``--resume`` (no path) continues from: the one named
    by ``WORK_DIR/last_checkpoint``, checked to be complete."""
    marker = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(marker):
        found = sorted(n for n in os.listdir(work_dir)
                       if n.endswith('.pth')) if osp.isdir(work_dir) else []
        more = '...' if len(found) > 3 else ''
        hint = (f' (it has {", ".join(found[:3])}{more}: pass one as '
                '--resume CKPT)') if found else ''
        raise ResumeError(work_dir, 'nothing to resume from, no '
                          f'last_checkpoint in the work folder{hint}')
    with open(marker) as f:
        path = f.read().strip()
    if not path:
        raise ResumeError(marker, 'empty')
    if not osp.isabs(path) and not osp.isfile(path):
        path = osp.join(work_dir, osp.basename(path))
    check_checkpoint_file(path)
    return path


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --------------------------------------------------------------------------
# Signals


class TrainingStopped(Exception):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum, iteration, checkpoint):
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f'stopped by {name} after iteration {iteration}; saved '
            f'{checkpoint}; continue with --resume' if checkpoint else
            f'stopped by {name} before the first iteration; nothing to save')


class NonFiniteLossError(RuntimeError):
    """A training iteration produced a non-finite loss (``what``: the
    iteration, ``why``: the terms and what happens)."""

    def __init__(self, what, why):
        self.what = what
        self.why = why
        super().__init__(f'{what}: {why}')


_STOP = {'signum': None}


def stop_requested():
    """The signal number that asked training to stop, or None."""
    return _STOP['signum']


def _on_signal(signum, frame):
    if _STOP['signum'] is None:
        _STOP['signum'] = signum
        print_log(
            f'{signal.Signals(signum).name} received: finishing the current '
            'iteration, then saving a checkpoint and stopping'
            + (' (Ctrl-C again to stop at once)'
               if signum == signal.SIGINT else ''),
            logger='current', level=logging.WARNING)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    # A repeated SIGTERM (e.g. sent to every process of a job) changes
    # nothing: the checkpoint is on its way.


# The handlers that stop_on_signals replaced, while it is active.
_PREVIOUS_HANDLERS = {}


def _restore_handlers_in_child():
    """A child forked inside :func:`stop_on_signals` (the evaluator's
    multiprocessing pool at a validation, any forked helper) gets the
    handlers of before: only the training process finishes its iteration
    on SIGTERM. A pool worker that kept ``_on_signal`` would survive the
    SIGTERM of ``Pool.terminate()``, and the pool's exit would wait for it
    forever. (Dataloader workers set their own handlers after this.)"""
    for s, handler in _PREVIOUS_HANDLERS.items():
        if signal.getsignal(s) is _on_signal:
            signal.signal(s, handler)


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_restore_handlers_in_child)


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
    """Within the block, SIGTERM/SIGINT request a stop at the end of the
    running iteration (see :class:`FaultTolerantTrainHook`) instead of
    killing the process; forked children keep the usual handlers. The
    previous handlers come back afterwards."""
    previous = {s: signal.signal(s, _on_signal) for s in signals}
    _PREVIOUS_HANDLERS.update((s, h) for s, h in previous.items()
                              if h is not _on_signal)
    _STOP['signum'] = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _PREVIOUS_HANDLERS.clear()
        _STOP['signum'] = None


# --------------------------------------------------------------------------
# The hook: stop on signals / non-finite losses, keep resume information


def _non_finite_terms(outputs):
    bad = []
    if not isinstance(outputs, dict):
        return bad
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor):
            if value.numel() and not bool(torch.isfinite(value).all()):
                bad.append(f'{name}={float(value.detach().float().mean()):g}')
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f'{name}={value:g}')
    return bad


def _checkpoint_hook(runner):
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook):
            return hook
    return None


def check_validation_gt(runner) -> None:
    """Before the first iteration: every validation image has its GT
    bitmask in the folder of each scoring ``BDD100KInsSegMetric``, which
    would otherwise fail at the first validation, hours in.
    :class:`bdd100k_ins_seg.inference.PreflightError` names the folder."""
    from mmengine.runner import BaseLoop

    from .evaluation import BDD100KInsSegMetric
    from .inference import check_gt
    loop = getattr(runner, '_val_loop', None)
    if not isinstance(loop, BaseLoop):
        return
    metrics = [m for m in getattr(loop.evaluator, 'metrics', [])
               if isinstance(m, BDD100KInsSegMetric) and not m.format_only]
    if not metrics:
        return
    dataset = loop.dataloader.dataset
    paths = [dataset.get_data_info(i)['img_path']
             for i in range(len(dataset))]
    for metric in metrics:
        check_gt(metric.gt_dir, paths)


@HOOKS.register_module()
class FaultTolerantTrainHook(Hook):
    """Stops training cleanly on a signal or a non-finite loss.

    Runs after the iteration's parameter-scheduler step and before
    ``CheckpointHook`` (priority 80). Every iteration, all ranks all-reduce
    two flags (a stop was requested, a loss is non-finite); then

    * non-finite loss: :class:`NonFiniteLossError` naming the iteration and
      the terms; ``CheckpointHook`` does not run, so the last checkpoint
      stays the last one with finite weights;
    * signal: rank 0 saves ``iter_N.pth`` (model, optimizer, schedulers,
      message hub, epoch/iteration and the sampler position) and
      ``last_checkpoint``, all ranks wait for it, then
      :class:`TrainingStopped`.
    """

    priority = 80

    def before_train(self, runner):
        # Stopped while starting up: nothing new to save.
        signum = stop_requested()
        if get_world_size() > 1:
            signum = max(all_gather_object(int(signum or 0))) or None
        if signum:
            raise TrainingStopped(signum, runner.iter, None)
        check_validation_gt(runner)

    def after_load_checkpoint(self, runner, checkpoint):
        loop = runner._train_loop
        if getattr(runner, '_resume', False) and isinstance(
                loop, ResumableEpochBasedTrainLoop):
            loop._resume_epoch_batches = checkpoint.get('meta', {}).get(
                'epoch_batches_done')

    def before_save_checkpoint(self, runner, checkpoint):
        loop = runner._train_loop
        if isinstance(loop, ResumableEpochBasedTrainLoop):
            meta = checkpoint.setdefault('meta', {})
            # A checkpoint at the end of an epoch is saved as epoch + 1.
            meta['epoch_batches_done'] = (
                loop._epoch_batches_done if meta.get('epoch') == loop.epoch
                else 0)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        bad = _non_finite_terms(outputs)
        flags = torch.tensor([1 if stop_requested() else 0,
                              1 if bad else 0])
        if get_world_size() > 1:
            all_reduce(flags, op='max')
        iteration = runner.iter + 1
        if flags[1]:
            if get_world_size() > 1:
                per_rank = all_gather_object(bad)
                bad = [f'{t} (rank {r})' for r, terms in enumerate(per_rank)
                       for t in terms]
            last = _last_checkpoint(runner)
            kept = (f'the last checkpoint {last} is kept' if last else
                    'no checkpoint was saved before it')
            raise NonFiniteLossError(
                f'non-finite loss at iteration {iteration}',
                f'{", ".join(bad)}; training stopped, {kept}')
        if flags[0]:
            signum = int(stop_requested() or 0)
            if get_world_size() > 1:
                # The signal may have reached another rank only.
                signum = max(all_gather_object(signum))
            signum = signum or signal.SIGTERM
            path = _save_resumable(runner, iteration)
            raise TrainingStopped(signum, iteration, path)


def _last_checkpoint(runner):
    marker = osp.join(runner.work_dir, 'last_checkpoint')
    if osp.isfile(marker):
        with open(marker) as f:
            return f.read().strip() or None
    return None


def _save_resumable(runner, iteration):
    """Save ``iter_<iteration>.pth`` and point ``last_checkpoint`` at it."""
    hook = _checkpoint_hook(runner)
    out_dir = getattr(hook, 'out_dir', None) or runner.work_dir
    backend_args = getattr(hook, 'backend_args', None)
    filename = f'iter_{iteration}.pth'
    runner.save_checkpoint(out_dir, filename, save_optimizer=True,
                           save_param_scheduler=True, by_epoch=False,
                           backend_args=backend_args)
    path = osp.join(out_dir, filename)
    if is_main_process():
        with _atomic_write_or_error(
                osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
            f.write(path)
    runner.message_hub.update_info('last_ckpt', path)
    if get_world_size() > 1:
        barrier()
    return path


# --------------------------------------------------------------------------
# Position-seeded randomness


def _derive_seed(*parts):
    """A 32-bit seed from non-negative integers (numpy's SeedSequence)."""
    entropy = [int(p) % (1 << 63) for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Tags that keep the seed streams of iterations and samples apart.
_ITER_STREAM, _SAMPLE_STREAM = 1, 2


def reseed_iteration(base_seed, iteration):
    """Seed the global generators for ``iteration`` of this rank."""
    seed_everything(_derive_seed(base_seed or 0, _ITER_STREAM, iteration,
                                 get_rank()))


@DATASETS.register_module()
class SampleSeededDataset:
    """A dataset whose samples are drawn with their own seeds.

    Indexed by ``(index, seed)`` (as :class:`ResumableBatchSampler` yields
    them), it seeds Python's, numpy's and torch's global generators with
    ``seed`` around loading ``dataset[index]``, so the random augmentation
    of a sample depends on its position in the run only, whether it is
    loaded in the main process or in a dataloader worker, and the
    generators are restored afterwards. Plain integer indices load as
    usual. Everything else is delegated to the wrapped dataset.
    """

    def __init__(self, dataset):
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = dataset

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        states = (random.getstate(), np.random.get_state(),
                  torch.get_rng_state())
        seed_everything(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


@DATA_SAMPLERS.register_module()
class ResumableBatchSampler:
    """Wraps a batch sampler: gives every sample a seed from its position
    (seed, epoch, batch, slot, rank) and can start at a later batch.

    Args:
        sampler: the sampler (e.g. mmengine's DefaultSampler).
        batch_size (int): images per batch.
        batch_sampler (dict, optional): config of the wrapped batch sampler
            (e.g. mmdet's AspectRatioBatchSampler); torch's BatchSampler if
            None.
        drop_last (bool): for torch's BatchSampler.
        seed (int): base seed of the per-sample seeds.
    """

    def __init__(self, sampler, batch_size, batch_sampler=None,
                 drop_last=False, seed=0):
        if batch_sampler is None:
            self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        elif isinstance(batch_sampler, dict):
            self.batch_sampler = DATA_SAMPLERS.build(
                batch_sampler,
                default_args=dict(sampler=sampler, batch_size=batch_size))
        else:
            self.batch_sampler = batch_sampler
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.skip = 0  # batches to skip at the start of the next pass

    def __len__(self):
        return len(self.batch_sampler)

    def restart(self):
        """Forget the state of a pass left unfinished: mmengine's
        InfiniteSampler is a single generator made at construction, mmdet's
        AspectRatioBatchSampler keeps its half-filled buckets in itself."""
        if isinstance(self.sampler, InfiniteSampler):
            self.sampler.indices = self.sampler._indices_of_rank()
        buckets = getattr(self.batch_sampler, '_aspect_ratio_buckets', None)
        if isinstance(buckets, list):
            self.batch_sampler._aspect_ratio_buckets = [[] for _ in buckets]

    def __iter__(self):
        skip, self.skip = self.skip, 0
        epoch = getattr(self.sampler, 'epoch', 0)
        rank = get_rank()
        for b, batch in enumerate(self.batch_sampler):
            if b < skip:
                continue
            yield [(int(i), _derive_seed(self.seed or 0, _SAMPLE_STREAM,
                                         epoch, b, j, rank))
                   for j, i in enumerate(batch)]


# Set (in shared memory) when the main process exits: from then on the
# dataloader workers obey SIGTERM again.
_WORKERS_MAY_EXIT = None


def _let_workers_exit():
    if _WORKERS_MAY_EXIT is not None:
        _WORKERS_MAY_EXIT.value = 1


def _shared_exit_flag():
    global _WORKERS_MAY_EXIT
    if _WORKERS_MAY_EXIT is None:
        import atexit
        import multiprocessing
        _WORKERS_MAY_EXIT = multiprocessing.RawValue('b', 0)
        # Runs before multiprocessing's own exit handler (registered
        # earlier), which terminates the workers and waits for them.
        atexit.register(_let_workers_exit)
    return _WORKERS_MAY_EXIT


_PARENT = {}


def _worker_sigterm(signum, frame):
    if ((_WORKERS_MAY_EXIT is not None and _WORKERS_MAY_EXIT.value)
            or os.getppid() != _PARENT.get('pid')):
        os._exit(0)  # a clean exit: not reported as a worker failure


def _ignore_signals_worker_init(worker_id, base=None):
    """Dataloader workers ignore SIGINT and SIGTERM while the main process
    runs: Ctrl-C reaches the whole process group and schedulers signal
    every process of a job, but only the main process decides when to stop
    (a dead worker would abort the iteration being finished)."""
    _PARENT['pid'] = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if base is not None:
        base(worker_id)


def _resumable_dataloader(dataloader, runner):
    """The dataloader config with the seeded dataset and batch sampler."""
    if not isinstance(dataloader, dict):
        return dataloader  # a built DataLoader: used as is
    cfg = copy.copy(dataloader)
    cfg['dataset'] = dict(type='SampleSeededDataset', dataset=cfg['dataset'])
    inner = cfg.pop('batch_sampler', None)
    cfg['batch_sampler'] = dict(
        type='ResumableBatchSampler', batch_sampler=inner,
        drop_last=cfg.pop('drop_last', False), seed=runner.seed)
    if cfg.get('num_workers', 0) > 0 and 'worker_init_fn' not in cfg:
        from functools import partial

        from mmengine.dataset import worker_init_fn
        base = partial(worker_init_fn, num_workers=cfg['num_workers'],
                       rank=get_rank(), seed=runner.seed)
        _shared_exit_flag()
        cfg['worker_init_fn'] = dict(type=_ignore_signals_worker_init,
                                     base=base)
    return cfg


def _shutdown_workers(iterator):
    """Stop the workers of an ``_InfiniteDataloaderIterator``."""
    shutdown = getattr(getattr(iterator, '_iterator', None),
                       '_shutdown_workers', None)
    if shutdown is not None:
        shutdown()


class _ResumableLoopMixin:
    """What both resumable loops share."""

    def _setup_resumable(self):
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        self._resumable = isinstance(batch_sampler, ResumableBatchSampler)
        sampler = getattr(batch_sampler, 'sampler', None)
        # A sampler seeded by the Runner's seed must follow it when a resume
        # restores the seed of the run (random when the config has none).
        self._sampler_follows_seed = (
            sampler is not None and getattr(sampler, 'seed', None)
            == self.runner.seed)

    def _sync_seeds(self):
        if not self._resumable:
            return
        batch_sampler = self.dataloader.batch_sampler
        batch_sampler.seed = self.runner.seed
        if self._sampler_follows_seed:
            batch_sampler.sampler.seed = self.runner.seed


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(_ResumableLoopMixin, IterBasedTrainLoop):
    """mmengine's IterBasedTrainLoop, resuming exactly (see module doc).

    On resume the sampler jumps to the next batch instead of loading and
    discarding every batch already trained (mmengine's way).
    """

    def __init__(self, runner, dataloader, *args, **kwargs):
        super().__init__(runner, _resumable_dataloader(dataloader, runner),
                         *args, **kwargs)
        self._setup_resumable()

    def _fast_forward(self):
        batch_sampler = self.dataloader.batch_sampler
        sampler = batch_sampler.sampler
        epoch, skip = 0, self._iter
        if not isinstance(sampler, InfiniteSampler):
            epoch, skip = divmod(self._iter, len(self.dataloader))
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)
        # The iterator made at construction has started a pass (and its
        # workers): end it before the sampler restarts at the new position.
        _shutdown_workers(self.dataloader_iterator)
        self.dataloader_iterator = None
        batch_sampler.restart()
        batch_sampler.skip = skip
        self.dataloader_iterator = _InfiniteDataloaderIterator(
            self.dataloader)
        self.dataloader_iterator._epoch = epoch
        print_log(f'Resuming at iteration {self._iter + 1}: the sampler '
                  f'starts at batch {skip} of pass {epoch}',
                  logger='current')

    def run(self):
        if not self._resumable:
            return super().run()
        self._sync_seeds()
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            self._fast_forward()
        try:
            while self._iter < self._max_iters and not self.stop_training:
                self.runner.model.train()
                data_batch = next(self.dataloader_iterator)
                self.run_iter(data_batch)
                self._decide_current_val_interval()
                if (self.runner.val_loop is not None
                        and self._iter >= self.val_begin
                        and (self._iter % self.val_interval == 0
                             or self._iter == self._max_iters)):
                    self.runner.val_loop.run()
        finally:
            # The sampler never ends: stop the workers now (not at exit).
            _shutdown_workers(self.dataloader_iterator)
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_iter(self, data_batch):
        reseed_iteration(self.runner.seed, self._iter)
        super().run_iter(data_batch)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(_ResumableLoopMixin, EpochBasedTrainLoop):
    """mmengine's EpochBasedTrainLoop, resuming exactly (see module doc).

    A checkpoint saved in the middle of an epoch (on a signal, or by an
    iteration interval) records how many batches of the epoch were done;
    the resumed run starts the epoch's sampler after them (mmengine would
    run the whole epoch again).
    """

    def __init__(self, runner, dataloader, *args, **kwargs):
        super().__init__(runner, _resumable_dataloader(dataloader, runner),
                         *args, **kwargs)
        self._setup_resumable()
        self._epoch_batches_done = 0
        self._resume_epoch_batches = None

    def run(self):
        self._sync_seeds()
        return super().run()

    def run_epoch(self):
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        start = 0
        if self._iter > 0 and self._resumable:
            start = self._resume_epoch_batches
            if start is None:  # a checkpoint of another loop
                start = self._iter - self._epoch * len(self.dataloader)
            start = max(0, start)
            self._resume_epoch_batches = 0
            if start:
                self.dataloader.batch_sampler.skip = start
                print_log(f'Resuming epoch {self._epoch + 1} at batch '
                          f'{start + 1}', logger='current')
        for idx, data_batch in enumerate(self.dataloader, start):
            self._epoch_batches_done = idx + 1
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
        self._epoch_batches_done = 0

    def run_iter(self, idx, data_batch):
        reseed_iteration(self.runner.seed, self._iter)
        super().run_iter(idx, data_batch)


# --------------------------------------------------------------------------
# Config


_LOOP_TYPES = {
    'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop',
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
}


def configure(cfg):
    """Enable the above for a training config (in place; idempotent).

    mmengine's Iter/EpochBasedTrainLoop become the resumable loops (other
    loop types are kept, without the exact-resume guarantee) and
    :class:`FaultTolerantTrainHook` is added to ``custom_hooks``.
    """
    install_atomic_checkpoints()
    train_cfg = cfg.get('train_cfg')
    if train_cfg is not None:
        loop_type = train_cfg.get('type')
        if loop_type is None:  # mmengine's by_epoch shorthand
            loop_type = ('EpochBasedTrainLoop' if train_cfg.pop(
                'by_epoch', True) else 'IterBasedTrainLoop')
        name = loop_type.split('.')[-1] if isinstance(loop_type,
                                                       str) else None
        train_cfg['type'] = _LOOP_TYPES.get(name, loop_type)
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') in ('FaultTolerantTrainHook',
                                 FaultTolerantTrainHook) for h in hooks):
        hooks.append(dict(type='FaultTolerantTrainHook'))
    cfg.custom_hooks = hooks
    return cfg
