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

Both apply the config's ``env_cfg.tf32`` (:class:`TF32Env`).

Both keep the console to what a user reads (:class:`QuietConsole`):
progress, results, warnings and errors. mmengine's environment report, the
whole config and the hook table go to the log file of the work folder
only, unless ``verbose`` (the scripts' ``--verbose``).

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
import logging
import os.path as osp
import re
import shutil
import tempfile
from typing import Optional

import torch
from mmengine.device import get_device
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.runner import Runner

from bdd100k_ins_seg.cli import quiet_known_log_warnings

quiet_known_log_warnings()

MEMORY_FORMATS = {'contiguous': torch.contiguous_format,
                  'channels_last': torch.channels_last}

#: mmengine's Runner messages that go to the log file only (and to the
#: console with ``verbose``): the environment report (with its ~2000
#: characters of CUDA build flags), the whole config, the hook table, the
#: SyncBN note and the checkpoint path the scripts' header already names.
FILE_ONLY = re.compile(
    r'\n-{60}\nSystem environment:|Config:\n|Hooks will be executed in the '
    r'following order:|Distributed training is not used, all SyncBatchNorm|'
    r'Load checkpoint from ')


class FileOnly(logging.Filter):
    """Keeps the :data:`FILE_ONLY` messages off a console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not FILE_ONLY.match(record.getMessage())


class QuietConsole:
    """A Runner whose console shows what a user reads (progress, results,
    warnings, errors); the environment, the config and the hook table go
    to the log file of ``work_dir/<timestamp>/`` only, unless
    ``verbose`` (the scripts' ``--verbose``) is set on the class."""

    verbose = False

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        if not self.verbose:
            for handler in logger.handlers:
                if not isinstance(handler, logging.FileHandler) and not any(
                        isinstance(f, FileOnly) for f in handler.filters):
                    handler.addFilter(FileOnly())
        return logger


class TF32Env:
    """A Runner that applies ``env_cfg.tf32`` after mmengine's set-up of
    ``env_cfg``: TF32 for float32 on CUDA on (True), off (False) or left
    to PyTorch's default (absent, None; :mod:`bdd100k_ins_seg.engine.tf32`,
    docs/determinism.md)."""

    def setup_env(self, env_cfg) -> None:
        from bdd100k_ins_seg.engine import tf32
        super().setup_env(env_cfg)
        tf32.configure(env_cfg)


class DataSizesHook(Hook):
    """Logs the sizes of the training and validation sets once they are
    built, before the first iteration (part of the console header)."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        sizes = []
        for name, loop in (('training', runner.train_loop),
                           ('validation', runner._val_loop)):
            dataset = getattr(getattr(loop, 'dataloader', None), 'dataset',
                              None)
            if dataset is not None:
                sizes.append(f'{name} {len(dataset)} images')
        if sizes:
            runner.logger.info('data: ' + ', '.join(sizes))


class TrainRunner(QuietConsole, TF32Env, Runner):
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

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        self.register_hook(DataSizesHook())


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


class TestRunner(QuietConsole, TF32Env, Runner):
    """A Runner whose config copy goes into its log folder
    (``work_dir/<timestamp>/``) instead of ``work_dir``, and whose console
    leaves out the environment, the config and the hook table
    (:class:`QuietConsole`)."""

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
