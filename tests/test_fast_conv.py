"""bdd100k_ins_seg.fast_conv: Winograd F(2x2, 3x3) and the oneDNN 1x1
path against direct convolutions, and InferenceConv2d's dispatch."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdd100k_ins_seg import fast_conv
from bdd100k_ins_seg.fast_conv import (InferenceConv2d, PixelDeconv2d,
                                       use_fast_convs, use_pixel_deconvs,
                                       winograd_conv3x3, winograd_weight)


def reference_conv3x3(x, weight, bias, padding):
    """A 3x3 stride-1 convolution written out: the sum of the nine
    shifted input windows times their weight tap (no conv kernel)."""
    ph, pw = padding
    xp = torch.zeros(x.size(0), x.size(1), x.size(2) + 2 * ph,
                     x.size(3) + 2 * pw, dtype=x.dtype)
    xp[:, :, ph:ph + x.size(2), pw:pw + x.size(3)] = x
    ho, wo = xp.size(2) - 2, xp.size(3) - 2
    out = torch.zeros(x.size(0), weight.size(0), ho, wo, dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            window = xp[:, :, i:i + ho, j:j + wo]
            out += torch.einsum('nchw,oc->nohw', window, weight[:, :, i, j])
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


# (batch, C_in, C_out, H, W, padding): odd and even sizes (cropped last
# tile row/column), padding 0/1/2, one-pixel outputs, batches of images
# smaller than a chunk and images larger than one.
SHAPES = [
    (1, 5, 7, 9, 11, (1, 1)),
    (2, 3, 4, 8, 8, (1, 1)),
    (3, 6, 2, 7, 10, (0, 0)),
    (1, 4, 4, 3, 3, (0, 0)),
    (2, 2, 3, 5, 6, (2, 1)),
    (1, 3, 3, 1, 1, (1, 1)),
    (1, 8, 8, 70, 40, (1, 1)),
]


@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_winograd_equals_the_written_out_convolution_in_float64(shape):
    """In float64 the transforms are exact up to rounding: any wrong tile
    offset, transform entry or crop shows as an O(1) difference."""
    n, ci, co, h, w, padding = shape
    g = torch.Generator().manual_seed(sum(shape[:5]))
    x = torch.randn(n, ci, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(co, ci, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(co, generator=g, dtype=torch.float64)
    expected = reference_conv3x3(x, weight, bias, padding)
    got = winograd_conv3x3(x, winograd_weight(weight), bias, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # and without a bias, from a channels_last input
    got = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last),
                           winograd_weight(weight), None, padding)
    torch.testing.assert_close(got, expected - bias.view(1, -1, 1, 1),
                               rtol=0, atol=1e-10)


def test_chunks_of_tiles_cover_every_output(monkeypatch):
    """Tiny chunks: many row chunks per image and many image chunks."""
    monkeypatch.setattr(fast_conv, 'CHUNK_TILES', 3)
    g = torch.Generator().manual_seed(1)
    for n, h, w in [(1, 13, 9), (5, 4, 4)]:
        x = torch.randn(n, 4, h, w, generator=g, dtype=torch.float64)
        weight = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
        got = winograd_conv3x3(x, winograd_weight(weight), None)
        torch.testing.assert_close(
            got, reference_conv3x3(x, weight, None, (1, 1)), rtol=0,
            atol=1e-10)


def test_float32_is_as_accurate_as_the_direct_convolution():
    """A layer of the size it is used for (256 channels): the float32
    Winograd result is no further from the float64 truth than three times
    oneDNN's direct float32 convolution, and within 2e-6 of the outputs'
    scale. (The direct error depends on the CPU's kernel: on an AVX-512
    Xeon it is 1.3e-6 here, and Winograd's 2.7e-6 is 2.1x it.)"""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 256, 20, 24, generator=g)
    weight = torch.randn(256, 256, 3, 3, generator=g) * 0.02
    bias = torch.randn(256, generator=g)
    truth = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    direct = F.conv2d(x, weight, bias, padding=1)
    ours = winograd_conv3x3(x, winograd_weight(weight), bias)
    assert ours.dtype == torch.float32
    err_direct = float((direct.double() - truth).abs().max())
    err_ours = float((ours.double() - truth).abs().max())
    assert err_ours <= 3 * err_direct, (err_ours, err_direct)
    assert err_ours < 2e-6 * float(truth.abs().max())


def test_empty_batch_and_bad_shapes():
    u = winograd_weight(torch.randn(4, 3, 3, 3))
    assert winograd_conv3x3(torch.randn(0, 3, 8, 8), u).shape == (0, 4, 8, 8)
    with pytest.raises(ValueError, match='5 channels'):
        winograd_conv3x3(torch.randn(1, 5, 8, 8), u)
    with pytest.raises(ValueError, match='no 3x3 output'):
        winograd_conv3x3(torch.randn(1, 3, 1, 1), u, padding=(0, 0))
    with pytest.raises(ValueError, match=r'\(C_out, C_in, 3, 3\)'):
        winograd_weight(torch.randn(4, 3, 5, 5))


class Recorder:
    """Counts the calls of fast_conv's two kernels."""

    def __init__(self, monkeypatch):
        self.calls = []
        wino, direct = fast_conv.winograd_conv3x3, fast_conv.direct_conv2d

        def spy_wino(*args, **kwargs):
            self.calls.append('winograd')
            return wino(*args, **kwargs)

        def spy_direct(*args, **kwargs):
            self.calls.append('1x1')
            return direct(*args, **kwargs)

        monkeypatch.setattr(fast_conv, 'winograd_conv3x3', spy_wino)
        monkeypatch.setattr(fast_conv, 'direct_conv2d', spy_direct)


def fast_copy(conv):
    fast = copy.deepcopy(conv)
    use_fast_convs(fast)
    assert type(fast) is InferenceConv2d
    return fast


def test_inference_conv_dispatch(monkeypatch):
    rec = Recorder(monkeypatch)
    torch.manual_seed(3)
    wide = nn.Conv2d(128, 128, 3, padding=1)
    fast = fast_copy(wide)
    x = torch.randn(1, 128, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), wide(x), rtol=1e-4, atol=1e-4)
    assert rec.calls == ['winograd']
    # Too few output pixels, too few channels, a stride: nn.Conv2d's path.
    rec.calls.clear()
    with torch.no_grad():
        fast(torch.randn(1, 128, 8, 8))
        narrow = fast_copy(nn.Conv2d(64, 128, 3, padding=1))
        narrow(torch.randn(1, 64, 40, 40))
        strided = fast_copy(nn.Conv2d(128, 128, 3, stride=2, padding=1))
        strided(torch.randn(1, 128, 40, 40))
    assert rec.calls == []
    # A gradient is needed: autograd's conv, and the gradient is right.
    x.requires_grad_(True)
    fast(x).sum().backward()
    expected = torch.autograd.grad(wide(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)
    assert rec.calls == []
    # 1x1, strided 1x1 and grouped 1x1 on oneDNN, same result.
    for conv in (nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1, stride=2),
                 nn.Conv2d(16, 8, 1, groups=4, bias=False)):
        x = torch.randn(2, 16, 9, 7)
        with torch.no_grad():
            torch.testing.assert_close(fast_copy(conv)(x), conv(x))
    assert rec.calls == ['1x1'] * 3


def test_transformed_weight_follows_weight_updates():
    torch.manual_seed(4)
    conv = nn.Conv2d(128, 128, 3, padding=1).double()
    fast = fast_copy(conv)
    x = torch.randn(1, 128, 21, 21, dtype=torch.float64)
    with torch.no_grad():
        fast(x)
        fast.weight.mul_(-2)  # in place
        torch.testing.assert_close(
            fast(x), F.conv2d(x, fast.weight, fast.bias, padding=1))
        fast.load_state_dict(conv.state_dict())  # copied in
        torch.testing.assert_close(fast(x), conv(x))


def test_use_fast_convs_keeps_the_state_dict_and_skips_other_convs():
    from mmcv.ops import DeformConv2dPack
    model = nn.Sequential(
        nn.Conv2d(3, 128, 1), nn.Conv2d(128, 128, 3, padding=1),
        nn.Conv2d(128, 128, 3, padding=1, padding_mode='reflect'),
        DeformConv2dPack(128, 128, 3, padding=1), nn.ConvTranspose2d(
            128, 8, 2, stride=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    done = use_fast_convs(model)
    assert done == dict(winograd=1, onednn_1x1=1)
    assert [type(m).__name__ for m in model] == [
        'InferenceConv2d', 'InferenceConv2d', 'Conv2d', 'DeformConv2dPack',
        'ConvTranspose2d']
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def reference_deconv(x, weight, bias, k):
    """A transposed convolution with kernel == stride == k written out:
    output pixel (k*i + a, k*j + b) is input pixel (i, j) times the weight
    tap (a, b) (no conv kernel)."""
    n, _, h, w = x.shape
    out = torch.zeros(n, weight.size(1), h * k, w * k, dtype=x.dtype)
    for a in range(k):
        for b in range(k):
            out[:, :, a::k, b::k] = torch.einsum('nchw,co->nohw', x,
                                                 weight[:, :, a, b])
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


# (batch, C_in, C_out, H, W, k, bias, channels_last)
DECONV_CASES = [
    (3, 5, 7, 4, 6, 2, True, True),
    (2, 4, 3, 5, 3, 2, False, True),
    (1, 6, 2, 3, 4, 3, True, False),
    (4, 3, 3, 1, 1, 2, True, False),
    (2, 8, 8, 14, 14, 2, True, True),
]


@pytest.mark.parametrize('case', DECONV_CASES, ids=str)
def test_pixel_deconv_equals_the_written_out_deconvolution(case):
    """Forward and all three gradients in float64 against autograd through
    the written-out reference, and in float32 against nn.ConvTranspose2d;
    channels_last inputs and weights give channels_last outputs and
    gradients."""
    n, ci, co, h, w, k, bias, cl = case
    fmt = torch.channels_last if cl else torch.contiguous_format
    g = torch.Generator().manual_seed(sum(case[:6]))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        deconv = nn.ConvTranspose2d(ci, co, k, stride=k, bias=bias).to(
            dtype=dtype, memory_format=fmt)
        plain = copy.deepcopy(deconv)
        assert use_pixel_deconvs(deconv) == 1
        assert type(deconv) is PixelDeconv2d
        x = torch.randn(n, ci, h, w, dtype=dtype, generator=g).to(
            memory_format=fmt).requires_grad_()
        up = torch.randn(n, co, h * k, w * k, dtype=dtype, generator=g)
        out = deconv(x)
        out.backward(up)
        if dtype == torch.float64:
            xr = x.detach().clone().requires_grad_()
            wr = deconv.weight.detach().clone().requires_grad_()
            br = (deconv.bias.detach().clone().requires_grad_()
                  if bias else None)
            ref = reference_deconv(xr, wr, br, k)
            ref.backward(up)
            expected = [ref, xr.grad, wr.grad] + ([br.grad] if bias else [])
        else:
            xr = x.detach().clone().requires_grad_()
            ref = plain(xr)
            ref.backward(up)
            expected = [ref, xr.grad, plain.weight.grad] + (
                [plain.bias.grad] if bias else [])
        got = [out, x.grad, deconv.weight.grad] + (
            [deconv.bias.grad] if bias else [])
        for name, a, b in zip(('output', 'input grad', 'weight grad',
                               'bias grad'), got, expected):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)
        if cl:
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert x.grad.is_contiguous(memory_format=torch.channels_last)
            assert deconv.weight.grad.stride() == deconv.weight.stride()


def test_pixel_deconv_output_takes_inplace_ops_and_falls_back():
    """mmdet's mask head applies an in-place ReLU to the upsampled map; an
    output_size, or a dtype without the GEMM path, takes
    nn.ConvTranspose2d's own forward."""
    deconv = nn.ConvTranspose2d(4, 3, 2, stride=2)
    plain = copy.deepcopy(deconv)
    use_pixel_deconvs(deconv)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    deconv(x).relu_().sum().backward()
    plain(xr).relu_().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(deconv.weight.grad, plain.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(deconv(x, output_size=[11, 11]),
                                   plain(x, output_size=[11, 11]))
        assert deconv(x[:0]).shape == (0, 3, 10, 10)


def test_use_pixel_deconvs_swaps_only_kernel_equal_stride_layers():
    from mmcv.cnn.bricks.wrappers import ConvTranspose2d as MMCVDeconv
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 4, 2, stride=2), MMCVDeconv(4, 4, 3, stride=3),
        nn.ConvTranspose2d(4, 4, 3, stride=2),
        nn.ConvTranspose2d(4, 4, 2, stride=2, padding=1),
        nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
        nn.Conv2d(4, 4, 2, stride=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_pixel_deconvs(model) == 2
    assert [type(m).__name__ for m in model] == [
        'PixelDeconv2d', 'PixelDeconv2d', 'ConvTranspose2d',
        'ConvTranspose2d', 'ConvTranspose2d', 'Conv2d']
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
