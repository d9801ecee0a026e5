"""A stand-in for mmcv's compiled ``mmcv._ext`` built on torchvision's ops.

``mmcv-lite`` ships mmcv's Python code without the compiled extension, and
``mmcv.ops`` loads every op eagerly, so ``mmdet.models`` cannot be imported
without *some* ``mmcv._ext``. This file is that module: the start-up hook
(``_bdd100k_ins_seg_hook``) loads it as ``mmcv._ext`` when mmcv's own
extension is absent, so it must import nothing but torch and torchvision.

Provided, with mmcv's semantics (CPU and CUDA tensors unless noted):

* ``roi_align_forward`` / ``roi_align_backward`` (avg pooling; on CPU the
  backward, and the forward on large channels_last maps, in separable form:
  :func:`roi_align_backward_cpu`, :func:`roi_align_forward_cpu`),
* ``nms`` (and therefore mmcv's ``batched_nms``),
* ``softnms`` (linear, gaussian and naive; CPU, as in mmcv),
* ``deform_conv_forward`` / ``deform_conv_backward_input`` /
  ``deform_conv_backward_parameters`` (``DCN``),
* ``modulated_deform_conv_forward`` / ``modulated_deform_conv_backward``
  (``DCNv2``).

The functions keep mmcv's calling convention: outputs are written in place
into the tensors mmcv pre-allocates. Every other kernel mmcv declares resolves
to a function that raises :class:`UnavailableOpError` when called, so
importing works and only a model that really needs another op fails, with a
message that names the op.
"""
import os
import threading
import weakref

import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d
from torchvision.ops import nms as tv_nms
from torchvision.ops import roi_align as tv_roi_align

MODULE_NAME = 'mmcv._ext'
backend = 'torchvision'


class UnavailableOpError(NotImplementedError):
    """Raised when a compiled mmcv op that torchvision lacks is called."""


def _unavailable(name):

    def op(*args, **kwargs):
        raise UnavailableOpError(
            f'mmcv op "{name}" is not available: this environment runs '
            'mmcv-lite with the torchvision-backed ops of bdd100k_ins_seg '
            '(RoIAlign avg, nms, DeformConv2d, ModulatedDeformConv2d). '
            'Install mmcv with compiled ops (pip install "mmcv>=2.0,<2.2" '
            'built for your torch/CUDA) to use it.')

    op.__name__ = name
    op.unavailable = True
    return op


_LOW_PRECISION = (torch.float16, torch.bfloat16)

# The separable forward on a channels_last map pays where torchvision's
# NCHW copy of the map costs most: from 2^19 elements per image map (one
# thread: 256 x 184 x 320 and 300 RoIs 7.6x torchvision's kernel with the
# copy, 256 x 46 x 80 2.0x, 64 x 96 x 160 2.2x; 64 x 48 x 80 and 40 RoIs,
# a level of the sample model in training, 0.68x; 256 x 23 x 40 0.4-1.2x).
CL_FORWARD_MIN_ELEMENTS = 1 << 19


def _call(fn, *args, **kwargs):
    """Call a torchvision kernel; where it has no float16/bfloat16 kernel
    (most CPU kernels), compute in float32 and cast the result back."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, NotImplementedError) as e:
        dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
        low = dtypes & set(_LOW_PRECISION)
        if not low or 'not implemented for' not in str(e):
            raise
    dtype = low.pop()

    def up(a):
        return a.float() if isinstance(a, torch.Tensor) and \
            a.dtype in _LOW_PRECISION else a

    def down(r):
        return r.to(dtype) if isinstance(r, torch.Tensor) and \
            r.is_floating_point() else r

    out = fn(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
    return tuple(down(r) for r in out) if isinstance(out, tuple) else down(out)


# --------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------
def roi_align_forward(input, rois, output, argmax_y, argmax_x, *,
                      aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    """mmcv ``roi_align_forward``: ``rois`` is (K, 5) ``(batch_idx, x1, y1,
    x2, y2)``; fills ``output`` (K, C, aligned_height, aligned_width)."""
    if pool_mode != 1:
        raise UnavailableOpError(
            'mmcv op "roi_align_forward" with pool_mode="max" is not '
            'available with the torchvision-backed ops (only "avg"). Install '
            'mmcv with compiled ops to use it.')
    rois = rois.to(input.dtype)

    def forward(feats, boxes):
        if (feats.device.type == 'cpu'
                and feats.dtype in (torch.float32, torch.float64)
                and feats.dim() == 4 and not feats.is_contiguous()
                and feats.is_contiguous(memory_format=torch.channels_last)
                and feats.numel() >= CL_FORWARD_MIN_ELEMENTS * len(feats)):
            return roi_align_forward_cpu(
                feats, boxes, (int(aligned_height), int(aligned_width)),
                float(spatial_scale), int(sampling_ratio), bool(aligned))
        return _call(tv_roi_align, feats, boxes,
                     (aligned_height, aligned_width),
                     spatial_scale=float(spatial_scale),
                     sampling_ratio=int(sampling_ratio),
                     aligned=bool(aligned))

    parts = _split_by_image(input, rois)
    if parts is None:
        output.copy_(forward(input, rois))
        return

    def job(part):
        b, idx, boxes = part
        output[idx] = forward(input[b:b + 1], boxes)

    _run_parallel(job, parts)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, *,
                       aligned_height, aligned_width, spatial_scale,
                       sampling_ratio, pool_mode, aligned):
    """mmcv ``roi_align_backward``: fills ``grad_input`` (N, C, H, W)."""
    if pool_mode != 1:
        raise UnavailableOpError(
            'mmcv op "roi_align_backward" with pool_mode="max" is not '
            'available with the torchvision-backed ops (only "avg").')
    n, c, h, w = grad_input.shape
    rois = rois.to(grad_output.dtype)

    def backward(grad, boxes, images):
        if grad.device.type == 'cpu' and grad.dtype in (torch.float32,
                                                         torch.float64):
            return roi_align_backward_cpu(
                grad, boxes, float(spatial_scale), int(sampling_ratio),
                bool(aligned), (images, c, h, w))
        return _call(torch.ops.torchvision._roi_align_backward, grad, boxes,
                     float(spatial_scale), int(aligned_height),
                     int(aligned_width), images, c, h, w,
                     int(sampling_ratio), bool(aligned))

    parts = _split_by_image(grad_input, rois)
    if parts is None:
        grad_input.copy_(backward(grad_output, rois, n))
        return
    grad_input.zero_()  # images without RoIs get no gradient

    def job(part):
        b, idx, boxes = part
        grad_input[b:b + 1] = backward(grad_output[idx], boxes, 1)

    _run_parallel(job, parts)


def _axis_weights(lo, hi, pooled, scale, sampling_ratio, aligned, length):
    """RoIAlign's bilinear weights along one axis (rows or columns).

    ``lo``, ``hi``: (R, ) box edges in image coordinates. Returns
    ``(weights (R, pooled, window), first (R, ), grid (R, ), extent (R, ))``:
    entry ``[r, p, k]`` is the summed weight that pixel ``first[r] + k``
    gets from the samples of bin ``p`` along this axis (zero for ``k >=
    extent[r]``), and ``grid[r]`` the number of samples per bin. The rules
    are torchvision's and mmcv's (same dtype and order of operations for
    the sample positions): a sample outside [-1, length] gives nothing,
    one in [-1, 0) counts as 0, one at or past ``length - 1`` reads the
    last pixel only. ``length`` is an int, or a (R, ) tensor of one
    length per box (the rows and the columns of the RoIs in one call).
    """
    offset = 0.5 if aligned else 0.0
    start = lo * scale - offset
    size = hi * scale - offset - start
    if not aligned:
        size = size.clamp(min=1.0)
    bin_size = size / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(size, sampling_ratio, dtype=torch.long)
    else:
        grid = torch.ceil(size / pooled).long()
    most = max(int(grid.max()), 1) if grid.numel() else 1
    p = torch.arange(pooled, dtype=lo.dtype, device=lo.device).view(1, -1, 1)
    k = torch.arange(most, dtype=lo.dtype, device=lo.device).view(1, 1, -1)
    grid_f = grid.to(lo.dtype).clamp(min=1).view(-1, 1, 1)
    if isinstance(length, torch.Tensor):
        length = length.view(-1, 1, 1)
    pos = (start.view(-1, 1, 1) + p * bin_size.view(-1, 1, 1) +
           (k + 0.5) * bin_size.view(-1, 1, 1) / grid_f)
    valid = (k < grid.view(-1, 1, 1)) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    last = low >= length - 1
    low = torch.where(last, torch.zeros_like(low) + (length - 1), low)
    pos = torch.where(last, low.to(pos.dtype), pos)
    high = torch.where(last, low, low + 1)
    frac = pos - low.to(pos.dtype)
    w_low = (1 - frac) * valid
    w_high = frac * valid
    big = torch.iinfo(torch.long).max
    if valid.any():
        first = low.masked_fill(~valid, big).flatten(1).amin(1)
        first = torch.where(first == big, torch.zeros_like(first), first)
        stop = high.masked_fill(~valid, -1).flatten(1).amax(1)
        extent = (stop - first + 1).clamp(min=1)
        window = int(extent.max())
    else:
        first = torch.zeros_like(grid)
        extent = torch.ones_like(grid)
        window = 1
    rel_low = (low - first.view(-1, 1, 1)).clamp(0, window - 1)
    rel_high = (high - first.view(-1, 1, 1)).clamp(0, window - 1)
    weights = lo.new_zeros(lo.size(0), pooled, window)
    weights.scatter_add_(2, rel_low, w_low)
    weights.scatter_add_(2, rel_high, w_high)
    return weights, first, grid, extent


def _roi_weights(rois, pooled, spatial_scale, sampling_ratio, aligned, h,
                 w):
    """:func:`_axis_weights` of the rows and of the columns of ``rois`` (K,
    5), ``(weights, first, extent)`` each, and each RoI's sample count
    (at least 1), in the RoIs' dtype. Each RoI's entries depend on that RoI
    only; the windows are as wide as the widest RoI's along either axis."""
    k = rois.size(0)
    if pooled[0] == pooled[1]:
        # rows and columns in one pass: half the small ops
        length = torch.full((2 * k, ), h, dtype=torch.long,
                            device=rois.device)
        length[k:] = w
        wyx, first, grid, extent = _axis_weights(
            torch.cat([rois[:, 2], rois[:, 1]]),
            torch.cat([rois[:, 4], rois[:, 3]]), pooled[0], spatial_scale,
            sampling_ratio, aligned, length)
        wy, y0, gy, ey = wyx[:k], first[:k], grid[:k], extent[:k]
        wx, x0, gx, ex = wyx[k:], first[k:], grid[k:], extent[k:]
    else:
        wy, y0, gy, ey = _axis_weights(rois[:, 2], rois[:, 4], pooled[0],
                                       spatial_scale, sampling_ratio,
                                       aligned, h)
        wx, x0, gx, ex = _axis_weights(rois[:, 1], rois[:, 3], pooled[1],
                                       spatial_scale, sampling_ratio,
                                       aligned, w)
    count = (gy * gx).clamp(min=1).to(rois.dtype)
    return (wy, y0, ey), (wx, x0, ex), count


# Elements of a (RoIs, C, rows, columns) gradient window block: larger
# blocks are cut into RoI chunks.
_BLOCK = 1 << 23


def roi_align_forward_cpu(input, rois, pooled, spatial_scale,
                          sampling_ratio, aligned):
    """RoIAlign (avg) on the CPU: (K, C, ph, pw) from ``input`` (N, C, H, W)
    and ``rois`` (K, 5), torchvision's and mmcv's sampling rules.

    The separable form of :func:`roi_align_backward_cpu`'s doc: per RoI,
    ``Wy @ window @ Wx^T / count``, two small matmuls that read the RoI's
    window of the channels-last map in place (a (rows, columns x C) matrix
    with the map's row stride). torchvision's kernel copies a channels_last
    map to NCHW on every call and samples channel by channel; for NCHW maps
    it is used as it is (``roi_align_forward``). Each image on its own, as
    the backward.
    """
    out = input.new_zeros(rois.size(0), input.size(1), *pooled)
    for b, idx in _images_of(rois):
        out[idx] = _image_forward(input[b], rois[idx], pooled, spatial_scale,
                                  sampling_ratio, aligned)
    return out


def _image_forward(feat, rois, pooled, spatial_scale, sampling_ratio,
                   aligned):
    c, h, w = feat.shape
    ph, pw = pooled
    fmap = feat.permute(1, 2, 0)  # (H, W, C)
    if not fmap.is_contiguous():
        fmap = fmap.contiguous()
    (wy, y0, ey), (wx, x0, ex), count = _roi_weights(
        rois, pooled, spatial_scale, sampling_ratio, aligned, h, w)
    out = feat.new_empty(rois.size(0), ph, pw, c)
    for r, (y, x, hr, wr) in enumerate(zip(y0.tolist(), x0.tolist(),
                                           ey.tolist(), ex.tolist())):
        # the window of sampled pixels lies inside the map (the weights'
        # first pixel and extent come from clamped sample positions)
        window = fmap[y:y + hr, x:x + wr].reshape(hr, wr * c)
        part = torch.mm(wy[r, :, :hr], window).view(ph, wr, c)
        torch.matmul(wx[r, :, :wr], part, out=out[r])
    return out.permute(0, 3, 1, 2) / count.view(-1, 1, 1, 1)


def roi_align_backward_cpu(grad, rois, spatial_scale, sampling_ratio,
                           aligned, shape):
    """RoIAlign's (avg) input gradient on the CPU: (N, C, H, W) for
    ``shape`` from ``grad`` (K, C, ph, pw) and ``rois`` (K, 5).

    A RoI's output is separable: bin (i, j) averages bilinear samples on a
    grid, and each sample's weight on pixel (y, x) is a row weight times a
    column weight (inside/outside tests included), so
    ``out[c] = Wy @ F[c] @ Wx^T / count`` with the (ph, H) and (pw, W)
    matrices of :func:`_axis_weights`, nonzero on the RoI's window only.
    The gradient is the transpose, ``Wy^T @ grad[c] @ Wx / count``: two
    small batched matmuls per RoI window, then one scatter-add of the
    windows into the map. torchvision's CPU kernel recomputes every
    sample's weights for every channel: ~3x this one's time (125 RoIs of
    64 channels on a 48x80 map, one thread: 21 ms against 6.5 ms), ~4x its
    own forward's.

    Each image is computed on its own (its windows sized to its RoIs), so
    splitting the RoIs by image, on threads, gives the same bits.
    """
    n, c, h, w = shape
    ph, pw = grad.shape[2:]
    out = grad.new_zeros(n, h * w, c)
    (wy, y0, ey), (wx, x0, ex), count = _roi_weights(
        rois, (ph, pw), spatial_scale, sampling_ratio, aligned, h, w)
    # (K, ph, pw, C), each RoI's gradient over its count of samples
    grad = (grad / count.view(-1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()
    images = _images_of(rois)
    for b, idx in images:
        if len(images) == 1:
            idx = slice(None)
        _image_backward(out[b], grad[idx], (wy[idx], y0[idx], ey[idx]),
                        (wx[idx], x0[idx], ex[idx]), h, w)
    # NCHW values in channels-last strides: the caller copies them into its
    # gradient tensor, one pass
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _image_backward(out, grad, rows, cols, h, w):
    """Adds the gradient of one image's RoIs into ``out`` (H * W, C):
    ``grad`` (R, ph, pw, C) already divided by the sample counts, ``rows``
    and ``cols`` the RoIs' :func:`_roi_weights`."""
    (wy, y0, ey), (wx, x0, ex) = rows, cols
    ph, pw, c = grad.shape[1:]
    # the windows as wide as this image's widest RoI, whatever the others
    hn, wn = int(ey.max()), int(ex.max())
    wy, wx = wy[:, :, :hn], wx[:, :, :wn]
    rows = (y0.view(-1, 1) + torch.arange(hn, device=grad.device)).clamp(
        max=h - 1)
    cols = (x0.view(-1, 1) + torch.arange(wn, device=grad.device)).clamp(
        max=w - 1)
    # Pixels past the map's edge in a window have zero weight; clamped,
    # they add zeros to the edge.
    index = (rows.view(-1, hn, 1) * w + cols.view(-1, 1, wn)).view(-1)
    k = grad.size(0)
    step = max(1, _BLOCK // max(1, c * hn * wn))
    for r0 in range(0, k, step):
        r1 = min(k, r0 + step)
        m = r1 - r0
        # columns: (wn, pw) @ (pw, C) for every RoI and bin row
        cols_t = wx[r0:r1].transpose(1, 2).unsqueeze(1).expand(
            m, ph, wn, pw).reshape(m * ph, wn, pw)
        part = torch.bmm(cols_t, grad[r0:r1].reshape(m * ph, pw, c))
        # rows: (hn, ph) @ (ph, wn * C) for every RoI -> (hn, wn, C)
        part = torch.bmm(wy[r0:r1].transpose(1, 2),
                         part.view(m, ph, wn * c))
        out.index_add_(0, index[r0 * hn * wn:r1 * hn * wn],
                       part.view(-1, c))


# torchvision's RoIAlign CPU kernels run on one thread; in a training step
# of a small model on 2 cores the other core idles through them (~10% of
# the step). Images write disjoint parts of the output and of the input's
# gradient, and a RoI's order among its image's RoIs is kept, so running
# the images on parallel threads (torchvision's ops release the GIL) gives
# the same bits.
_POOL = None


def _split_by_image(tensor, rois):
    """``[(image, roi indices, rois with batch index 0), ...]`` for the
    images of ``rois``, or None where one thread does as well (CUDA, one
    thread or one image)."""
    if (tensor.device.type != 'cpu' or torch.get_num_threads() < 2
            or tensor.size(0) < 2 or rois.size(0) < 2):
        return None
    parts = []
    for b, idx in _images_of(rois):
        boxes = rois[idx]
        boxes[:, 0] = 0
        parts.append((b, idx, boxes))
    return parts if len(parts) > 1 else None


def _images_of(rois):
    """``[(image, indices of its RoIs in order), ...]`` for the images that
    ``rois`` (K, 5) name."""
    batch = rois[:, 0].long()
    return [(b, (batch == b).nonzero().squeeze(1))
            for b in torch.unique(batch).tolist()]


def _forget_pool():
    # A forked child (a dataloader worker) inherits the pool without its
    # threads: it starts its own if it needs one.
    global _POOL
    _POOL = None


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_pool)


def _run_parallel(job, parts):
    """``job(part)`` for every part, on up to torch's intra-op thread
    count of threads.

    The jobs are kernels filling their outputs in place, and they run
    without autograd. Grad mode is per thread: the caller's (an autograd
    Function, where it is off) does not reach the pool's threads, which
    would otherwise record a graph for every part, writing into the shared
    output at once (autograd's internal asserts fail), or refuse the
    ``out=`` matmuls."""
    global _POOL
    threads = min(torch.get_num_threads(), len(parts))
    if _POOL is None or _POOL._max_workers < threads:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix='roi_align')

    def run(part):
        with torch.no_grad():
            job(part)

    for future in [_POOL.submit(run, part) for part in parts]:
        future.result()


# --------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------
def nms(bboxes, scores, *, iou_threshold, offset):
    """mmcv ``nms``: indices of kept boxes, highest score first.

    ``offset=1`` is the legacy "+1 pixel" box convention; it equals plain IoU
    on boxes whose far corner is moved out by one pixel.
    """
    if bboxes.numel() == 0:
        return bboxes.new_zeros(0, dtype=torch.long)
    if offset:
        bboxes = torch.cat([bboxes[:, :2], bboxes[:, 2:4] + offset], dim=1)
    return _call(tv_nms, bboxes, scores, float(iou_threshold))


def softnms(boxes, scores, dets, *, iou_threshold, sigma, min_score, method,
            offset):
    """mmcv ``softnms`` (Soft-NMS, Bodla et al. 2017) with mmcv's CPU
    kernel's order of operations.

    Args:
        boxes: (N, 4) x1, y1, x2, y2. scores: (N, ).
        dets: (N, 5) output; row k gets the k-th selected box and its score
            as decayed when it was selected.
        method: 0 naive (drop IoU >= iou_threshold), 1 linear (scale by
            1 - IoU where IoU >= iou_threshold), 2 gaussian (scale by
            exp(-IoU^2 / sigma)).
        min_score: a box whose decayed score falls below it is dropped.
        offset: 0, or 1 for the legacy "+1" box width.

    Returns:
        (K, ) int64 indices into ``boxes`` in selection order.

    Each step selects the highest score among the boxes left (the first one
    in the working order on ties), decays the others against it and drops
    those below ``min_score`` by moving the last box into their place, as
    mmcv does; the decay is vectorised over the boxes left, and the
    dropping is the same permutation done at once.
    """
    n = boxes.size(0)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    dtype = boxes.dtype if boxes.dtype == torch.float64 else torch.float32
    work = torch.cat([boxes.detach().cpu().to(dtype),
                      scores.detach().cpu().to(dtype)[:, None]], dim=1)
    areas = (work[:, 2] - work[:, 0] + offset) * (work[:, 3] - work[:, 1] +
                                                  offset)
    inds = torch.arange(n)
    iou_threshold = torch.tensor(iou_threshold, dtype=dtype)
    sigma = torch.tensor(sigma, dtype=dtype)
    min_score = torch.tensor(min_score, dtype=dtype)
    out = torch.empty_like(work)
    count, i = n, 0
    while i < count:
        top = i + int(torch.argmax(work[i:count, 4]))
        if top != i:
            swap = torch.tensor([top, i])
            pair = torch.tensor([i, top])
            work[pair] = work[swap]
            areas[pair] = areas[swap]
            inds[pair] = inds[swap]
        out[i] = work[i]
        rest = work[i + 1:count]
        if len(rest):
            x1, y1, x2, y2 = work[i, :4]
            w = (torch.minimum(x2, rest[:, 2]) - torch.maximum(x1, rest[:, 0])
                 + offset).clamp(min=0)
            h = (torch.minimum(y2, rest[:, 3]) - torch.maximum(y1, rest[:, 1])
                 + offset).clamp(min=0)
            inter = w * h
            ovr = inter / (areas[i] + areas[i + 1:count] - inter)
            if method == 0:
                weight = torch.where(ovr >= iou_threshold, 0.0, 1.0).to(dtype)
            elif method == 1:
                weight = torch.where(ovr >= iou_threshold, 1 - ovr,
                                     torch.ones_like(ovr))
            else:
                weight = torch.exp(-(ovr * ovr) / sigma)
            rest[:, 4] *= weight
            keep = rest[:, 4] >= min_score
            kept = int(keep.sum())
            if kept < len(rest):
                # mmcv moves the last box into each dropped slot, scanning
                # forwards: the dropped slots among the first `kept` get the
                # boxes kept behind them, last one first.
                order = torch.arange(kept)
                holes = (~keep[:kept]).nonzero().flatten()
                donors = keep[kept:].nonzero().flatten().flip(0) + kept
                order[holes] = donors
                order += i + 1
                stop = i + 1 + kept
                work[i + 1:stop] = work[order]
                areas[i + 1:stop] = areas[order]
                inds[i + 1:stop] = inds[order]
                count = stop
        i += 1
    dets[:count].copy_(out[:count])
    return inds[:count]


# --------------------------------------------------------------------------
# Deformable convolution (DCN, no bias) and modulated (DCNv2)
# --------------------------------------------------------------------------
def _check_groups(input, weight, group):
    if input.size(1) != weight.size(1) * group:
        raise ValueError(
            f'deform conv: input has {input.size(1)} channels but weight '
            f'{tuple(weight.shape)} with groups={group} expects '
            f'{weight.size(1) * group}')


def deform_conv_forward(input, weight, offset, output, columns, ones, *, kW,
                        kH, dW, dH, padW, padH, dilationW, dilationH, group,
                        deformable_group, im2col_step):
    _check_groups(input, weight, group)
    out = _call(tv_deform_conv2d, input, offset, weight, None,
                stride=(dH, dW), padding=(padH, padW),
                dilation=(dilationH, dilationW))
    output.copy_(out)


def sampled_inside(offset, height, width, kernel, stride, padding,
                   dilation):
    """Which sampling points of a deform conv lie inside (-1, H) x (-1, W).

    Args:
        offset: (N, 2 * G * kh * kw, Ho, Wo), mmcv's layout: for deform group
            g and tap (i, j), channel ``2 * (g * kh * kw + i * kw + j)`` is
            the row offset and the next one the column offset.
        height, width: the input's spatial size.
        kernel, stride, padding, dilation: (h, w) pairs.

    Returns:
        bool tensor shaped like ``offset``: True for both channels of a point
        whose position ``(oy * stride - pad + i * dilation + dy, ...)``,
        computed in the offset's dtype as mmcv's kernels do, is inside.
    """
    n, channels, out_h, out_w = offset.shape
    kh, kw = kernel
    taps = kh * kw
    off = offset.view(n, channels // (2 * taps), taps, 2, out_h, out_w)
    dev = offset.device
    base_y = (torch.arange(out_h, device=dev) * stride[0] - padding[0]).view(
        1, out_h, 1) + (torch.arange(kh, device=dev) * dilation[0]
                        ).repeat_interleave(kw).view(taps, 1, 1)
    base_x = (torch.arange(out_w, device=dev) * stride[1] - padding[1]).view(
        1, 1, out_w) + (torch.arange(kw, device=dev) * dilation[1]
                        ).repeat(kh).view(taps, 1, 1)
    y = off[:, :, :, 0] + base_y.to(offset.dtype)
    x = off[:, :, :, 1] + base_x.to(offset.dtype)
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    return inside.unsqueeze(3).expand_as(off).reshape(offset.shape)


def _deform_backward(grad_output, input, weight, offset, mask, bias, stride,
                     padding, dilation, group, deformable_group):
    """All gradients of the deform conv, with mmcv's rules.

    torchvision's kernels give mmcv's forward and input, weight, bias and
    mask gradients. Its offset gradient differs where a sampling point lies
    on the border of the valid region (a coordinate exactly -1, e.g. every
    first-row/column tap of a zero offset with padding 1): mmcv's
    ``get_coordinate_weight`` returns 0 for any point outside
    (-1, H) x (-1, W), torchvision still differentiates the bilinear weight
    of the one valid neighbour. Those entries are zeroed here.

    Returns (grad_input, grad_weight, grad_offset, grad_mask, grad_bias).
    """
    use_mask = mask is not None
    if mask is None:  # torchvision's placeholder when use_mask is False
        mask = input.new_zeros(input.size(0), 1)
    if bias is None or bias.numel() == 0:
        bias = input.new_zeros(weight.size(0))
    g_in, g_w, g_off, g_mask, g_b = _call(
        torch.ops.torchvision._deform_conv2d_backward, grad_output, input,
        weight, offset, mask, bias, stride[0], stride[1], padding[0],
        padding[1], dilation[0], dilation[1], group, deformable_group,
        use_mask)
    inside = sampled_inside(offset, input.size(2), input.size(3),
                            tuple(weight.shape[2:]), stride, padding,
                            dilation)
    g_off = g_off.masked_fill(~inside, 0)
    return g_in, g_w, g_off, g_mask, g_b


# mmcv's DeformConv2dFunction.backward makes two calls with the same
# tensors: deform_conv_backward_input (input and offset gradients), then
# deform_conv_backward_parameters (weight gradient). torchvision's backward
# gives all three at once, so the first call keeps its weight gradient for
# the second instead of running the whole backward again (forward +
# backward took 1.9x torchvision's time with two backward passes). What is
# kept is keyed by the three tensors themselves (weak references: a freed
# tensor matches nothing, a new one at its address neither), their version
# counters (an in-place change in between matches nothing) and every
# argument of the convolution; the second call takes it (once), and a call
# without a matching entry computes its own. One entry per thread: both
# calls run in the backward of one autograd node, on one thread.
_KEPT_WEIGHT_GRAD = threading.local()


def _backward_key(input, offset, grad_output, args):
    return ([weakref.ref(t) for t in (input, offset, grad_output)],
            [t._version for t in (input, offset, grad_output)], args)


def _keep_weight_grad(input, offset, grad_output, args, grad_weight):
    _KEPT_WEIGHT_GRAD.entry = (_backward_key(input, offset, grad_output,
                                             args), grad_weight)


def _take_weight_grad(input, offset, grad_output, args):
    """The weight gradient kept for exactly these tensors and arguments
    (removed), or None."""
    entry = getattr(_KEPT_WEIGHT_GRAD, 'entry', None)
    if entry is None:
        return None
    _KEPT_WEIGHT_GRAD.entry = None
    (refs, versions, kept_args), grad_weight = entry
    tensors = (input, offset, grad_output)
    if (kept_args == args
            and all(r() is t for r, t in zip(refs, tensors))
            and versions == [t._version for t in tensors]):
        return grad_weight
    return None


def deform_conv_backward_input(input, offset, grad_output, grad_input,
                               grad_offset, weight, columns, *, kW, kH, dW,
                               dH, padW, padH, dilationW, dilationH, group,
                               deformable_group, im2col_step):
    g_in, g_w, g_off, _, _ = _deform_backward(
        grad_output, input, weight, offset, None, None, (dH, dW),
        (padH, padW), (dilationH, dilationW), group, deformable_group)
    grad_input.copy_(g_in)
    grad_offset.copy_(g_off)
    _keep_weight_grad(input, offset, grad_output,
                      (kW, kH, dW, dH, padW, padH, dilationW, dilationH,
                       group, deformable_group), g_w)


def deform_conv_backward_parameters(input, offset, grad_output, grad_weight,
                                    columns, ones, *, kW, kH, dW, dH, padW,
                                    padH, dilationW, dilationH, group,
                                    deformable_group, scale, im2col_step):
    g_w = _take_weight_grad(input, offset, grad_output,
                            (kW, kH, dW, dH, padW, padH, dilationW,
                             dilationH, group, deformable_group))
    if g_w is None or g_w.shape != grad_weight.shape:
        # mmcv does not pass the weight to this kernel; a bias-free deform
        # conv is linear in its weight, so the weight gradient does not
        # depend on it.
        _, g_w, _, _, _ = _deform_backward(
            grad_output, input, torch.zeros_like(grad_weight), offset, None,
            None, (dH, dW), (padH, padW), (dilationH, dilationW), group,
            deformable_group)
    grad_weight.add_(g_w, alpha=scale)


def modulated_deform_conv_forward(input, weight, bias, ones, offset, mask,
                                  output, columns, *, kernel_h, kernel_w,
                                  stride_h, stride_w, pad_h, pad_w,
                                  dilation_h, dilation_w, group,
                                  deformable_group, with_bias):
    _check_groups(input, weight, group)
    out = _call(tv_deform_conv2d, input, offset, weight,
                bias if with_bias else None, stride=(stride_h, stride_w),
                padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w),
                mask=mask)
    output.copy_(out)


def modulated_deform_conv_backward(input, weight, bias, ones, offset, mask,
                                   columns, grad_input, grad_weight,
                                   grad_bias, grad_offset, grad_mask,
                                   grad_output, *, kernel_h, kernel_w,
                                   stride_h, stride_w, pad_h, pad_w,
                                   dilation_h, dilation_w, group,
                                   deformable_group, with_bias):
    g_in, g_w, g_off, g_mask, g_b = _deform_backward(
        grad_output, input, weight, offset, mask,
        bias if with_bias else None, (stride_h, stride_w), (pad_h, pad_w),
        (dilation_h, dilation_w), group, deformable_group)
    grad_input.copy_(g_in)
    grad_weight.copy_(g_w)
    grad_offset.copy_(g_off)
    grad_mask.copy_(g_mask)
    if with_bias:
        grad_bias.copy_(g_b)


IMPLEMENTED = {
    'roi_align_forward': roi_align_forward,
    'roi_align_backward': roi_align_backward,
    'nms': nms,
    'softnms': softnms,
    'deform_conv_forward': deform_conv_forward,
    'deform_conv_backward_input': deform_conv_backward_input,
    'deform_conv_backward_parameters': deform_conv_backward_parameters,
    'modulated_deform_conv_forward': modulated_deform_conv_forward,
    'modulated_deform_conv_backward': modulated_deform_conv_backward,
}


def __getattr__(name):
    """Ops this module lacks resolve to functions that raise when called."""
    if name.startswith('__'):
        raise AttributeError(name)
    op = _unavailable(name)
    globals()[name] = op
    return op
