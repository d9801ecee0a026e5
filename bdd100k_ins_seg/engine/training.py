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

from bdd100k_ins_seg.engine.checkpoints import (CheckpointWriteError,
                                                ResumeError,
                                                check_checkpoint_file,
                                                find_resume_checkpoint,
                                                install_atomic_checkpoints)
from bdd100k_ins_seg.engine.faults import (FaultTolerantTrainHook,
                                           NonFiniteLossError)
from bdd100k_ins_seg.engine.loops import (  # noqa: F401  (registers)
    ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop)
from bdd100k_ins_seg.engine.signals import TrainingStopped, stop_on_signals

# What train.py uses, in one place.
__all__ = [
    'CheckpointWriteError', 'NonFiniteLossError', 'ResumeError',
    'TrainingStopped', 'check_checkpoint_file', 'configure',
    'find_resume_checkpoint', 'install_atomic_checkpoints', 'stop_on_signals'
]


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
