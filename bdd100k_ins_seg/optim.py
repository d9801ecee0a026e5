"""Mixed-precision training where the device computes bfloat16 natively.

``optim_wrapper = dict(type='BF16OptimWrapper', ...)`` is mmengine's
``OptimWrapper`` with the model's forward and losses (the data
preprocessor included) under ``torch.autocast(dtype=torch.bfloat16)`` on
the model's device, when that device computes bfloat16 natively: an x86
CPU with AVX512-BF16 or AMX instructions and oneDNN's bfloat16 kernels, or
a CUDA device with ``torch.cuda.is_bf16_supported()``. Elsewhere it trains
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
``tools/benchmark.py --stages t`` (README, "Speed").
"""
from contextlib import contextmanager
from typing import Optional

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` ('cpu', 'cuda', ...) computes bfloat16
    natively (the convolutions and matrix products autocast sends to it)."""
    if device_type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == 'cpu':
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
        self._decided = {}  # device type -> autocast on or off

    def _autocast_on(self, device_type: str) -> bool:
        if device_type not in self._decided:
            on = native_bf16(device_type)
            self._decided[device_type] = on
            print_log(
                f'BF16OptimWrapper: forward and losses in bfloat16 '
                f'autocast on {device_type}' if on else
                f'BF16OptimWrapper: {device_type} has no native bfloat16: '
                f'training in float32', logger='current')
        return self._decided[device_type]

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        param = next(model.parameters(), None)
        device_type = param.device.type if param is not None else 'cpu'
        with super().optim_context(model):
            if not self._autocast_on(device_type):
                self.autocast_dtype = None
                yield
                return
            self.autocast_dtype = torch.bfloat16
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
