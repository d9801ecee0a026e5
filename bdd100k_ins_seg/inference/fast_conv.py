"""Faster CPU convolutions for inference: Winograd F(2x2, 3x3) for the wide
3x3 convolutions, oneDNN for the 1x1 ones.

A Mask R-CNN forward on CPU is ~75% 3x3 convolutions (FPN and RPN on the
stride-4 level, the mask head's four convs on 100 RoIs, the ResNet's
bottlenecks), which oneDNN already runs near the core's peak FLOP rate. The
remaining gain is in doing fewer multiplications: Winograd's minimal
filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016) computes each 2x2 output tile of a 3x3 convolution
from a 4x4 input tile as

    Y = A^T [ (G g G^T)  (.)  (B^T d B) ] A

where ``(.)`` is the element-wise product of the 16 transformed values,
summed over the input channels: 16 GEMMs of (tiles x C_in) @ (C_in x
C_out), 4 multiply-adds per output and channel pair instead of 9. The input
and output transforms are additions and subtractions only, and ``G g G^T``
is computed once per weight in float64, so the result is as accurate as a
direct float32 convolution (measured: closer to the float64 result).

The transforms are memory-bound passes over ~4x the feature map, so the
algorithm pays for wide layers only: :class:`InferenceConv2d` uses it for
3x3, stride-1, undilated, ungrouped convolutions with at least
``MIN_CHANNELS`` input and output channels and ``MIN_OUTPUT_PIXELS``
output pixels (per-layer ratios in ``tools/benchmark.py`` stage a's doc),
and the direct convolution otherwise. On AVX-512 CPUs oneDNN's direct
convolution is faster than this Winograd up to 256 channels, so there
``MIN_CHANNELS`` is 512 (:data:`MIN_CHANNELS_BY_CPU`).

PyTorch sends 1x1 convolutions on one thread with fewer than 16 images to
its reference GEMM path instead of oneDNN; :class:`InferenceConv2d` calls
oneDNN for them.

Both apply to CPU float32 (Winograd also float64) tensors outside autograd;
CUDA tensors, other dtypes and anything that needs a gradient take
``nn.Conv2d``'s own forward.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['InferenceConv2d', 'use_fast_convs', 'winograd_conv3x3',
           'winograd_pays', 'winograd_weight', 'direct_conv2d']

# The fewest channels for Winograd, by the CPU's vector instructions
# (torch.backends.cpu.get_cpu_capability()). Measured with stage f, one
# thread (Winograd / direct):
# - AVX2, a 2-core AMD EPYC: 256->256 at 184x320 1.26x, 46x80 1.48x,
#   23x40 (512) 1.6x, 100x14x14 1.3x; 256 at 12x20 0.93x, 64->64 at
#   184x320 0.8x;
# - AVX-512, a 2-core Intel Xeon: oneDNN's direct convolution is as fast or
#   faster up to 256 channels (184x320 1.00x, 46x80 0.80x, 100x14x14
#   0.93x), and Winograd pays at 512 (23x40 1.25x). The R-50 forward at
#   1280x720: 5639 ms with the 512 rule, 5933 ms with 128, 5996 ms without
#   Winograd (one process, interleaved).
MIN_CHANNELS_BY_CPU = {'AVX512': 512}
MIN_CHANNELS_DEFAULT = 128


def min_channels_for(capability: str) -> int:
    """``MIN_CHANNELS`` for a CPU capability string of
    ``torch.backends.cpu.get_cpu_capability()`` ('AVX2', 'AVX512', ...)."""
    return MIN_CHANNELS_BY_CPU.get(capability, MIN_CHANNELS_DEFAULT)


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # older torch
        return ''


MIN_CHANNELS = min_channels_for(_cpu_capability())
MIN_OUTPUT_PIXELS = 400
CHUNK_TILES = 512  # tiles per GEMM: the transforms' data stays in cache

# F(2x2, 3x3): the filter transform G (4x3). B^T and A^T are written out
# as additions in winograd_conv3x3.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# In the 16 transformed values (row-major over the 4x4 tile), the one whose
# output transform adds it to all four outputs (A^T[:, 1] = (1, 1)): the
# bias goes in there, for free.
_BIAS_SLOT = 5

_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(
    torch, 'mkldnn_convolution')


def winograd_pays(conv: nn.Conv2d, output_pixels: Optional[int] = None
                  ) -> bool:
    """Whether ``conv`` is a layer for :func:`winograd_conv3x3`: 3x3, stride
    1, undilated, ungrouped, zero padding, at least ``MIN_CHANNELS`` in and
    out, and (when given) at least ``MIN_OUTPUT_PIXELS`` output pixels
    (images x rows x columns) in the call."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == 'zeros'
            and isinstance(conv.padding, tuple)
            and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
            and (output_pixels is None
                 or output_pixels >= MIN_OUTPUT_PIXELS))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of a (C_out, C_in, 3, 3) weight, computed in float64:
    (16, C_out, C_in, 1, 1) in the weight's dtype, the 16 transformed
    filter taps in row-major order, each a 1x1 convolution's weight."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f'winograd_weight: expected a (C_out, C_in, 3, 3) '
                         f'weight, got {tuple(weight.shape)}')
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = g @ weight.detach().double() @ g.t()  # (C_out, C_in, 4, 4)
    co, ci = weight.shape[:2]
    return u.permute(2, 3, 0, 1).reshape(16, co, ci, 1, 1).to(
        weight.dtype).contiguous()


def _gemm(v: torch.Tensor, u: torch.Tensor,
          bias: Optional[torch.Tensor]) -> torch.Tensor:
    """(T, C_in) @ (C_in, C_out) (+ bias) for a contiguous ``v`` and a
    (C_out, C_in, 1, 1) ``u``: oneDNN's 1x1 convolution in float32 (~1.35x
    the FLOP rate of torch.mm on the measured CPU), torch.mm otherwise."""
    t, ci = v.shape
    if v.dtype == torch.float32 and _MKLDNN:
        y = torch.mkldnn_convolution(
            v.view(1, t, 1, ci).permute(0, 3, 1, 2), u, bias, (0, 0),
            (1, 1), (1, 1), 1)
        return y.permute(0, 2, 3, 1).reshape(t, -1)
    y = v @ u.view(u.size(0), ci).t()
    return y if bias is None else y.add_(bias)


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor,
                     bias: Optional[torch.Tensor] = None,
                     padding: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """A 3x3, stride-1, undilated, ungrouped convolution of ``x`` (N, C_in,
    H, W) by the weight whose :func:`winograd_weight` is ``u``, zero
    padding ``padding`` (rows, columns). Returns (N, C_out, H_out, W_out) in
    channels_last memory.

    The output is cut into 2x2 tiles (the last row/column of tiles may
    overhang and is cropped); up to ``CHUNK_TILES`` tiles at a time, the
    4x4 input tiles are transformed (``B^T d B``, additions only), the 16
    transformed values multiplied by the transformed filters (16 GEMMs) and
    transformed back (``A^T m A``) into the output.
    """
    n, c, h, w = x.shape
    co = u.size(1)
    if u.shape[2] != c:
        raise ValueError(f'winograd_conv3x3: input has {c} channels, the '
                         f'weight {u.shape[2]}')
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    if ho <= 0 or wo <= 0:
        raise ValueError(f'winograd_conv3x3: a {h}x{w} input with padding '
                         f'{padding} has no 3x3 output')
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    # NHWC, padded so that every tile has its 4x4 input; only the border
    # is zeroed (F.pad fills the whole tensor first).
    hp, wp = 2 * th + 2, 2 * tw + 2
    xp = x.new_empty(n, hp, wp, c)
    xp[:, ph:ph + h, pw:pw + w] = x.permute(0, 2, 3, 1)
    xp[:, :ph] = 0
    xp[:, ph + h:] = 0
    xp[:, ph:ph + h, :pw] = 0
    xp[:, ph:ph + h, pw + w:] = 0
    out = x.new_empty(n, th, 2, tw, 2, co)
    if n == 0:
        return out.view(n, 2 * th, 2 * tw, co)[:, :ho, :wo].permute(
            0, 3, 1, 2)
    if th * tw >= CHUNK_TILES:  # rows of tiles of one image
        rows = max(1, CHUNK_TILES // tw)
        steps = [(b, b + 1, r, min(th, r + rows)) for b in range(n)
                 for r in range(0, th, rows)]
    else:  # whole images
        per = max(1, CHUNK_TILES // (th * tw))
        steps = [(b, min(n, b + per), 0, th) for b in range(0, n, per)]
    for b0, b1, r0, r1 in steps:
        k = r1 - r0
        rows_in = xp[b0:b1, 2 * r0:2 * r1 + 2]
        even, odd = rows_in[:, 0::2], rows_in[:, 1::2]
        d0, d2 = even[:, :k], even[:, 1:k + 1]  # tile rows 0 and 2
        d1, d3 = odd[:, :k], odd[:, 1:k + 1]  # tile rows 1 and 3
        # B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3), whole padded
        # width; then the same on the columns, into the 16 slots.
        v = x.new_empty(16, b1 - b0, k, tw, c)
        for i, t in enumerate((d0 - d2, d1 + d2, d2 - d1, d1 - d3)):
            even, odd = t[:, :, 0::2], t[:, :, 1::2]
            t0, t2 = even[:, :, :tw], even[:, :, 1:tw + 1]
            t1, t3 = odd[:, :, :tw], odd[:, :, 1:tw + 1]
            torch.sub(t0, t2, out=v[4 * i])
            torch.add(t1, t2, out=v[4 * i + 1])
            torch.sub(t2, t1, out=v[4 * i + 2])
            torch.sub(t1, t3, out=v[4 * i + 3])
        v = v.view(16, -1, c)
        m = [_gemm(v[j], u[j], bias if j == _BIAS_SLOT else None).view(
            b1 - b0, k, tw, co) for j in range(16)]
        # A^T m A with A^T = ((1, 1, 1, 0), (0, 1, -1, -1)).
        tile = out[b0:b1, r0:r1]
        for p, s in enumerate(
                ([m[j] + m[4 + j] + m[8 + j] for j in range(4)],
                 [m[4 + j] - m[8 + j] - m[12 + j] for j in range(4)])):
            torch.add(s[0] + s[1], s[2], out=tile[:, :, p, :, 0])
            torch.sub(s[1] - s[2], s[3], out=tile[:, :, p, :, 1])
    y = out.view(n, 2 * th, 2 * tw, co)
    if 2 * th != ho or 2 * tw != wo:
        y = y[:, :ho, :wo].contiguous()
    return y.permute(0, 3, 1, 2)


def direct_conv2d(x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor], stride, padding, dilation,
                  groups: int) -> torch.Tensor:
    """oneDNN's convolution for a CPU float32 ``x`` (where PyTorch would
    pick its reference path, e.g. 1x1 on one thread), ``F.conv2d``
    otherwise."""
    if _MKLDNN and x.dtype == torch.float32 and x.device.type == 'cpu':
        return torch.mkldnn_convolution(x, weight, bias, padding, stride,
                                        dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class InferenceConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward on CPU, outside autograd, runs
    :func:`winograd_conv3x3` for wide 3x3 layers and oneDNN for 1x1 ones
    (see the module doc). Same parameters, buffers and state dict as
    ``nn.Conv2d``: :func:`use_fast_convs` turns a model's convolutions into
    this class in place. The transformed weight is cached and recomputed
    when the weight changes (in-place updates, ``load_state_dict``)."""

    def _fast_kind(self, x: torch.Tensor, weight: torch.Tensor) -> str:
        if (x.device.type != 'cpu' or x.dim() != 4 or x.numel() == 0
                or self.padding_mode != 'zeros'
                or x.dtype not in (torch.float32, torch.float64)
                or (torch.is_grad_enabled()
                    and (x.requires_grad or weight.requires_grad))):
            return ''
        pad = self.padding
        if isinstance(pad, tuple) and winograd_pays(
                self, x.size(0) * (x.size(2) + 2 * pad[0] - 2) *
                (x.size(3) + 2 * pad[1] - 2)):
            return 'winograd'
        if self.kernel_size == (1, 1) and x.dtype == torch.float32 and \
                isinstance(self.padding, tuple):
            return '1x1'
        return ''

    def _winograd_weight(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype,
               weight.device)
        cached = self.__dict__.get('_winograd_cache')
        if cached is None or cached[0] != key:
            cached = (key, winograd_weight(weight))
            self.__dict__['_winograd_cache'] = cached
        return cached[1]

    def _conv_forward(self, input, weight, bias):
        kind = self._fast_kind(input, weight)
        if kind == 'winograd':
            return winograd_conv3x3(input, self._winograd_weight(weight),
                                    bias, self.padding)
        if kind == '1x1':
            return direct_conv2d(input, weight, bias, self.stride,
                                 self.padding, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def _plain_conv_types():
    types = [nn.Conv2d]
    try:  # mmcv's wrapper: nn.Conv2d plus empty-input support for old torch
        from mmcv.cnn.bricks.wrappers import Conv2d
        types.append(Conv2d)
    except ImportError:
        pass
    return tuple(types)


def use_fast_convs(model: nn.Module) -> Dict[str, int]:
    """Turn every plain convolution of ``model`` (``nn.Conv2d`` itself or
    mmcv's wrapper of it, not subclasses with a forward of their own such
    as deformable or weight-standardised convs) into an
    :class:`InferenceConv2d`, in place.

    Returns ``{'winograd': 3x3 layers wide enough for Winograd,
    'onednn_1x1': 1x1 layers}`` (whether a call runs them also depends on
    the input: device, dtype, size, autograd).
    """
    plain = _plain_conv_types()
    done = dict(winograd=0, onednn_1x1=0)
    for m in model.modules():
        if type(m) not in plain or m.padding_mode != 'zeros':
            continue
        m.__class__ = InferenceConv2d
        if winograd_pays(m):
            done['winograd'] += 1
        elif m.kernel_size == (1, 1):
            done['onednn_1x1'] += 1
    return done
