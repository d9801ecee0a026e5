"""The torchvision-backed mmcv ops against plain-PyTorch references."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

import bdd100k_ins_seg.plugin
from mmcv.ops import (DeformConv2d, ModulatedDeformConv2d, batched_nms,
                      deform_conv2d, modulated_deform_conv2d, nms, roi_align)

from bdd100k_ins_seg.plugin.ops.torchvision_ext import UnavailableOpError
from devices import CPU_AND_CUDA


def test_backend_is_reported():
    assert bdd100k_ins_seg.plugin.ops_backend() == 'torchvision'
    import mmcv
    assert mmcv._ext.backend == 'torchvision'


# ---------------------------------------------------------------- RoIAlign
def _bilinear(feat, y, x):
    """feat: (C, H, W); one sample point, mmcv/Detectron2 border rules."""
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return feat.new_zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feat[:, y_low, x_low] + hy * lx * feat[:, y_low, x_high]
            + ly * hx * feat[:, y_high, x_low] +
            ly * lx * feat[:, y_high, x_high])


def roi_align_reference(feats, rois, out_size, scale, sampling_ratio,
                        aligned):
    """Slow RoIAlign (avg): feats (N, C, H, W), rois (K, 5) -> (K, C, ph, pw)."""
    ph, pw = out_size
    out = feats.new_zeros(rois.size(0), feats.size(1), ph, pw)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1 = x1 * scale - offset, y1 * scale - offset
        x2, y2 = x2 * scale - offset, y2 * scale - offset
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(
            roi_h / ph)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(
            roi_w / pw)
        count = max(grid_h * grid_w, 1)
        for i in range(ph):
            for j in range(pw):
                acc = feats.new_zeros(feats.size(1))
                for iy in range(grid_h):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += _bilinear(feats[int(b)], y, x)
                out[k, :, i, j] = acc / count
    return out


def _random_rois(n, batch, height, width, scale, gen):
    """Boxes in image coordinates, some partly outside the feature map."""
    xy = torch.rand(n, 2, generator=gen) * torch.tensor(
        [width, height]) / scale * 1.2 - 2.0
    wh = torch.rand(n, 2, generator=gen) * torch.tensor(
        [width, height]) / scale * 0.7 + 0.3
    idx = torch.randint(0, batch, (n, 1), generator=gen).double()
    return torch.cat([idx, xy, xy + wh], dim=1).double()


@pytest.mark.parametrize('device', CPU_AND_CUDA)
@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_roi_align_matches_reference(aligned, sampling_ratio, device):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    scale = 0.5
    rois = _random_rois(12, 2, 9, 11, scale, gen)
    out = roi_align(feats.to(device), rois.to(device), (3, 4), scale,
                    sampling_ratio, 'avg', aligned)
    assert out.device.type == device
    out = out.cpu()
    ref = roi_align_reference(feats, rois, (3, 4), scale, sampling_ratio,
                              aligned)
    assert out.shape == (12, 3, 3, 4)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)
    # the boxes really reach outside the map, where samples are zero
    assert (rois[:, 1:3] < 0).any()


@pytest.mark.parametrize('device', CPU_AND_CUDA)
@pytest.mark.parametrize('aligned', [True, False])
def test_roi_align_gradcheck(device, aligned):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0, 0.6, 1.3, 4.2, 5.1], [0, 2.2, 0.4, 6.9, 3.3]],
                        dtype=torch.float64)
    feats = feats.to(device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, rois.to(device), (2, 2), 1.0, 2, 'avg',
                            aligned), (feats, ))


@pytest.fixture
def num_threads():
    """Set torch's intra-op threads for a test, restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize('aligned', [True, False])
def test_roi_align_images_on_threads_same_bits(num_threads, aligned):
    """With 2+ threads each image's RoIs run on a thread of their own; the
    output and the gradient are bit for bit those of one thread, and an
    image without RoIs gets a zero gradient."""
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(4, 3, 12, 15, generator=gen, dtype=torch.float64)
    rois = _random_rois(40, 3, 12, 15, 0.5, gen)  # image 3: no RoIs
    rois = rois[rois[:, 0].argsort(stable=True).flip(0)]  # not in order
    grad = torch.randn(40, 3, 2, 3, generator=gen, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        num_threads(threads)
        f = feats.clone().requires_grad_()
        out = roi_align(f, rois, (2, 3), 0.5, 0, 'avg', aligned)
        out.backward(grad)
        results.append((out.detach(), f.grad))
    (out1, grad1), (out2, grad2) = results
    assert torch.equal(out1, out2) and torch.equal(grad1, grad2)
    assert grad2[:3].abs().sum(dim=(1, 2, 3)).gt(0).all()
    assert torch.equal(grad2[3], torch.zeros_like(grad2[3]))
    ref = roi_align_reference(feats, rois, (2, 3), 0.5, 0, aligned)
    torch.testing.assert_close(out2, ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('channels_last', [False, True])
def test_roi_align_threads_record_no_graph(num_threads, channels_last):
    """The per-image threads run the kernels without autograd, as mmcv's
    Function runs them. Grad mode is per thread: with it on there, every
    image's result went into the shared output through autograd (whose
    internal asserts then failed now and then in training), and the
    channels-last kernel's ``out=`` matmuls refused a map that requires
    grad, as the FPN's does."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    num_threads(2)
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 8, 24, 40, generator=gen)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    feats.requires_grad_()
    rois = _random_rois(30, 3, 24, 40, 1.0, gen).float()
    out = roi_align(feats, rois, (7, 7), 1.0, 0, 'avg', True)
    assert type(out.grad_fn).__name__ == 'RoIAlignFunctionBackward'
    out.backward(torch.ones_like(out))
    assert feats.grad.abs().sum() > 0
    # The kernel as mmcv's Function calls it: grad off on this thread.
    output = feats.new_zeros(30, 8, 7, 7)
    with torch.no_grad():
        torchvision_ext.roi_align_forward(
            feats, rois, output, None, None, aligned_height=7,
            aligned_width=7, spatial_scale=1.0, sampling_ratio=0,
            pool_mode=1, aligned=True)
    assert not output.requires_grad and output.grad_fn is None
    assert torch.equal(output, out.detach())


def test_roi_align_splits_rois_by_image(num_threads):
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    rois = torch.tensor([[1, 0, 0, 4, 4], [0, 1, 1, 3, 3], [1, 2, 2, 5, 5.]])
    feats = torch.zeros(2, 1, 8, 8)
    num_threads(2)
    parts = torchvision_ext._split_by_image(feats, rois)
    assert [(b, idx.tolist()) for b, idx, _ in parts] == [(0, [1]),
                                                          (1, [0, 2])]
    assert all((boxes[:, 0] == 0).all() for _, _, boxes in parts)
    assert torch.equal(parts[1][2][:, 1:], rois[[0, 2], 1:])
    assert rois[0, 0] == 1  # the caller's RoIs are left alone
    num_threads(1)  # one thread: torchvision's single call
    assert torchvision_ext._split_by_image(feats, rois) is None


def test_roi_align_threads_in_a_forked_child(num_threads):
    """A forked process (a dataloader worker) inherits the parent's thread
    pool without its threads; RoIAlign there must still run (not hang)."""
    import os
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    num_threads(2)
    feats = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0, 1, 1, 5, 5.], [1, 0, 0, 4, 6]])
    expected = roi_align(feats, rois, (2, 2), 1.0, 0, 'avg', True)
    assert torchvision_ext._POOL is not None
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it computed the same
        try:
            torch.set_num_threads(2)
            out = roi_align(feats, rois, (2, 2), 1.0, 0, 'avg', True)
            os._exit(0 if torch.equal(out, expected) else 3)
        finally:
            os._exit(4)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError('RoIAlign hung in a forked child')


def test_roi_align_low_precision_falls_back_on_cpu():
    feats = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
    ref = roi_align(feats, rois, (2, 2), 1.0, 2, 'avg', True)
    for dtype in (torch.float16, torch.bfloat16):
        out = roi_align(feats.to(dtype), rois.to(dtype), (2, 2), 1.0, 2,
                        'avg', True)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_roi_align_max_mode_fails_with_op_name():
    with pytest.raises(UnavailableOpError, match='roi_align_forward'):
        roi_align(torch.randn(1, 1, 4, 4), torch.tensor([[0, 0, 0, 2.,
                                                           2.]]), (2, 2),
                  1.0, 0, 'max', True)


# --------------------------------------------------------------------- NMS
def nms_reference(boxes, scores, iou_thr, offset=0):
    order = scores.argsort(descending=True).tolist()
    keep = []
    area = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1]
                                                   + offset)
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0],
                                                    boxes[j, 0]) + offset
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1],
                                                    boxes[j, 1]) + offset
            inter = max(float(w), 0.0) * max(float(h), 0.0)
            iou = inter / (area[i] + area[j] - inter)
            if iou <= iou_thr:
                rest.append(j)
        order = rest
    return keep


@pytest.mark.parametrize('device', CPU_AND_CUDA)
@pytest.mark.parametrize('offset', [0, 1])
@pytest.mark.parametrize('iou_thr', [0.3, 0.7])
def test_nms_matches_reference(offset, iou_thr, device):
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(60, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=gen) * 20],
                      1)
    scores = torch.rand(60, generator=gen)
    dets, inds = nms(boxes.to(device), scores.to(device), iou_thr,
                     offset=offset)
    assert inds.device.type == device
    dets, inds = dets.cpu(), inds.cpu()
    assert inds.tolist() == nms_reference(boxes, scores, iou_thr, offset)
    torch.testing.assert_close(dets[:, 4], scores[inds])
    assert 0 < len(inds) < 60


def test_batched_nms_keeps_classes_apart():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1])
    dets, keep = batched_nms(boxes, scores, labels,
                             dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == [0, 2]
    empty, keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0, 5) and keep.numel() == 0


# ---------------------------------------------------- deformable convolution
def _dcn_inputs(gen, dtype=torch.float64, n=1, c=4, h=6, w=7, groups=1,
                deform_groups=1, k=3):
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(6, c // groups, k, k, generator=gen, dtype=dtype)
    offset = torch.randn(n, 2 * deform_groups * k * k, h, w, generator=gen,
                         dtype=dtype) * 0.7
    return x, weight, offset


def test_deform_conv_zero_offset_equals_conv2d():
    gen = torch.Generator().manual_seed(3)
    x, weight, offset = _dcn_inputs(gen, torch.float32, n=2, groups=2,
                                    deform_groups=2)
    out = deform_conv2d(x, offset.zero_(), weight, 1, 1, 1, 2, 2)
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=1, groups=2),
                               rtol=1e-5, atol=1e-5)
    # stride 2, dilation 2
    ref = F.conv2d(x, weight, stride=2, padding=1, dilation=2, groups=2)
    offset = torch.zeros(2, 36, *ref.shape[2:])
    out = deform_conv2d(x, offset, weight, 2, 1, 2, 2, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_deform_conv_integer_offset_equals_shifted_conv():
    """Offsets are (dy, dx) per kernel position: dy=1 samples one row down.

    The zero padding moves with the samples, so the reference shifts the
    padded input and convolves it without padding.
    """
    gen = torch.Generator().manual_seed(4)
    x, weight, offset = _dcn_inputs(gen, torch.float32)
    padded = F.pad(x, (1, 1, 1, 1))
    offset = torch.zeros_like(offset)
    offset[:, 0::2] = 1.0  # dy = +1 for every kernel position
    shifted = torch.zeros_like(padded)
    shifted[:, :, :-1] = padded[:, :, 1:]
    out = deform_conv2d(x, offset, weight, 1, 1)
    torch.testing.assert_close(out, F.conv2d(shifted, weight), rtol=1e-5,
                               atol=1e-5)
    offset = torch.zeros_like(offset)
    offset[:, 1::2] = -2.0  # dx = -2
    shifted = torch.zeros_like(padded)
    shifted[:, :, :, 2:] = padded[:, :, :, :-2]
    out = deform_conv2d(x, offset, weight, 1, 1)
    torch.testing.assert_close(out, F.conv2d(shifted, weight), rtol=1e-5,
                               atol=1e-5)
    # and the plain (unshifted) conv really differs
    assert not torch.allclose(out, F.conv2d(x, weight, padding=1))


# torchvision's CUDA deformable-conv backward sums the input gradient with
# atomicAdd, in whatever order the threads arrive: two backward passes may
# differ in the last bits, which gradcheck's default nondet_tol=0 calls
# "Backward is not reentrant". torchvision's own gradchecks of the op pass
# nondet_tol=1e-5; so do these (far below atol; the CPU kernel is
# deterministic and meets it trivially).
DCN_NONDET_TOL = 1e-5


@pytest.mark.parametrize('device', CPU_AND_CUDA)
def test_deform_conv_gradcheck(device):
    gen = torch.Generator().manual_seed(5)
    x, weight, offset = _dcn_inputs(gen, c=2, h=4, w=5)
    weight = weight[:, :2].contiguous()
    args = [t.to(device).requires_grad_() for t in (x, offset, weight)]
    assert torch.autograd.gradcheck(
        lambda a, o, w: deform_conv2d(a, o, w, 1, 1), args, atol=1e-5,
        nondet_tol=DCN_NONDET_TOL)


def test_dcn_gradcheck_tolerates_the_order_of_atomic_adds(monkeypatch):
    """CUDA's backward, emulated on the CPU: each pass's input gradient
    moves in its last bits, as sums in another order do. With gradcheck's
    default nondet_tol=0 that is "not reentrant"; DCN_NONDET_TOL passes
    it, as it must on a GPU."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    real = torchvision_ext._deform_backward
    noise = torch.Generator().manual_seed(0)

    def reordered(*args):
        g_in, *rest = real(*args)
        jitter = torch.rand(g_in.shape, generator=noise, dtype=g_in.dtype)
        return (g_in * (1 + 4e-16 * jitter), *rest)

    monkeypatch.setattr(torchvision_ext, '_deform_backward', reordered)
    gen = torch.Generator().manual_seed(5)
    x, weight, offset = _dcn_inputs(gen, c=2, h=4, w=5)
    weight = weight[:, :2].contiguous()

    def check(nondet_tol):  # the input's gradient: the one summed so
        return torch.autograd.gradcheck(
            lambda a: deform_conv2d(a, offset, weight, 1, 1),
            [x.requires_grad_()], atol=1e-5, nondet_tol=nondet_tol)

    with pytest.raises(RuntimeError, match='not reentrant'):
        check(0.0)
    assert check(DCN_NONDET_TOL)


def test_modulated_deform_conv_mask_one_equals_deform_conv():
    gen = torch.Generator().manual_seed(6)
    x, weight, offset = _dcn_inputs(gen, torch.float32)
    bias = torch.randn(6, generator=gen)
    mask = torch.ones(1, 9, 6, 7)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1)
    ref = deform_conv2d(x, offset, weight, 1, 1) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # mask 0.5 halves the bias-free response
    half = modulated_deform_conv2d(x, offset, mask * 0.5, weight, None, 1, 1)
    torch.testing.assert_close(half * 2, ref - bias.view(1, -1, 1, 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('device', CPU_AND_CUDA)
def test_modulated_deform_conv_gradcheck(device):
    gen = torch.Generator().manual_seed(7)
    x, weight, offset = _dcn_inputs(gen, c=2, h=4, w=5)
    weight = weight[:, :2].contiguous()
    mask = torch.rand(1, 9, 4, 5, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    args = [
        t.to(device).requires_grad_()
        for t in (x, offset, mask, weight, bias)
    ]
    assert torch.autograd.gradcheck(
        lambda a, o, m, w, b: modulated_deform_conv2d(a, o, m, w, b, 1, 1),
        args, atol=1e-5, nondet_tol=DCN_NONDET_TOL)


def _counting_backward(monkeypatch):
    """Count the full deformable backward passes of the stand-in."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    calls = []
    real = torchvision_ext._deform_backward

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision_ext, '_deform_backward', counted)
    return calls


def _dcn_step(x, offset, weight):
    leaves = [t.detach().clone().requires_grad_() for t in (x, offset,
                                                             weight)]
    out = deform_conv2d(*leaves, 1, 1)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [t.grad for t in leaves]


def test_deform_conv_backward_runs_once(monkeypatch):
    """mmcv asks for the input/offset gradients and then the weight
    gradient: one backward pass answers both, with the gradients of two
    (the second call computing its own)."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    gen = torch.Generator().manual_seed(8)
    x, weight, offset = _dcn_inputs(gen, torch.float32, n=2)
    calls = _counting_backward(monkeypatch)
    once = _dcn_step(x, offset, weight)
    assert len(calls) == 1
    monkeypatch.setattr(torchvision_ext, '_take_weight_grad',
                        lambda *args: None)
    twice = _dcn_step(x, offset, weight)
    assert len(calls) == 3
    for a, b in zip(once, twice):
        assert torch.equal(a, b)
    # only the weight's gradient: mmcv skips the first call
    calls.clear()
    leaf = weight.clone().requires_grad_()
    deform_conv2d(x, offset, leaf, 1, 1).sum().backward()
    assert len(calls) == 1 and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize('change', ['other tensors', 'changed in place',
                                    'other dilation', 'freed'])
def test_kept_weight_gradient_goes_to_its_own_call_only(monkeypatch,
                                                        change):
    """The weight gradient kept by deform_conv_backward_input reaches
    deform_conv_backward_parameters only for the same tensors, unchanged,
    and the same convolution; any other call computes its own (the right
    one)."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext as ext
    gen = torch.Generator().manual_seed(9)
    x, weight, offset = _dcn_inputs(gen, torch.float32)
    grad_out = torch.randn(1, 6, 6, 7, generator=gen)
    kw = dict(kW=3, kH=3, dW=1, dH=1, padW=1, padH=1, dilationW=1,
              dilationH=1, group=1, deformable_group=1)

    def weight_grad(inputs, **extra):
        grad = torch.zeros_like(weight)
        ext.deform_conv_backward_parameters(
            *inputs[:3], grad, None, None, scale=1, im2col_step=1,
            **dict(kw, **extra))
        return grad

    inputs = [x.clone(), offset.clone(), grad_out.clone()]
    ext.deform_conv_backward_input(
        *inputs, torch.zeros_like(x), torch.zeros_like(offset), weight,
        None, im2col_step=1, **kw)
    calls = _counting_backward(monkeypatch)
    extra = {}
    if change == 'other tensors':
        inputs = [x * 2, offset.clone(), grad_out.clone()]
    elif change == 'changed in place':
        inputs[2].mul_(-1)
    elif change == 'other dilation':  # the same tensors fit it too
        extra = dict(padW=2, padH=2, dilationW=2, dilationH=2)
    else:  # freed: the same values in new tensors
        inputs = [t.clone() for t in inputs]
        import gc
        gc.collect()
    got = weight_grad(inputs, **extra)
    assert len(calls) == 1  # computed its own
    fresh = torch.zeros_like(weight)
    monkeypatch.setattr(ext, '_take_weight_grad', lambda *args: None)
    ext.deform_conv_backward_parameters(
        *inputs, fresh, None, None, scale=1, im2col_step=1,
        **dict(kw, **extra))
    assert torch.equal(got, fresh)


def test_dcn_modules_train_step():
    """The modules mmdet builds for 'DCN' / 'DCNv2' learn their offsets."""
    torch.manual_seed(0)
    for module in (DeformConv2d(4, 4, 3, padding=1),
                   ModulatedDeformConv2d(4, 4, 3, padding=1)):
        x = torch.randn(1, 4, 6, 6)
        offset = torch.randn(1, 18, 6, 6, requires_grad=True)
        if isinstance(module, ModulatedDeformConv2d):
            out = module(x, offset, torch.rand(1, 9, 6, 6))
        else:
            out = module(x, offset)
        out.square().mean().backward()
        assert offset.grad.abs().sum() > 0
        assert module.weight.grad.abs().sum() > 0


# ------------------------------------------------------------ other mmcv ops
def test_unavailable_op_fails_only_when_called():
    from mmcv.ops import box_iou_rotated  # import works
    with pytest.raises(UnavailableOpError) as err:
        box_iou_rotated(torch.rand(2, 5), torch.rand(2, 5))
    assert 'box_iou_rotated' in str(err.value)
    assert 'mmcv' in str(err.value) and 'compiled' in str(err.value)


# A compiled mmcv._ext found by Python's path finder winning over the
# stand-in: tests/test_mmdet_api.py::test_a_compiled_mmcv_ext_wins.


# ------------------------------------------------- models built from mmdet
def _mmdet_model(tmp_path, backbone_diff=None):
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg_file = tmp_path / 'model.py'
    cfg_file.write_text(
        "_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'\n"
        'model = dict(roi_head=dict(bbox_head=dict(num_classes=8),'
        ' mask_head=dict(num_classes=8)))\n')
    cfg = Config.fromfile(str(cfg_file))
    cfg.model.backbone.init_cfg = None
    if backbone_diff:
        cfg.model.backbone.update(backbone_diff)
    return MODELS.build(cfg.model)


def _sample(h, w, with_gt):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmdet.structures.mask import BitmapMasks
    import numpy as np
    sample = DetDataSample(metainfo=dict(
        img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
        pad_shape=(h, w), batch_input_shape=(h, w)))
    if with_gt:
        gt = InstanceData()
        gt.bboxes = torch.tensor([[10.0, 12.0, 60.0, 50.0],
                                  [70.0, 20.0, 120.0, 90.0]])
        gt.labels = torch.tensor([2, 0])
        masks = np.zeros((2, h, w), dtype=np.uint8)
        masks[0, 12:50, 10:60] = 1
        masks[1, 20:90, 70:120] = 1
        gt.masks = BitmapMasks(masks, h, w)
        sample.gt_instances = gt
    return sample


@pytest.mark.parametrize('variant', ['mask_rcnn_r50', 'dcn_r50'])
def test_mask_rcnn_predict_and_train_step_on_cpu(tmp_path, variant):
    torch.manual_seed(0)
    diff = None
    if variant == 'dcn_r50':
        diff = dict(dcn=dict(type='DCN', deform_groups=1,
                             fallback_on_stride=False),
                    stage_with_dcn=(False, True, True, True))
    model = _mmdet_model(tmp_path, diff)
    if variant == 'dcn_r50':
        from mmcv.ops import DeformConv2dPack
        assert any(isinstance(m, DeformConv2dPack) for m in model.modules())
    h, w = 128, 160
    img = torch.randn(1, 3, h, w)
    model.eval()
    with torch.no_grad():
        pred = model.predict(img, [_sample(h, w, False)])[0].pred_instances
    assert pred.masks.shape[1:] == (h, w) and len(pred) <= 100
    assert int(pred.labels.max()) < 8 if len(pred) else True
    model.train()
    losses = model.loss(img, [_sample(h, w, True)])
    total, log_vars = model.parse_losses(losses)
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(log_vars)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 100 and all(torch.isfinite(g).all() for g in grads)
    if variant == 'dcn_r50':
        conv_offset = model.backbone.layer2[0].conv2.conv_offset.weight
        assert conv_offset.grad is not None


def _odd_rois(rois):
    """``rois`` plus boxes of zero size, wholly outside the map, larger
    than it and on its last row and column (a 13x17 map at scale 0.5)."""
    extra = torch.tensor([[0, 3., 3., 3., 3.],  # zero size
                          [1, -40., -30., -20., -10.],  # outside
                          [2, -8., -6., 60., 40.],  # larger than the map
                          [2, 30., 20., 33.9, 25.9],  # last row/column
                          [0, 33.5, 25.5, 34., 26.]], dtype=torch.float64)
    return torch.cat([rois, extra])


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 1, 2, 3])
@pytest.mark.parametrize('block', [None, 50])
@pytest.mark.parametrize('channels_last', [False, True])
def test_roi_align_forward_equals_torchvision_kernel(
        monkeypatch, aligned, sampling_ratio, block, channels_last):
    """The separable CPU forward against torchvision's CPU kernel, float64,
    the cases of the backward test below, NCHW and channels_last maps."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    if block:
        monkeypatch.setattr(torchvision_ext, '_BLOCK', block)
    gen = torch.Generator().manual_seed(11 + sampling_ratio)
    n, c, h, w = 3, 4, 13, 17
    rois = _odd_rois(_random_rois(60, n, h, w, 0.5, gen))
    feats = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    ours = torchvision_ext.roi_align_forward_cpu(feats, rois, (3, 2), 0.5,
                                                 sampling_ratio, aligned)
    theirs = torch.ops.torchvision.roi_align(feats, rois, 0.5, 3, 2,
                                             sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert theirs.abs().sum() > 0


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 1, 2, 3])
@pytest.mark.parametrize('block', [None, 50])
def test_roi_align_backward_equals_torchvision_kernel(
        monkeypatch, aligned, sampling_ratio, block):
    """The separable CPU backward against torchvision's own CPU backward
    kernel (per-sample weights, written independently), float64: boxes
    inside, across and wholly outside the map, degenerate (zero size) and
    larger than the map, several images, and RoI chunks (``block``)."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    if block:
        monkeypatch.setattr(torchvision_ext, '_BLOCK', block)
    gen = torch.Generator().manual_seed(7 + sampling_ratio)
    n, c, h, w = 3, 4, 13, 17
    rois = _odd_rois(_random_rois(60, n, h, w, 0.5, gen))
    grad = torch.randn(rois.size(0), c, 3, 2, generator=gen,
                       dtype=torch.float64)
    ours = torchvision_ext.roi_align_backward_cpu(
        grad, rois, 0.5, sampling_ratio, aligned, (n, c, h, w))
    theirs = torch.ops.torchvision._roi_align_backward(
        grad, rois, 0.5, 3, 2, n, c, h, w, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert theirs.abs().sum() > 0


def test_roi_align_forward_float32_and_no_rois():
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    gen = torch.Generator().manual_seed(4)
    rois = _random_rois(30, 2, 20, 24, 0.25, gen).float()
    feats = torch.randn(2, 8, 20, 24, generator=gen)
    ours = torchvision_ext.roi_align_forward_cpu(feats, rois, (7, 7), 0.25, 0,
                                                 True)
    theirs = torch.ops.torchvision.roi_align(feats, rois, 0.25, 7, 7, 0, True)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    empty = torchvision_ext.roi_align_forward_cpu(feats, rois[:0], (7, 7),
                                                  0.25, 0, True)
    assert empty.shape == (0, 8, 7, 7)


def test_roi_align_backward_float32_and_no_rois():
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    gen = torch.Generator().manual_seed(3)
    rois = _random_rois(30, 2, 20, 24, 0.25, gen).float()
    grad = torch.randn(30, 8, 7, 7, generator=gen)
    ours = torchvision_ext.roi_align_backward_cpu(grad, rois, 0.25, 0, True,
                                                  (2, 8, 20, 24))
    theirs = torch.ops.torchvision._roi_align_backward(
        grad, rois, 0.25, 7, 7, 2, 8, 20, 24, 0, True)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    empty = torchvision_ext.roi_align_backward_cpu(
        grad[:0], rois[:0], 0.25, 0, True, (2, 8, 20, 24))
    assert empty.shape == (2, 8, 20, 24) and not empty.any()


def test_roi_align_reads_channels_last_maps_in_place(monkeypatch):
    """mmcv's roi_align on a large channels_last map runs the separable
    forward (no NCHW copy); on an NCHW map, or a channels_last one under
    CL_FORWARD_MIN_ELEMENTS per image, torchvision's kernel; same numbers."""
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    assert torchvision_ext.CL_FORWARD_MIN_ELEMENTS == 1 << 19
    monkeypatch.setattr(torchvision_ext, 'CL_FORWARD_MIN_ELEMENTS',
                        6 * 12 * 15)
    calls = []
    separable = torchvision_ext.roi_align_forward_cpu

    def spy(*args, **kwargs):
        calls.append(1)
        return separable(*args, **kwargs)

    monkeypatch.setattr(torchvision_ext, 'roi_align_forward_cpu', spy)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 6, 12, 15, generator=gen)
    rois = _random_rois(20, 2, 12, 15, 0.5, gen).float()
    nchw = roi_align(feats, rois, (7, 7), 0.5, 0, 'avg', True)
    assert calls == []
    nhwc = roi_align(feats.contiguous(memory_format=torch.channels_last),
                     rois, (7, 7), 0.5, 0, 'avg', True)
    assert calls  # once, or once per image on 2+ threads
    torch.testing.assert_close(nhwc, nchw, rtol=1e-5, atol=1e-6)
    calls.clear()
    monkeypatch.setattr(torchvision_ext, 'CL_FORWARD_MIN_ELEMENTS',
                        6 * 12 * 15 + 1)
    small = roi_align(feats.contiguous(memory_format=torch.channels_last),
                      rois, (7, 7), 0.5, 0, 'avg', True)
    assert calls == []
    torch.testing.assert_close(small, nchw, rtol=1e-5, atol=1e-6)
