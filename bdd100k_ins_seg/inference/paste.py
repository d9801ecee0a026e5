"""Mask predictions pasted straight into the bitmask canvas.

mmdet's ``FCNMaskHead`` turns each instance's 28x28 mask probabilities into a
full-resolution mask (``_do_paste_mask``: ``grid_sample`` over the box,
then ``>= mask_thr_binary``): an (N, H, W) stack per image, 92 MB for 100
detections at 1280x720, before any writer runs. The bitmask needs only one
(H, W) map in which the higher score wins. Here the probabilities stay
unpasted (:class:`BoxMasks`, switched on per model by
:func:`enable_box_masks`) and :func:`paint` samples each mask only inside
its box widened by one pixel (the window mmdet's CPU path samples and the
writer paints), on the model's device, in ascending score order. The grid
and the sampling are mmdet's own operations on the same values, so every
pixel equals what the full paste followed by
:func:`bdd100k_ins_seg.formats.bitmask.encode_bitmask` gives.

One exception, on purpose: a box of exactly zero width or height paints
nothing, on every device. mmdet divides by the box's side there, gets
infinite grid coordinates and replaces them by 0, the mask's centre: its
CPU path (one box at a time, in the box's window) then paints the mask's
centre line over up to 3 pixels across and the box's length along, and
its CUDA path (whole images) over the whole image across, in front of
every lower-scored instance of the one-map bitmask. A box a hundredth of a
pixel wide paints nothing on either path (its samples fall outside the
mask), so nothing is the limit the paste tends to, and the official
evaluator skips a prediction without pixels, as if it had not been made
(its ``score.json`` label stays). :meth:`BoxMasks.full` (the COCO numbers,
drawing) leaves such a mask empty too.
"""
import types
from typing import List, Sequence, Tuple

import numpy as np
import torch

#: Boxes narrower than this (or not finite) are pasted by mmdet's own
#: function in its CPU window; their extent decides nothing else.
_MIN_SIDE = 1e-2


def zero_size(boxes: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which of the (N, 4) boxes are finite with exactly zero
    width or height (in float32, the sides mmdet divides by); their masks
    are empty (see the module doc)."""
    boxes = boxes.detach().to(torch.float32)
    finite = torch.isfinite(boxes).all(dim=1)
    return finite & ((boxes[:, 2] - boxes[:, 0] == 0)
                     | (boxes[:, 3] - boxes[:, 1] == 0))


class BoxMasks:
    """N instances' mask probabilities in their boxes, not pasted yet.

    Args:
        probs: (N, 1, h, w) probabilities of each instance's own class.
        boxes: (N, 4) float boxes (x1, y1, x2, y2) in image pixels (the
            rescaled boxes mmdet pastes with).
        image_size: (H, W) of the image.
        threshold: ``mask_thr_binary`` (a pixel is in the mask if its
            sampled probability is >= threshold).

    Behaves like a sequence of N masks for ``InstanceData`` (``len``,
    indexing by int/slice/index or bool tensor, ``cat``); :meth:`full`
    pastes the (N, H, W) bool masks exactly as mmdet would.
    """

    def __init__(self, probs: torch.Tensor, boxes: torch.Tensor,
                 image_size: Tuple[int, int], threshold: float) -> None:
        self.probs = probs
        self.boxes = boxes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.threshold = float(threshold)

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (len(self), ) + self.image_size

    @property
    def device(self) -> torch.device:
        return self.probs.device

    def __getitem__(self, item) -> 'BoxMasks':
        if isinstance(item, int):
            item = slice(item, item + 1 if item != -1 else None)
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if isinstance(item, torch.Tensor):
            item = item.to(self.probs.device)
        return BoxMasks(self.probs[item], self.boxes[item], self.image_size,
                        self.threshold)

    @staticmethod
    def cat(parts: Sequence['BoxMasks']) -> 'BoxMasks':
        first = parts[0]
        return BoxMasks(torch.cat([p.probs for p in parts]),
                        torch.cat([p.boxes for p in parts]),
                        first.image_size, first.threshold)

    def cpu(self) -> 'BoxMasks':
        return BoxMasks(self.probs.cpu(), self.boxes.cpu(), self.image_size,
                        self.threshold)

    def full(self) -> torch.Tensor:
        """(N, H, W) bool masks, mmdet's CPU paste (one mask at a time);
        empty for a box of zero width or height (see the module doc)."""
        from mmdet.models.roi_heads.mask_heads.fcn_mask_head import \
            _do_paste_mask
        height, width = self.image_size
        out = torch.zeros((len(self), height, width), dtype=torch.bool,
                          device=self.device)
        empty = zero_size(self.boxes).tolist()
        for i in range(len(self)):
            if empty[i]:
                continue
            chunk, where = _do_paste_mask(self.probs[i:i + 1],
                                          self.boxes[i:i + 1], height, width,
                                          skip_empty=True)
            out[(slice(i, i + 1), ) + where] = chunk >= self.threshold
        return out


def _grids(boxes: torch.Tensor, windows: np.ndarray):
    """Normalised sampling coordinates of every window, all masks at once.

    ``_do_paste_mask``'s float32 operations in mmdet's order (pixel centre,
    minus the box start, over the box size, times 2, minus 1), so each value
    is bit-identical to mmdet's at that pixel. Returns (N, max width) x and
    (N, max height) y; row i is valid for its window's width/height.
    """
    device = boxes.device
    bx0, by0, bx1, by1 = torch.split(boxes, 1, dim=1)  # each Nx1
    starts = torch.from_numpy(windows[:, :2]).to(device)
    max_w = max(int((windows[:, 2] - windows[:, 0]).max()), 0)
    max_h = max(int((windows[:, 3] - windows[:, 1]).max()), 0)
    img_x = (torch.arange(max_w, device=device)[None] + starts[:, :1]).to(
        torch.float32) + 0.5
    img_y = (torch.arange(max_h, device=device)[None] + starts[:, 1:]).to(
        torch.float32) + 0.5
    img_x = (img_x - bx0) / (bx1 - bx0) * 2 - 1
    img_y = (img_y - by0) / (by1 - by0) * 2 - 1
    return img_x, img_y


def _packed_rgba(rank: int, category: int) -> int:
    """The RGBA bitmask pixel of an instance as one little-endian int32:
    R = category, G = 0, B = rank >> 8, A = rank & 0xFF."""
    value = category | (rank >> 8) << 16 | (rank & 0xFF) << 24
    return value - (1 << 32) if value >= 1 << 31 else value


def paint(masks: BoxMasks, scores, categories=None
          ) -> Tuple[torch.Tensor, np.ndarray]:
    """Paste every mask into one (H, W) map of score ranks.

    Args:
        masks: the instances' :class:`BoxMasks`.
        scores: (N,) scores (tensor or array).
        categories: optional (N,) category ids 1..8: then each pixel holds
            the whole RGBA bitmask pixel (see :func:`_packed_rgba`), so the
            map viewed as (H, W, 4) bytes on a little-endian machine is the
            bitmask.

    Returns:
        ``(ranks, order)``: (H, W) int32 tensor on the masks' device, 0 =
        background, r = the instance ``order[r - 1]`` (``order`` sorts the
        scores descending, stable: index 1 is the best score, ties keep the
        input order); instances are painted in ascending score order, so
        the higher score wins where masks overlap. This is
        :func:`bdd100k_ins_seg.formats.bitmask.encode_bitmask`'s rule.
    """
    height, width = masks.image_size
    if hasattr(scores, 'detach'):
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(masks)
    if len(scores) != n:
        raise ValueError(f'{n} masks but {len(scores)} scores')
    order = np.argsort(-scores, kind='stable')
    ranks = torch.zeros((height, width), dtype=torch.int32,
                        device=masks.device)
    if n == 0:
        return ranks, order
    boxes = masks.boxes.detach().to(torch.float32)
    boxes_cpu = boxes.cpu().numpy().astype(np.float64)
    probs = masks.probs.detach().to(torch.float32)
    threshold = masks.threshold
    with np.errstate(invalid='ignore'):
        regular = (np.isfinite(boxes_cpu).all(axis=1)
                   & (boxes_cpu[:, 2] - boxes_cpu[:, 0] > _MIN_SIDE)
                   & (boxes_cpu[:, 3] - boxes_cpu[:, 1] > _MIN_SIDE))
    windows = np.zeros((n, 4), dtype=np.int64)
    if regular.any():
        b = boxes_cpu[regular]
        windows[regular] = np.stack([
            np.maximum(np.floor(b[:, 0]) - 1, 0),
            np.maximum(np.floor(b[:, 1]) - 1, 0),
            np.minimum(np.ceil(b[:, 2]) + 1, width),
            np.minimum(np.ceil(b[:, 3]) + 1, height)], 1).astype(np.int64)
    grid_x, grid_y = _grids(boxes, windows)
    sampler = torch.grid_sampler  # F.grid_sample without its checks:
    if categories is None:
        values = list(range(1, n + 1))
    else:
        categories = np.asarray(categories).reshape(-1)
        values = [_packed_rgba(rank + 1, int(categories[order[rank]]))
                  for rank in range(n)]
    for rank in range(n - 1, -1, -1):  # ascending score: best painted last
        i = int(order[rank])
        if not regular[i]:
            # Degenerate box: mmdet's own paste, in its own window (none
            # for a box of zero width or height: BoxMasks.full).
            ranks.masked_fill_(masks[i:i + 1].full()[0], values[rank])
            continue
        x0, y0, x1, y1 = windows[i].tolist()
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        grid = torch.stack([grid_x[i, :w].expand(h, w),
                            grid_y[i, :h, None].expand(h, w)], dim=2)
        # bilinear (0), zeros padding (0), align_corners=False, as mmdet
        sampled = sampler(probs[i:i + 1], grid[None], 0, 0, False)
        ranks[y0:y1, x0:x1].masked_fill_(
            sampled[0, 0] >= threshold, values[rank])
    return ranks, order


def _predict_by_feat_single(self, mask_preds, bboxes, labels, img_meta,
                            rcnn_test_cfg, rescale=False,
                            activate_map=False):
    """``FCNMaskHead._predict_by_feat_single`` up to the paste: the same
    activation, class selection and box rescaling, then :class:`BoxMasks`
    instead of an (N, H, W) stack."""
    scale_factor = bboxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
    img_h, img_w = img_meta['ori_shape'][:2]
    if not activate_map:
        mask_preds = mask_preds.sigmoid()
    else:  # already probabilities (Cascade's stage average, TTA)
        mask_preds = bboxes.new_tensor(mask_preds)
    if rescale:  # in place, as mmdet: results.bboxes are the pasted boxes
        bboxes /= scale_factor
    else:
        img_h = int(np.round(img_h * scale_factor[0, 1].item()))
        img_w = int(np.round(img_w * scale_factor[0, 0].item()))
    threshold = rcnn_test_cfg.mask_thr_binary
    if threshold < 0:
        raise ValueError('mask_thr_binary < 0 (soft masks) has no bitmask')
    n = len(mask_preds)
    if not self.class_agnostic:
        mask_preds = mask_preds[range(n), labels][:, None]
    return BoxMasks(mask_preds, bboxes, (img_h, img_w), threshold)


def enable_box_masks(model: torch.nn.Module) -> List[str]:
    """Make every ``FCNMaskHead`` of ``model`` return :class:`BoxMasks`.

    Works for Mask R-CNN, Cascade Mask R-CNN (the stage average goes through
    the last head) and HRNet models; other mask heads are left alone.
    Returns the names of the switched heads.
    """
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    switched = []
    for name, module in model.named_modules():
        if isinstance(module, FCNMaskHead):
            module._predict_by_feat_single = types.MethodType(
                _predict_by_feat_single, module)
            switched.append(name)
    return switched


def box_masks_ok(cfg, loop: str) -> bool:
    """Whether the ``loop`` ('val' or 'test') of config ``cfg`` can take
    :class:`BoxMasks`: every metric of its evaluator is
    ``BDD100KInsSegMetric`` (which paints them, or pastes them in full for
    its COCO numbers) and no visualization hook draws the masks."""
    evaluator = cfg.get(f'{loop}_evaluator')
    if not evaluator:
        return False
    metrics = evaluator.get('metrics', evaluator) if isinstance(
        evaluator, dict) else evaluator
    metrics = [metrics] if isinstance(metrics, dict) else list(metrics)
    if not metrics or not all(
            isinstance(m, dict) and str(m.get('type', '')).split('.')[-1]
            == 'BDD100KInsSegMetric' for m in metrics):
        return False
    hooks = list((cfg.get('default_hooks') or {}).values()) + list(
        cfg.get('custom_hooks') or [])
    return not any(isinstance(h, dict) and h.get('draw') for h in hooks)


__all__ = ['BoxMasks', 'paint', 'zero_size', 'enable_box_masks',
           'box_masks_ok']
