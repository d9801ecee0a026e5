"""Keep an iteration schedule in proportion when ``max_iters`` is changed.

A config reads its LR milestones, warm-up length, checkpoint and validation
intervals once, from its own ``max_iters``; ``--cfg-options
train_cfg.max_iters=N`` changes only the loop. :class:`ScaleScheduleHook`
rescales them to the run's ``max_iters`` before training starts, so a short
or long run keeps the same shape: warm-up, decays at the same fractions, a
checkpoint and a validation at the end.
"""
from collections import Counter
from typing import Optional

from mmengine.hooks import CheckpointHook, Hook

from mmdet.registry import HOOKS


def scale_iteration(value: float, scale: float, max_iters: int) -> int:
    """``value`` iterations of the nominal schedule in the scaled one (at
    least 1, at most ``max_iters``)."""
    return int(max(1, min(max_iters, round(value * scale))))


@HOOKS.register_module()
class ScaleScheduleHook(Hook):
    """Rescale a schedule written for ``nominal_iters`` to the run's
    ``max_iters``: the ``begin``/``end``/``milestones`` of the iteration-based
    parameter schedulers, the checkpoint interval and the validation
    interval. Nothing changes when the two agree.

    Args:
        nominal_iters: the ``max_iters`` the config's numbers are for.
    """

    priority = 'VERY_HIGH'

    def __init__(self, nominal_iters: int) -> None:
        if nominal_iters < 1:
            raise ValueError(f'ScaleScheduleHook: nominal_iters must be >= '
                             f'1, got {nominal_iters}')
        self.nominal_iters = nominal_iters

    def before_train(self, runner) -> None:
        max_iters = runner.max_iters
        if max_iters == self.nominal_iters:
            return
        scale = max_iters / self.nominal_iters
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        for scheduler in schedulers:
            self._scale_scheduler(scheduler, scale, max_iters)
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook) and not hook.by_epoch:
                hook.interval = scale_iteration(hook.interval, scale,
                                                max_iters)
        loop = runner.train_loop
        if getattr(loop, 'val_interval', None):
            loop.val_interval = scale_iteration(loop.val_interval, scale,
                                                max_iters)
            loop.val_begin = min(loop.val_begin, max_iters)
        runner.logger.info(
            f'max_iters {max_iters} instead of {self.nominal_iters}: LR '
            f'schedule, checkpoint and validation intervals scaled by '
            f'{scale:.3g}')

    @staticmethod
    def _scale_scheduler(scheduler, scale: float, max_iters: int) -> None:
        # A resumed run loads schedulers that were scaled already.
        if getattr(scheduler, 'scaled_to', None) == max_iters or getattr(
                scheduler, 'by_epoch', False):
            return
        scheduler.begin = scale_iteration(scheduler.begin, scale,
                                          max_iters) if scheduler.begin else 0
        if scheduler.end <= 1e9:  # not the "until the end" default
            # 2 iterations at least: a warm-up scaled to 1 would leave the
            # lr at its start factor for the whole run
            scheduler.end = max(scheduler.begin + 2, scale_iteration(
                scheduler.end, scale, max_iters))
        if hasattr(scheduler, 'total_iters'):
            scheduler.total_iters = scheduler.end - scheduler.begin - 1
        if hasattr(scheduler, 'milestones'):
            scheduler.milestones = Counter({
                scale_iteration(m, scale, max_iters): n
                for m, n in scheduler.milestones.items()
            })
        scheduler.scaled_to = max_iters


def nominal_iters_of(cfg) -> Optional[int]:
    """The ``nominal_iters`` of a config's :class:`ScaleScheduleHook`."""
    for hook in cfg.get('custom_hooks', []) or []:
        if hook.get('type') in ('ScaleScheduleHook', ScaleScheduleHook):
            return hook.get('nominal_iters')
    return None
