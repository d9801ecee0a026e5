"""SIGTERM / SIGINT during training: within :func:`stop_on_signals` the
signal only sets a flag (:func:`stop_requested`), which
:class:`bdd100k_ins_seg.engine.faults.FaultTolerantTrainHook` reads at the
end of the running iteration. A second Ctrl-C stops at once."""
import contextlib
import logging
import os
import signal

from mmengine.logging import print_log


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


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_restore_handlers_in_child)
