"""Deterministic colors and overlays for BDD100K instance bitmasks.

Every class has its own hue family; an instance's color is that hue shifted
by an amount fixed by its index, so the same (class, index) has the same
color in every image and every run (the original colorizer drew a random
palette per image).
"""
import colorsys
import os.path as osp
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from bdd100k_ins_seg.formats.bitmask import CATEGORY_NAMES

#: Base hue (degrees) per category id 1..8, at least 32 degrees apart so
#: that the families (base +- HUE_SPREAD) never meet.
CLASS_HUES = {
    1: 0,  # pedestrian: red
    2: 32,  # rider: orange
    3: 215,  # car: blue
    4: 265,  # truck: violet
    5: 64,  # bus: yellow
    6: 180,  # train: cyan
    7: 120,  # motorcycle: green
    8: 315,  # bicycle: magenta
}
HUE_SPREAD = 12
_GOLDEN = 0.6180339887498949


def instance_color(category: int, index: int) -> Tuple[int, int, int]:
    """RGB color of instance ``index`` of category id ``category`` (1..8).

    The hue stays within +-HUE_SPREAD degrees of the class hue; saturation
    and value vary with the index (golden-ratio steps, so neighbours
    differ).
    """
    if category not in CLASS_HUES:
        return (128, 128, 128)
    step = (index * _GOLDEN) % 1.0
    hue = (CLASS_HUES[category] + (step - 0.5) * 2 * HUE_SPREAD) % 360
    saturation = 0.65 + 0.35 * ((index * 0.382) % 1.0)
    value = 0.70 + 0.30 * ((index * 0.7548776662) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue / 360, saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def colorize(categories: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of a decoded bitmask; background black.

    Args:
        categories: (H, W) category ids (0 = background).
        instances: (H, W) instance indices (0 = background).
    """
    colored = np.zeros(categories.shape + (3, ), dtype=np.uint8)
    key = instances.astype(np.int64) * 256 + categories
    uniques, inverse = np.unique(key, return_inverse=True)
    lut = np.zeros((len(uniques), 3), dtype=np.uint8)
    for i, k in enumerate(uniques):
        index, category = divmod(int(k), 256)
        if index and category:
            lut[i] = instance_color(category, index)
    colored[:] = lut[inverse.reshape(categories.shape)]
    return colored


def _segment_ids(categories: np.ndarray, instances: np.ndarray,
                 colored: Optional[np.ndarray]) -> np.ndarray:
    if colored is not None:  # a colored PNG: one segment per color
        return (colored[..., 0].astype(np.int64) << 16) | (
            colored[..., 1].astype(np.int64) << 8) | colored[..., 2]
    return instances.astype(np.int64) * 256 + categories


def outline(segments: np.ndarray) -> np.ndarray:
    """(H, W) bool: foreground pixels with a 4-neighbour of another id."""
    edge = np.zeros(segments.shape, dtype=bool)
    diff_y = segments[1:] != segments[:-1]
    diff_x = segments[:, 1:] != segments[:, :-1]
    edge[1:] |= diff_y
    edge[:-1] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    return edge & (segments != 0)


def overlay(image: np.ndarray,
            categories: Optional[np.ndarray] = None,
            instances: Optional[np.ndarray] = None,
            colored: Optional[np.ndarray] = None,
            labels: Optional[Dict[int, Dict]] = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend instances onto an image, with outlines and optional captions.

    Args:
        image: (H, W, 3) uint8 RGB.
        categories, instances: (H, W) decoded bitmask (see
            :func:`bdd100k_ins_seg.formats.bitmask.read_bitmask`), or
        colored: (H, W, 3) uint8 RGB colored mask (black = background).
        labels: optional ``{index: {"score", "category"}}`` from score.json;
            each instance is captioned ``<class> <score>``.
        alpha: mask opacity.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if colored is None:
        colored = colorize(categories, instances)
        segments = _segment_ids(categories, instances, None)
    else:
        segments = _segment_ids(None, None, colored)
    if colored.shape[:2] != image.shape[:2]:
        raise ValueError(f'mask is {colored.shape[1]}x{colored.shape[0]} '
                         f'but the image is {image.shape[1]}x'
                         f'{image.shape[0]}')
    out = image.astype(np.float32)
    foreground = segments != 0
    out[foreground] = (1 - alpha) * out[foreground] + alpha * colored[
        foreground]
    edge = outline(segments)
    out[edge] = colored[edge]
    out = out.round().clip(0, 255).astype(np.uint8)
    if labels and instances is not None:
        _caption(out, categories, instances, labels)
    return out


def select_instances(categories: np.ndarray, instances: np.ndarray,
                     labels: Dict[int, Dict], score_thr: float = 0.0,
                     max_num: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray, Dict[int, Dict]]:
    """Keep the confident predictions of a decoded prediction bitmask.

    Instances whose score (``labels[index]["score"]``) is below
    ``score_thr`` are cleared to background, and of the rest only the
    ``max_num`` highest-scoring ones are kept (ties: the lower index). A
    prediction bitmask paints the higher score on top, so what is kept
    looks exactly as it did. Instances without a label have no score and
    are kept.

    Returns:
        ``(categories, instances, labels)``: copies without the dropped
        instances.
    """
    present = [int(i) for i in np.unique(instances) if i != 0]
    scored = sorted((i for i in present if i in labels),
                    key=lambda i: (-float(labels[i]['score']), i))
    keep = [i for i in scored if float(labels[i]['score']) >= score_thr]
    if max_num is not None:
        keep = keep[:max_num]
    drop = sorted(set(scored) - set(keep))
    categories, instances = categories.copy(), instances.copy()
    if drop:
        cleared = np.isin(instances, drop)
        categories[cleared] = 0
        instances[cleared] = 0
    kept = set(keep)
    return categories, instances, {
        i: label for i, label in labels.items() if i in kept}


def _caption(out: np.ndarray, categories: np.ndarray, instances: np.ndarray,
             labels: Dict[int, Dict]) -> None:
    height = out.shape[0]
    scale = max(0.3, height / 1800)
    thickness = 1 if height < 1000 else 2
    for index in np.unique(instances):
        if index == 0 or int(index) not in labels:
            continue
        ys, xs = np.nonzero(instances == index)
        label = labels[int(index)]
        category = label.get('category')
        if category is None:
            category = CATEGORY_NAMES[int(categories[ys[0], xs[0]]) - 1]
        text = f'{category} {float(label["score"]):.2f}'
        color = instance_color(int(categories[ys[0], xs[0]]), int(index))
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale,
                                       thickness)
        x, y = int(xs.min()), max(int(ys.min()), h + base)
        cv2.rectangle(out, (x, y - h - base), (x + w, y), color, -1)
        cv2.putText(out, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (255, 255, 255), thickness, cv2.LINE_AA)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; ValueError naming the file if unreadable."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'cannot read image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def find_image(img_dir: str, stem: str) -> Optional[str]:
    """The image of ``img_dir`` named ``stem`` + an extension read
    (:data:`bdd100k_ins_seg.formats.images.IMG_EXTENSIONS`, lower or upper
    case)."""
    from bdd100k_ins_seg.formats.images import IMG_EXTENSIONS
    for ext in IMG_EXTENSIONS:
        for variant in (ext, ext.upper()):
            path = osp.join(img_dir, stem + variant)
            if osp.isfile(path):
                return path
    return None
