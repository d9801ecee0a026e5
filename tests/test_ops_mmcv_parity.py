"""The stand-in ops against references written from mmcv's kernels.

mmcv's CPU kernels (``deform_conv.cpp``, ``modulated_deform_conv.cpp``,
``nms.cpp``) define what the published models were trained with. The
references below follow their rules, independently of torchvision:

* deformable convolution: a sampling point outside (-1, H) x (-1, W) reads
  0; inside, bilinear interpolation with out-of-image corners reading 0; the
  offset gradient is mmcv's ``get_coordinate_weight`` (0 outside that open
  region, also on its border), written out explicitly below;
* soft-NMS: a transcription of mmcv's sequential CPU loop in float32.
"""
import numpy as np
import pytest
import torch

from mmcv.ops import (batched_nms, deform_conv2d, modulated_deform_conv2d,
                      soft_nms)

from bdd100k_ins_seg.plugin.ops import torchvision_ext
from devices import CPU_AND_CUDA


# ------------------------------------------------ deformable convolution
def _out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _points(offset, kh, kw, stride, padding, dilation):
    """Sampling positions (N, G, T, Ho, Wo) in the offset's dtype."""
    n, c, ho, wo = offset.shape
    taps = kh * kw
    off = offset.reshape(n, c // (2 * taps), taps, 2, ho, wo)
    ys, xs = [], []
    for i in range(kh):
        for j in range(kw):
            ys.append([[oy * stride[0] - padding[0] + i * dilation[0]] * wo
                       for oy in range(ho)])
            xs.append([[ox * stride[1] - padding[1] + j * dilation[1]
                        for ox in range(wo)]] * ho)
    base_y = torch.tensor(ys, dtype=offset.dtype, device=offset.device)
    base_x = torch.tensor(xs, dtype=offset.dtype, device=offset.device)
    return off[:, :, :, 0] + base_y, off[:, :, :, 1] + base_x


def _corners(image, y, x):
    """The four neighbours of each point and their validity.

    image: (N, C, H, W); y, x: (N, C, T, Ho, Wo). Returns a dict keyed by
    (row, col) in {'low', 'high'}^2 of (value, floor parts) where an
    out-of-image corner reads 0 (mmcv's per-corner checks).
    """
    n, c, h, w = image.shape
    y_low, x_low = torch.floor(y), torch.floor(x)
    flat = image.reshape(n, c, h * w)
    values = {}
    for rname, rows in (('low', y_low), ('high', y_low + 1)):
        for cname, cols in (('low', x_low), ('high', x_low + 1)):
            valid = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & \
                (cols <= w - 1)
            index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).long()
            got = flat.gather(2, index.reshape(n, c, -1)).reshape(y.shape)
            values[rname, cname] = torch.where(valid, got,
                                               torch.zeros_like(got))
    return values, y_low, x_low


def _inside(y, x, h, w):
    return (y > -1) & (y < h) & (x > -1) & (x < w)


def _sample(image, y, x):
    """mmcv's ``deformable_im2col_bilinear`` for every point."""
    h, w = image.shape[2:]
    v, y_low, x_low = _corners(image, y, x)
    lh, lw = y - y_low, x - x_low
    hh, hw = 1 - lh, 1 - lw
    val = (hh * hw * v['low', 'low'] + hh * lw * v['low', 'high'] +
           lh * hw * v['high', 'low'] + lh * lw * v['high', 'high'])
    return torch.where(_inside(y, x, h, w), val, torch.zeros_like(val))


def _coordinate_weights(image, y, x):
    """mmcv's ``get_coordinate_weight`` for bp_dir 0 (row) and 1 (col)."""
    h, w = image.shape[2:]
    v, y_low, x_low = _corners(image, y, x)
    wy = (-(x_low + 1 - x) * v['low', 'low'] - (x - x_low) * v['low', 'high']
          + (x_low + 1 - x) * v['high', 'low'] +
          (x - x_low) * v['high', 'high'])
    wx = (-(y_low + 1 - y) * v['low', 'low'] + (y_low + 1 - y) *
          v['low', 'high'] - (y - y_low) * v['high', 'low'] +
          (y - y_low) * v['high', 'high'])
    inside = _inside(y, x, h, w)
    zero = torch.zeros_like(wy)
    return torch.where(inside, wy, zero), torch.where(inside, wx, zero)


def _per_channel(t, channels):
    """(N, G, ...) per deform group -> (N, C, ...) per input channel."""
    return t.repeat_interleave(channels // t.size(1), dim=1)


def dcn_reference(x, offset, weight, bias=None, mask=None, stride=(1, 1),
                  padding=(0, 0), dilation=(1, 1), groups=1):
    """Forward and the offset gradient for ``grad_out`` (returned as a
    function), following mmcv's kernels. Differentiable w.r.t. x, weight,
    bias and mask (those gradients have no border special case)."""
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    taps = kh * kw
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    py, px = _points(offset.detach(), kh, kw, stride, padding, dilation)
    deform_groups = py.size(1)
    y, x_ = _per_channel(py, c), _per_channel(px, c)
    cols = _sample(x, y, x_)  # (N, C, T, Ho, Wo)
    m = None
    if mask is not None:
        m = _per_channel(mask.reshape(n, deform_groups, taps, ho, wo), c)
        cols = cols * m
    cols = cols.reshape(n, groups, c // groups, taps, ho, wo)
    wg = weight.reshape(groups, out_c // groups, c // groups, taps)
    out = torch.einsum('ngctyx,goct->ngoyx', cols, wg).reshape(
        n, out_c, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)

    def offset_grad(grad_out):
        g = grad_out.reshape(n, groups, out_c // groups, ho, wo)
        # d out / d column, per input channel and tap
        col_grad = torch.einsum('ngoyx,goct->ngctyx', g, wg.detach()).reshape(
            n, c, taps, ho, wo)
        if m is not None:
            col_grad = col_grad * m.detach()
        wy, wx = _coordinate_weights(x.detach(), y, x_)
        gy = (col_grad * wy).reshape(n, deform_groups, c // deform_groups,
                                     taps, ho, wo).sum(2)
        gx = (col_grad * wx).reshape(n, deform_groups, c // deform_groups,
                                     taps, ho, wo).sum(2)
        return torch.stack([gy, gx], dim=3).reshape(offset.shape)

    return out, offset_grad


# (c, h, w, kernel, stride, padding, dilation, groups, deform_groups)
CASES = {
    'pad1': (4, 6, 7, 3, 1, 1, 1, 1, 1),
    'stride2_dil2': (4, 9, 8, 3, 2, 2, 2, 1, 1),
    'deform_groups2_groups2': (4, 6, 7, 3, 1, 1, 1, 2, 2),
    'rect_kernel_pad0': (2, 5, 6, (3, 2), (1, 2), 0, 1, 1, 2),
}


def _case_tensors(case, dtype, device, modulated, offsets):
    c, h, w, k, s, p, d, groups, dgroups = CASES[case]
    kh, kw = (k, k) if isinstance(k, int) else k
    s = (s, s) if isinstance(s, int) else s
    gen = torch.Generator().manual_seed(list(CASES).index(case))
    n, out_c = 2, 4
    ho, wo = _out_size(h, kh, s[0], p, d), _out_size(w, kw, s[1], p, d)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(out_c, c // groups, kh, kw, generator=gen,
                         dtype=torch.float64)
    shape = (n, 2 * dgroups * kh * kw, ho, wo)
    if offsets == 'zero':
        offset = torch.zeros(shape, dtype=torch.float64)
    else:
        # Random offsets, a quarter of them multiples of 0.5 (points exactly
        # on the border -1 / H and on pixel centres), some far outside.
        offset = torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5
        exact = torch.rand(shape, generator=gen) < 0.25
        offset[exact] = torch.round(offset[exact] * 2) / 2
        far = torch.rand(shape, generator=gen) < 0.05
        offset[far] = offset[far] * 4
    extra = {}
    if modulated:
        extra['mask'] = torch.rand(n, dgroups * kh * kw, ho, wo,
                                   generator=gen, dtype=torch.float64)
        extra['bias'] = torch.randn(out_c, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(n, out_c, ho, wo, generator=gen,
                           dtype=torch.float64)
    conv = dict(stride=s, padding=(p, p), dilation=(d, d), groups=groups,
                deform_groups=dgroups)
    tensors = dict(x=x, offset=offset, weight=weight, **extra)
    tensors = {k_: v.to(dtype=dtype, device=device) for k_, v in
               tensors.items()}
    return tensors, grad_out.to(dtype=dtype, device=device), conv


def _run_mmcv(t, conv, grad_out, modulated):
    t = {k: v.clone().requires_grad_() for k, v in t.items()}
    if modulated:
        out = modulated_deform_conv2d(
            t['x'], t['offset'], t['mask'], t['weight'], t['bias'],
            conv['stride'], conv['padding'], conv['dilation'],
            conv['groups'], conv['deform_groups'])
    else:
        out = deform_conv2d(t['x'], t['offset'], t['weight'], conv['stride'],
                            conv['padding'], conv['dilation'],
                            conv['groups'], conv['deform_groups'])
    out.backward(grad_out)
    return out.detach(), {k: v.grad for k, v in t.items()}


def _run_reference(t, conv, grad_out):
    t = {k: v.detach().double().cpu().requires_grad_() for k, v in t.items()}
    out, offset_grad = dcn_reference(
        t['x'], t['offset'], t['weight'], t.get('bias'), t.get('mask'),
        conv['stride'], conv['padding'], conv['dilation'], conv['groups'])
    g = grad_out.double().cpu()
    out.backward(g)
    grads = {k: v.grad for k, v in t.items() if k != 'offset'}
    grads['offset'] = offset_grad(g)
    return out.detach(), grads


@pytest.mark.parametrize('device', CPU_AND_CUDA)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('modulated', [False, True], ids=['DCN', 'DCNv2'])
@pytest.mark.parametrize('offsets', ['zero', 'random'])
@pytest.mark.parametrize('case', list(CASES))
def test_deform_conv_forward_and_gradients_equal_mmcv_rules(
        case, offsets, modulated, dtype, device):
    t, grad_out, conv = _case_tensors(case, dtype, device, modulated,
                                      offsets)
    out, grads = _run_mmcv(t, conv, grad_out, modulated)
    ref_out, ref_grads = _run_reference(t, conv, grad_out)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else \
        dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double().cpu(), ref_out, **tol)
    assert set(grads) == set(ref_grads) == set(t)
    for name in t:
        torch.testing.assert_close(grads[name].double().cpu(),
                                   ref_grads[name], **tol,
                                   msg=lambda m: f'grad of {name}: {m}')


def test_border_case_is_exercised():
    """Zero offsets with padding 1 put the first row/column taps exactly on
    -1: mmcv's offset gradient there is 0, torchvision's plain backward is
    not, so the test above compares something that differs."""
    t, grad_out, conv = _case_tensors('pad1', torch.float64, 'cpu', True,
                                      'zero')
    ref = _run_reference(t, conv, grad_out)[1]['offset']
    raw = torch.ops.torchvision._deform_conv2d_backward(
        grad_out, t['x'], t['weight'], t['offset'], t['mask'], t['bias'],
        1, 1, 1, 1, 1, 1, 1, 1, True)[2]
    differs = ~torch.isclose(raw, ref, rtol=1e-9, atol=1e-9)
    assert differs.any()
    # ... only at the border taps, where the reference is 0
    assert (ref[differs] == 0).all()
    inside = torchvision_ext.sampled_inside(
        t['offset'], 6, 7, (3, 3), (1, 1), (1, 1), (1, 1))
    assert not inside[differs].any() and inside.float().mean() > 0.5


# ------------------------------------------------------------- soft-NMS
def soft_nms_reference(boxes, scores, iou_threshold, sigma, min_score,
                       method, offset):
    """mmcv's ``softnms_cpu``, transcribed: float32 scalars, selection by
    the first maximum, dropped boxes replaced by the last one."""
    f = np.float32
    x1, y1, x2, y2 = [list(map(f, boxes[:, k])) for k in range(4)]
    sc = list(map(f, scores))
    areas = [(x2[k] - x1[k] + f(offset)) * (y2[k] - y1[k] + f(offset))
             for k in range(len(sc))]
    inds = list(range(len(sc)))
    thr, sig, low = f(iou_threshold), f(sigma), f(min_score)
    dets = []
    n = len(sc)
    i = 0
    while i < n:
        top = i
        for pos in range(i + 1, n):
            if sc[top] < sc[pos]:
                top = pos
        for arr in (x1, y1, x2, y2, sc, areas, inds):
            arr[i], arr[top] = arr[top], arr[i]
        dets.append([x1[i], y1[i], x2[i], y2[i], sc[i]])
        pos = i + 1
        while pos < n:
            w = max(f(0), min(x2[i], x2[pos]) - max(x1[i], x1[pos]) + f(offset))
            h = max(f(0), min(y2[i], y2[pos]) - max(y1[i], y1[pos]) + f(offset))
            inter = w * h
            with np.errstate(invalid='ignore'):  # empty boxes: 0 / 0
                ovr = inter / (areas[i] + areas[pos] - inter)
            weight = f(1)
            if method == 'naive' and ovr >= thr:
                weight = f(0)
            elif method == 'linear' and ovr >= thr:
                weight = f(1) - ovr
            elif method == 'gaussian':
                weight = np.exp(-(ovr * ovr) / sig)
            sc[pos] = f(sc[pos] * weight)
            if sc[pos] < low:
                for arr in (x1, y1, x2, y2, sc, areas, inds):
                    arr[pos] = arr[n - 1]
                n -= 1
                continue
            pos += 1
        i += 1
    return np.array(dets, dtype=np.float32).reshape(-1, 5), inds[:n]


def _clustered_boxes(gen, n, with_ties):
    centres = torch.rand(6, 2, generator=gen) * 60
    pick = torch.randint(0, 6, (n, ), generator=gen)
    xy = centres[pick] + torch.randn(n, 2, generator=gen) * 4
    wh = 8 + torch.rand(n, 2, generator=gen) * 12
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=gen)
    if with_ties:
        scores = torch.round(scores * 4) / 4  # many equal scores, some 0
        boxes[5] = boxes[4]  # identical boxes
    return boxes.float(), scores.float()


@pytest.mark.parametrize('method', ['linear', 'gaussian', 'naive'])
@pytest.mark.parametrize('offset', [0, 1])
@pytest.mark.parametrize('params', [
    dict(iou_threshold=0.3, sigma=0.5, min_score=1e-3),
    dict(iou_threshold=0.6, sigma=0.1, min_score=0.2),
])
@pytest.mark.parametrize('with_ties', [False, True])
def test_soft_nms_matches_mmcv_definition(method, offset, params,
                                          with_ties):
    gen = torch.Generator().manual_seed(11 + offset + 2 * with_ties)
    boxes, scores = _clustered_boxes(gen, 80, with_ties)
    dets, inds = soft_nms(boxes, scores, method=method, offset=offset,
                          **params)
    ref_dets, ref_inds = soft_nms_reference(
        boxes.numpy(), scores.numpy(), method=method, offset=offset,
        **params)
    assert inds.tolist() == ref_inds
    assert dets.shape == (len(ref_inds), 5) and dets.dtype == torch.float32
    np.testing.assert_allclose(dets.numpy(), ref_dets, rtol=1e-6,
                               atol=1e-7)
    # boxes are the inputs' boxes, scores only ever decay
    assert torch.equal(dets[:, :4], boxes[inds])
    assert (dets[:, 4] <= scores[inds]).all()
    # the test data makes the rules matter
    assert 0 < len(inds) < 80
    if method != 'naive' and params['min_score'] < 0.1:
        assert (dets[:, 4] < scores[inds]).any()


def test_soft_nms_numpy_input_and_docstring_example():
    boxes = np.array([[4., 3., 5., 3.], [4., 3., 5., 4.], [3., 1., 3., 1.],
                      [3., 1., 3., 1.], [3., 1., 3., 1.], [3., 1., 3., 1.]],
                     dtype=np.float32)
    scores = np.array([0.9, 0.9, 0.5, 0.5, 0.4, 0.0], dtype=np.float32)
    dets, inds = soft_nms(boxes, scores, 0.6, sigma=0.5)
    assert isinstance(dets, np.ndarray) and len(inds) == len(dets) == 5
    ref_dets, ref_inds = soft_nms_reference(boxes, scores, 0.6, 0.5, 1e-3,
                                            'linear', 0)
    assert inds.tolist() == ref_inds
    np.testing.assert_allclose(dets, ref_dets, rtol=1e-6)
    empty_dets, empty_inds = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert empty_dets.shape == (0, 5) and empty_inds.numel() == 0


def test_batched_nms_with_soft_nms_keeps_classes_apart():
    gen = torch.Generator().manual_seed(12)
    boxes, scores = _clustered_boxes(gen, 40, False)
    labels = torch.randint(0, 3, (40, ), generator=gen)
    cfg = dict(type='soft_nms', iou_threshold=0.5, min_score=0.05)
    dets, keep = batched_nms(boxes, scores, labels, cfg)
    # per class, the same boxes and decayed scores as soft-NMS on that class
    for label in range(3):
        idx = (labels == label).nonzero().flatten()
        ref_dets, ref_inds = soft_nms_reference(
            boxes[idx].numpy(), scores[idx].numpy(), 0.5, 0.5, 0.05,
            'linear', 0)
        mine = labels[keep] == label
        assert sorted(keep[mine].tolist()) == sorted(idx[ref_inds].tolist())
        got = dict(zip(keep[mine].tolist(), dets[mine, 4].tolist()))
        for k, row in zip(idx[ref_inds].tolist(), ref_dets):
            assert got[k] == pytest.approx(float(row[4]), rel=1e-6)
    assert (dets[:-1, 4] >= dets[1:, 4]).all()  # sorted by decayed score


def test_cascade_test_step_with_soft_nms(monkeypatch):
    """mmdet users add soft-NMS to Cascade test configs: the zoo's Cascade
    model predicts with it (CPU, random weights, fewer proposals)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from pathlib import Path
    config = Path(__file__).resolve().parent.parent / 'configs' / \
        'ins_seg' / 'cascade_mask_rcnn_r50_fpn_1x_ins_seg_bdd100k.py'
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.depth = 18  # smaller backbone: same heads and NMS
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    cfg.model.roi_head.mask_head.num_convs = 1  # the mask head costs most
    cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=30)
    cfg.model.test_cfg.rcnn.update(
        max_per_img=150, nms=dict(type='soft_nms', iou_threshold=0.5,
                                 min_score=0.05))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    for module in model.modules():  # uniform class scores (> score_thr)
        if hasattr(module, 'fc_cls'):
            torch.nn.init.zeros_(module.fc_cls.weight)
            torch.nn.init.zeros_(module.fc_cls.bias)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    sample = DetDataSample(metainfo=dict(
        img_id=0, img_shape=(64, 96), ori_shape=(64, 96),
        scale_factor=(1.0, 1.0)))
    calls = []
    softnms = torchvision_ext.softnms

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return softnms(*args, **kwargs)

    import mmcv
    monkeypatch.setattr(mmcv._ext, 'softnms', spy)
    model.eval()
    with torch.no_grad():
        [result] = model.test_step(dict(inputs=[image],
                                        data_samples=[sample]))
    pred = result.pred_instances
    # the stand-in's soft-NMS ran (linear, min_score 0.05)
    assert calls and all(c['method'] == 1 and
                         c['min_score'] == pytest.approx(0.05) for c in calls)
    assert 30 < len(pred) <= 150
    assert (pred.scores[:-1] >= pred.scores[1:]).all()
    # soft-NMS decayed scores below the uniform 1/9 of the raw heads
    assert (pred.scores < 1 / 9 - 1e-4).any() and (pred.scores >= 0.05).all()
    assert pred.masks.shape[1:] == (64, 96)
