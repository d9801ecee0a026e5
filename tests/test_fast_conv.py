"""bdd100k_ins_seg.inference.fast_conv: Winograd F(2x2, 3x3) and the oneDNN 1x1
path against direct convolutions, and InferenceConv2d's dispatch."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bdd100k_ins_seg.inference import fast_conv
from bdd100k_ins_seg.inference.fast_conv import (
    InferenceConv2d,
    use_fast_convs,
    winograd_conv3x3,
    winograd_weight)


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


def test_min_channels_by_cpu():
    """Winograd from 128 channels on AVX2 (and unknown) CPUs, from 512 on
    AVX-512 ones, where oneDNN's direct convolution is as fast up to 256;
    the module's rule is the one of the CPU it runs on."""
    assert fast_conv.min_channels_for('AVX2') == 128
    assert fast_conv.min_channels_for('DEFAULT') == 128
    assert fast_conv.min_channels_for('') == 128
    assert fast_conv.min_channels_for('AVX512') == 512
    # a fresh interpreter (the suite pins the AVX2 rule in this one)
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable, '-c', 'import torch\n'
         'from bdd100k_ins_seg.inference import fast_conv as f\n'
         'from torch import nn\n'
         'print(torch.backends.cpu.get_cpu_capability(), f.MIN_CHANNELS, '
         'f.winograd_pays(nn.Conv2d(256, 256, 3, padding=1)))'],
        capture_output=True, text=True, check=True).stdout.split()
    capability, channels, pays = out[0], int(out[1]), out[2] == 'True'
    assert channels == fast_conv.min_channels_for(capability)
    assert pays == (channels <= 256)
