"""Stopping cleanly: SIGTERM / SIGINT set a flag that all ranks agree on at
the end of an iteration, then a resumable checkpoint is written and
:class:`TrainingStopped` raised; a non-finite loss stops the run before a
checkpoint of NaN weights is written (:class:`FaultTolerantTrainHook`)."""
import math
import os.path as osp
import signal

import torch
from mmengine.dist import all_gather_object, all_reduce, barrier, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from bdd100k_ins_seg.engine.checkpoints import _atomic_write_or_error
from bdd100k_ins_seg.engine.loops import ResumableEpochBasedTrainLoop
from bdd100k_ins_seg.engine.signals import TrainingStopped, stop_requested


class NonFiniteLossError(RuntimeError):
    """A training iteration produced a non-finite loss (``what``: the
    iteration, ``why``: the terms and what happens)."""

    def __init__(self, what, why):
        self.what = what
        self.why = why
        super().__init__(f'{what}: {why}')


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
    :class:`bdd100k_ins_seg.inference.preflight.PreflightError` names the folder."""
    from mmengine.runner import BaseLoop

    from bdd100k_ins_seg.plugin.metric import BDD100KInsSegMetric
    from bdd100k_ins_seg.inference.preflight import check_gt
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
