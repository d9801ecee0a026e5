"""TensorFloat-32 (TF32) on CUDA: the project's policy, and a CPU emulation.

On NVIDIA GPUs of compute capability 8.0 and later (A100, H100, H200, RTX
30xx and later) PyTorch runs float32 cuDNN convolutions in TF32 by default:
the inputs and weights of each convolution are rounded to TF32's 10-bit
mantissa (float32 has 23), their products summed in float32. float32
matrix products (cuBLAS: the linear layers) stay full float32 by default.
A convolution's result then carries relative errors of about 1e-3 instead
of 1e-7: features, scores and box coordinates move in their third or
fourth digit, a mask pixel near the threshold or a detection near the
score cut can flip, and so the AP of a GPU run differs from a CPU run's (or
an older GPU's) in its last digit (docs/determinism.md gives the measured
sizes).

Policy:

* training and inference keep PyTorch's default unless the config says
  otherwise: ``env_cfg = dict(tf32=False)`` (``--cfg-options
  env_cfg.tf32=False`` on ``train.py`` and ``test.py``) runs every float32
  convolution and matrix product in full float32, ``True`` both in TF32,
  and no value (or ``None``) leaves PyTorch's settings as they are
  (:func:`configure`, called by the runners of
  :mod:`bdd100k_ins_seg.engine.runners`);
* results compared against CPU ones (tests/test_cuda.py, the benchmark's
  agreement checks) are computed with TF32 off, then the settings are
  restored: :func:`tf32_mode`.

PyTorch 2.9 added a second way to set these flags (``fp32_precision``) and
refuses to read the old one (``allow_tf32``) after the two were mixed;
:func:`set_tf32` sets both consistently, and :func:`tf32_mode` restores
both exactly.

:func:`emulate_tf32` rounds the inputs and weights of every float32
convolution to TF32 on any device, so that what TF32 does to a model's
numbers can be measured on a CPU (``test.py --emulate-tf32``). The rounding
of cuDNN's TF32 kernels is not documented: ``'nearest'`` rounds half away
from zero, as the conversion instruction (``cvt.rna.tf32.f32``) does;
``'truncate'`` drops the low 13 bits, as tensor cores do with float32
operands given as they are; the truth lies between the two.
"""
from contextlib import contextmanager
from typing import Dict, Optional

import torch

#: The rounding modes of :func:`round_to_tf32`.
ROUNDINGS = ('nearest', 'truncate')
# float32 bits below TF32's 10-bit mantissa: 23 - 10.
_DROPPED = 13


def _new_api() -> bool:
    """Whether this PyTorch has the ``fp32_precision`` settings (2.9+)."""
    return hasattr(torch.backends.cudnn, 'conv') and hasattr(
        torch.backends.cuda.matmul, 'fp32_precision')


def _resolved(precision: str, *parents: str) -> str:
    """An ``fp32_precision`` value with 'none' looked up in its parents
    (the backend's, then the generic one)."""
    for value in (precision, ) + parents:
        if value != 'none':
            return value
    return 'ieee'


def tf32_enabled() -> Dict[str, bool]:
    """Whether float32 CUDA convolutions (cuDNN) and matrix products
    (cuBLAS) run in TF32 now: ``{'conv': ..., 'matmul': ...}`` (what
    they would do on an Ampere or later GPU)."""
    if _new_api():
        cuda_all = torch.backends.cudnn.fp32_precision  # ('cuda', 'all')
        generic = torch.backends.fp32_precision
        return dict(
            conv=_resolved(torch.backends.cudnn.conv.fp32_precision,
                           cuda_all, generic) == 'tf32',
            matmul=_resolved(torch.backends.cuda.matmul.fp32_precision,
                             cuda_all, generic) == 'tf32')
    return dict(conv=bool(torch.backends.cudnn.allow_tf32),
                matmul=bool(torch.backends.cuda.matmul.allow_tf32))


def describe() -> str:
    """One phrase: what float32 runs in on CUDA now."""
    on = tf32_enabled()
    return (f"TF32 {'on' if on['conv'] else 'off'} for cuDNN convolutions, "
            f"{'on' if on['matmul'] else 'off'} for cuBLAS matrix products")


def _flags() -> dict:
    """Every setting :func:`set_tf32` touches, to restore them exactly
    (an old-API value PyTorch refuses to read, after a mix of the two
    APIs, is None and left alone)."""
    flags = {}
    for name, read in (
            ('cudnn_allow', lambda: torch.backends.cudnn.allow_tf32),
            ('matmul_precision', torch.get_float32_matmul_precision)):
        try:
            flags[name] = read()
        except RuntimeError:  # "you have used a mix of the legacy and new"
            flags[name] = None
    if _new_api():
        for name, owner in _PRECISIONS:
            try:
                flags[name] = owner().fp32_precision
            except AttributeError:  # a backend this build lacks
                pass
    return flags


# The new API's settings that the old one's setters write, in the order
# they are restored: the generic one and the CUDA backend's (the parents
# of 'none'), then each op's (set_float32_matmul_precision also writes
# oneDNN's matmul setting).
_PRECISIONS = (
    ('generic', lambda: torch.backends),
    ('cuda', lambda: torch.backends.cudnn),  # ('cuda', 'all')
    ('conv', lambda: torch.backends.cudnn.conv),
    ('rnn', lambda: torch.backends.cudnn.rnn),
    ('matmul', lambda: torch.backends.cuda.matmul),
    ('mkldnn_matmul', lambda: torch.backends.mkldnn.matmul),
)


def _restore(flags: dict) -> None:
    # The old API first (it also writes the new one), then the new one's
    # own values: both end as they were.
    if flags['cudnn_allow'] is not None:
        torch.backends.cudnn.allow_tf32 = flags['cudnn_allow']
    if flags['matmul_precision'] is not None:
        torch.set_float32_matmul_precision(flags['matmul_precision'])
    for name, owner in _PRECISIONS:
        if name in flags:
            setattr(owner(), 'fp32_precision', flags[name])


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for every float32 cuDNN convolution and cuBLAS
    matrix product (the settings are global; they apply on CPU-only
    machines too, where nothing uses them)."""
    enabled = bool(enabled)
    # The old API (read by older code: mmcv's conv2d_gradfix), then the
    # new one, which wins over a backend-wide value set by the user.
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    if _new_api():
        precision = 'tf32' if enabled else 'ieee'
        torch.backends.cudnn.conv.fp32_precision = precision
        torch.backends.cudnn.rnn.fp32_precision = precision
        torch.backends.cuda.matmul.fp32_precision = precision


@contextmanager
def tf32_mode(enabled: bool):
    """TF32 on or off inside, the settings as they were afterwards."""
    flags = _flags()
    set_tf32(enabled)
    try:
        yield
    finally:
        _restore(flags)


def setting(env_cfg) -> Optional[bool]:
    """A config's ``env_cfg.tf32``: True, False, or None (absent: PyTorch's
    default); anything else is a ValueError naming it."""
    value = (env_cfg or {}).get('tf32')
    if value is not None and not isinstance(value, bool):
        raise ValueError(f'env_cfg.tf32={value!r}: expected True, False or '
                         "None (PyTorch's default)")
    return value


def configure(env_cfg) -> Optional[bool]:
    """Apply a config's ``env_cfg.tf32`` (:func:`setting`; None leaves the
    settings alone); returns it."""
    value = setting(env_cfg)
    if value is not None:
        set_tf32(value)
    return value


# ---------------------------------------------------------------- emulation
def round_to_tf32(tensor: torch.Tensor,
                  rounding: str = 'nearest') -> torch.Tensor:
    """``tensor`` rounded to TF32 (10 mantissa bits), still float32:
    ``'nearest'`` (half away from zero) or ``'truncate'``. Infinities and
    NaNs stay; tensors of other dtypes are returned as they are (TF32
    applies to float32 only)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f'rounding={rounding!r}: one of {ROUNDINGS}')
    if tensor.dtype != torch.float32:
        return tensor
    bits = tensor.view(torch.int32)  # any strides: same element size
    if rounding == 'nearest':
        # Sign and magnitude: adding half of the dropped part to the
        # magnitude rounds it half up, whatever the sign.
        bits = bits + (1 << (_DROPPED - 1))
    rounded = (bits & -(1 << _DROPPED)).view(torch.float32)
    return torch.where(torch.isfinite(tensor), rounded, tensor)


def _convolutions():
    aten = torch.ops.aten
    names = ('convolution', '_convolution', 'conv1d', 'conv2d', 'conv3d',
             'conv_transpose1d', 'conv_transpose2d', 'conv_transpose3d',
             'mkldnn_convolution', 'cudnn_convolution',
             'cudnn_convolution_transpose')
    return {getattr(aten, n) for n in names if hasattr(aten, n)}


class _EmulateTF32:
    """The dispatch mode of :func:`emulate_tf32`."""

    def __init__(self, rounding, when_enabled):
        from torch.utils._python_dispatch import TorchDispatchMode

        convolutions = _convolutions()
        owner = self

        class Mode(TorchDispatchMode):

            def __torch_dispatch__(self, func, types, args=(),
                                   kwargs=None):
                kwargs = kwargs or {}
                if (func.overloadpacket in convolutions and len(args) >= 2
                        and (not when_enabled or tf32_enabled()['conv'])):
                    args = (round_to_tf32(args[0], rounding),
                            round_to_tf32(args[1], rounding)) + tuple(
                                args[2:])
                    owner.calls += 1
                return func(*args, **kwargs)

        self.mode = Mode()
        self.calls = 0


@contextmanager
def emulate_tf32(rounding: str = 'nearest', when_enabled: bool = False):
    """Inside, every float32 convolution (``nn.Conv*``, ``F.conv*``, the
    transposed ones, in and out of autograd) reads its input and weight
    rounded to TF32 (:func:`round_to_tf32`), on whatever device: what
    PyTorch's default does on an Ampere or later GPU, emulated (the bias
    and the sums stay float32; backward passes are not rounded). With
    ``when_enabled``, only while the settings ask cuDNN for TF32
    (:func:`tf32_enabled`), as a GPU would. Yields an object whose
    ``calls`` counts the convolutions rounded."""
    if rounding not in ROUNDINGS:
        raise ValueError(f'rounding={rounding!r}: one of {ROUNDINGS}')
    emulation = _EmulateTF32(rounding, when_enabled)
    with emulation.mode:
        yield emulation


__all__ = ['tf32_enabled', 'describe', 'set_tf32', 'tf32_mode', 'setting',
           'configure', 'round_to_tf32', 'emulate_tf32', 'ROUNDINGS']
