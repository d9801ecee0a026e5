"""Random BDD100K bitmask folders (GT, predictions, ``score.json``) for
evaluator tests and benchmarks.

GT instances are rectangles and ellipses painted over each other (some end
up partly or wholly hidden), with random categories (some classes absent,
some ids outside 1..8), crowd / ignore attributes and instance ids with gaps
(and above 255, so both id bytes are used). Predictions copy GT instances
with a jitter, or are random shapes; ``score.json`` lists indices with gaps,
indices without pixels, tied scores, and images without predictions.
"""
import json
import os
import os.path as osp
from typing import Tuple

import numpy as np


def _shape(rng, height, width, max_frac):
    """A random filled rectangle or ellipse, (H, W) bool."""
    h = int(rng.integers(2, max(3, int(height * max_frac))))
    w = int(rng.integers(2, max(3, int(width * max_frac))))
    y = int(rng.integers(-h // 4, height - h // 2))
    x = int(rng.integers(-w // 4, width - w // 2))
    mask = np.zeros((height, width), bool)
    y0, y1, x0, x1 = max(y, 0), min(y + h, height), max(x, 0), min(
        x + w, width)
    if y1 <= y0 or x1 <= x0:
        return mask
    if rng.random() < 0.5:
        mask[y0:y1, x0:x1] = True
    else:
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] = (((yy - y - h / 2) / (h / 2))**2 +
                              ((xx - x - w / 2) / (w / 2))**2) <= 1
    return mask


def _bitmask(ids, categories, attributes=None):
    bitmask = np.zeros(ids.shape + (4, ), np.uint8)
    bitmask[..., 0] = categories
    if attributes is not None:
        bitmask[..., 1] = attributes
    bitmask[..., 2] = ids >> 8
    bitmask[..., 3] = ids & 255
    return bitmask


def write_case(root: str, seed: int, num_images: int = 3,
               size: Tuple[int, int] = (200, 120), num_gt: int = 8,
               num_pred: int = 14, max_frac: float = 0.6) -> dict:
    """Write ``root/gt/*.png``, ``root/pred/*.png`` and
    ``root/score.json``.

    Args:
        size: (width, height) of the images.
        num_gt, num_pred: about this many instances per image (random
            around it; some images get none).

    Returns:
        dict(gt_dir, pred_dir, score_file).
    """
    from PIL import Image
    rng = np.random.default_rng(seed)
    width, height = size
    gt_dir, pred_dir = osp.join(root, 'gt'), osp.join(root, 'pred')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    frames = []
    for k in range(num_images):
        name = f'{seed:04d}-{k:03d}'
        n_gt = 0 if rng.random() < 0.1 else int(rng.integers(1, 2 * num_gt))
        gt_ids = np.zeros((height, width), np.int32)
        gt_cat = np.zeros((height, width), np.uint8)
        gt_attr = np.zeros((height, width), np.uint8)
        gt_shapes = []
        next_id = int(rng.integers(1, 300))
        for _ in range(n_gt):
            mask = _shape(rng, height, width, max_frac)
            category = int(rng.choice([1, 2, 3, 3, 3, 4, 5, 7, 8, 9]))
            attr = int(rng.choice([0, 0, 0, 0, 0, 1, 2, 3]))
            gt_ids[mask] = next_id
            gt_cat[mask] = category
            gt_attr[mask] = attr
            gt_shapes.append((mask, category))
            next_id += int(rng.integers(1, 4))  # gaps in the ids
        Image.fromarray(_bitmask(gt_ids, gt_cat, gt_attr)).save(
            osp.join(gt_dir, name + '.png'))

        roll = rng.random()
        n_pred = 0 if roll < 0.1 else int(rng.integers(1, 2 * num_pred))
        dt_ids = np.zeros((height, width), np.int32)
        dt_cat = np.zeros((height, width), np.uint8)
        labels = []
        index = int(rng.integers(1, 5))
        for _ in range(n_pred):
            if gt_shapes and rng.random() < 0.6:
                mask, category = gt_shapes[int(rng.integers(len(gt_shapes)))]
                mask = np.roll(mask, tuple(rng.integers(-3, 4, 2)), (0, 1))
                if rng.random() < 0.15:
                    category = int(rng.integers(1, 9))
            else:
                mask = _shape(rng, height, width, max_frac)
                category = int(rng.integers(1, 9))
            dt_ids[mask] = index
            dt_cat[mask] = category
            # Tied scores now and then (a coarse grid).
            score = float(rng.choice([0.5, 0.9])) if rng.random() < 0.2 \
                else round(float(rng.random()), 3)
            labels.append(dict(index=index, score=score))
            index += int(rng.integers(1, 3))  # index gaps
        # Listed indices without a pixel.
        for _ in range(int(rng.integers(0, 3))):
            labels.append(dict(index=index + int(rng.integers(0, 50)),
                               score=round(float(rng.random()), 3)))
        rng.shuffle(labels)
        Image.fromarray(_bitmask(dt_ids, dt_cat)).save(
            osp.join(pred_dir, name + '.png'))
        frame = dict(name=name + '.jpg', labels=labels)
        if not labels and roll < 0.05:
            frame['labels'] = None
        frames.append(frame)
    score_file = osp.join(root, 'score.json')
    with open(score_file, 'w') as f:
        json.dump(frames, f)
    return dict(gt_dir=gt_dir, pred_dir=pred_dir, score_file=score_file)
