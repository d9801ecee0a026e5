"""Mixed-precision training where the device computes bfloat16 natively.

``optim_wrapper = dict(type='BF16OptimWrapper', ...)`` is mmengine's
``OptimWrapper`` with the model's forward and losses (the data
preprocessor included) under ``torch.autocast(dtype=torch.bfloat16)`` on
the model's device, when that device computes bfloat16 natively: an x86
CPU with AVX512-BF16 or AMX instructions and oneDNN's bfloat16 kernels, or
a CUDA device of compute capability 8.0 or later (Ampere, Hopper: bfloat16
tensor cores). Elsewhere it trains
in float32, and says so once in the log: on a CPU with AVX-512 but without
those instructions oneDNN would still run bfloat16, emulated (the sample
model's step 2.3x slower than float32 with oneDNN held to plain AVX-512,
against 1.2x faster with AVX512-BF16; docs/demo.md), and on AVX2 not at
all. Other CPUs, ARM's included, stay float32 (not measured). The weights,
their gradients and the optimizer's state stay float32; bfloat16 keeps
float32's exponent range, so no loss scaling is needed. mmengine's
``AmpOptimWrapper`` runs on accelerators only; ``train.py --amp`` still
selects it on CUDA.

Validation and ``test.py`` run outside the optimizer's context, in
float32. What it gains and costs on the sample config: docs/demo.md and
``tools/benchmark.py --stages t`` (docs/speed.md).
"""
from contextlib import contextmanager
from typing import Optional

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper


def native_bf16(device) -> bool:
    """Whether ``device`` (a ``torch.device`` or its name: 'cpu', 'cuda',
    'cuda:1', ...) computes bfloat16 natively (the convolutions and matrix
    products autocast sends to it)."""
    try:
        device = torch.device(device)
    except RuntimeError:  # a device type this torch does not know
        return False
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:  # ROCm: PyTorch's own answer (not measured)
            return torch.cuda.is_bf16_supported()
        # Not torch.cuda.is_bf16_supported(): by default it also says yes
        # where bfloat16 is emulated (V100, T4: including_emulation=True),
        # and it asks about the current device, not this one.
        index = (device.index if device.index is not None
                 else torch.cuda.current_device())
        return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)
    if device.type == 'cpu':
        try:
            # oneDNN also says yes for plain AVX-512, where it emulates
            # bfloat16: the instructions are asked for apart.
            instructions = (torch.cpu._is_avx512_bf16_supported()
                            or torch.cpu._is_amx_tile_supported())
            return bool(instructions
                        and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # older torch, no oneDNN
            return False
    return False


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose :meth:`optim_context` autocasts to bfloat16
    where the model's device computes it natively (see the module's
    docstring); ``autocast_dtype`` says what the last context used."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.autocast_dtype: Optional[torch.dtype] = None
        self._decided = {}  # device ('cpu', 'cuda:1') -> autocast on or off

    def _autocast_on(self, device: torch.device) -> bool:
        """Whether the context autocasts on ``device``, the model's
        (decided once per device, and said in the log)."""
        name = str(device)
        if name not in self._decided:
            on = native_bf16(device)
            self._decided[name] = on
            print_log(
                f'BF16OptimWrapper: forward and losses in bfloat16 '
                f'autocast on {name}' if on else
                f'BF16OptimWrapper: {name} has no native bfloat16: '
                f'training in float32', logger='current')
        return self._decided[name]

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device('cpu')
        with super().optim_context(model):
            if not self._autocast_on(device):
                self.autocast_dtype = None
                yield
                return
            self.autocast_dtype = torch.bfloat16
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
