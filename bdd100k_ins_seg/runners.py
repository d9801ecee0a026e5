"""The runners of ``train.py`` and ``test.py``.

:class:`TrainRunner` trains a CPU model in channels_last memory when the
config says ``memory_format = 'channels_last'``. On CPU oneDNN's
convolutions run faster on channels_last (NHWC) maps than on NCHW ones,
forward and backward: the sample model's training step on one thread ran
1.13-1.24x faster on an AVX-512 Xeon (``tools/benchmark.py --stages t``;
docs/demo.md). The model's
4-d weights are put in channels_last before DDP wraps it, so that the
convolutions' outputs, the gradients, DDP's buckets and the optimizer's
state all share one layout. The optimizer state of a resumed checkpoint
written in another layout is copied into the parameters' layout: fused
AdamW reads a parameter and its state as raw memory in the same order, and
with two layouts it would pair the wrong elements without an error.

Where ``test.py`` writes its logs: nowhere unless asked, and never over
a training's files.

mmengine's Runner writes into its ``work_dir`` the log folder
``<timestamp>/`` and a copy of the config, ``<config name>.py``. A test run
pointed at a training's work folder (the default of the original scripts)
would overwrite that training's config copy and pile up a log folder per
run. :class:`TestRunner` keeps its config copy inside its own log folder,
and :func:`test_work_dir` gives a run without ``--work-dir`` a temporary
folder that is deleted when the process exits (the console has the log).
"""
import atexit
import os.path as osp
import shutil
import tempfile
from typing import Optional

import torch
from mmengine.device import get_device
from mmengine.optim import OptimWrapperDict
from mmengine.runner import Runner

MEMORY_FORMATS = {'contiguous': torch.contiguous_format,
                  'channels_last': torch.channels_last}


class TrainRunner(Runner):
    """mmengine's Runner, with the config's ``memory_format``
    (``'contiguous'``, the default, or ``'channels_last'``, applied on CPU
    only) for the model's weights and the optimizer's state. The weights
    are initialised in NCHW order, so a seed gives the same model in
    either layout."""

    def wrap_model(self, model_wrapper_cfg, model):
        name = self.cfg.get('memory_format', 'contiguous')
        if name not in MEMORY_FORMATS:
            raise ValueError(f'memory_format={name!r}: not one of '
                             f'{", ".join(MEMORY_FORMATS)}')
        self._memory_format = torch.contiguous_format
        if name != 'contiguous' and get_device() == 'cpu':
            self._memory_format = MEMORY_FORMATS[name]
            model = model.to(memory_format=self._memory_format)
        return super().wrap_model(model_wrapper_cfg, model)

    def _init_model_weights(self) -> None:
        # The initialisers fill a tensor's memory in order: in NCHW, as in a
        # contiguous run, the same seed gives the same weights.
        moved = [p for p in self.model.parameters()
                 if p.dim() == 4 and not p.is_contiguous()]
        for param in moved:
            param.data = param.data.contiguous()
        try:
            super()._init_model_weights()
        finally:
            for param in moved:
                param.data = param.data.contiguous(
                    memory_format=self._memory_format)

    def resume(self, *args, **kwargs) -> None:
        super().resume(*args, **kwargs)
        match_optimizer_state(self.optim_wrapper)


def match_optimizer_state(optim_wrapper) -> int:
    """Copies every optimizer state tensor shaped like its parameter but
    laid out otherwise into the parameter's layout; returns how many."""
    wrappers = (optim_wrapper.values()
                if isinstance(optim_wrapper, OptimWrapperDict)
                else [optim_wrapper])
    copied = 0
    for wrapper in wrappers:
        optimizer = wrapper.optimizer
        for group in optimizer.param_groups:
            for param in group['params']:
                state = optimizer.state.get(param, {})
                for key, value in state.items():
                    if (isinstance(value, torch.Tensor)
                            and value.shape == param.shape
                            and value.stride() != param.stride()):
                        state[key] = torch.empty_like(
                            param, dtype=value.dtype).copy_(value)
                        copied += 1
    return copied


class TestRunner(Runner):
    """A Runner whose config copy goes into its log folder
    (``work_dir/<timestamp>/``) instead of ``work_dir``."""

    def dump_config(self) -> None:
        if self.cfg.filename is not None:
            filename = osp.basename(self.cfg.filename)
        else:
            filename = f'{self.timestamp}.py'
        self.cfg.dump(osp.join(self.log_dir, filename))


def test_work_dir(work_dir: Optional[str]) -> str:
    """``work_dir`` if given; else a temporary folder removed at exit."""
    if work_dir:
        return work_dir
    scratch = tempfile.mkdtemp(prefix='bdd100k_ins_seg_test_')
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


# Not pytest tests, although their names start with "test".
TestRunner.__test__ = False
test_work_dir.__test__ = False
