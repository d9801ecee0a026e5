"""Exact resume: the random state is a function of the position in the run
(seeds from (seed, epoch, batch, slot, rank) per sample and (seed,
iteration, rank) per iteration), and a resumed run starts the sampler at
the next batch without loading the skipped ones."""
import copy
import os
import random
import signal

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, DATASETS, LOOPS
from mmengine.runner.loops import EpochBasedTrainLoop, IterBasedTrainLoop, _InfiniteDataloaderIterator
from torch.utils.data import BatchSampler



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
