"""Gallery rows: image | GT | prediction, side by side.

The masks are drawn in the project's palette
(:mod:`bdd100k_ins_seg.visualization.overlay`, as ``vis.py`` draws them);
GT instances no prediction of their class matched (misses) are outlined in
white on the GT panel, predictions that matched no GT of their class (false
positives) on the prediction panel. Only predictions scoring at least the
threshold are drawn.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Outline color (RGB) of misses and false positives: white is not in the
#: class palette, whose colors are all saturated.
MARK_COLOR = (255, 255, 255)
#: Panels wider than this are scaled down.
MAX_PANEL_WIDTH = 640
HEADER = 22


def _numbering(gt_bitmask: np.ndarray, dt_bitmask: np.ndarray,
               pairs: Sequence[Tuple]) -> Tuple[np.ndarray, np.ndarray,
                                                 List[int], List[int]]:
    """Instance maps of both bitmasks and the pixel id of each GT / each
    prediction in the evaluator's numbering (GT by increasing id,
    predictions by decreasing score, those without pixels left out)."""
    from bdd100k_ins_seg.formats.bitmask import whole_number
    gt_ids = (gt_bitmask[..., 2].astype(np.int32) << 8) | gt_bitmask[..., 3]
    dt_ids = (dt_bitmask[..., 2].astype(np.int32) << 8) | dt_bitmask[..., 3]
    gt_order = [int(i) for i in np.unique(gt_ids) if i != 0]
    present = set(int(i) for i in np.unique(dt_ids) if i != 0)
    dt_order = []
    for index, _ in sorted(pairs, key=lambda pair: pair[1], reverse=True):
        key = whole_number(index)
        if key in present and key not in dt_order:
            dt_order.append(key)
    return gt_ids, dt_ids, gt_order, dt_order


def _outline(panel: np.ndarray, mask: np.ndarray) -> None:
    import cv2
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    thickness = max(2, round(panel.shape[0] / 200))
    cv2.drawContours(panel, contours, -1, MARK_COLOR, thickness)


def _header(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2
    strip = np.full((HEADER, panel.shape[1], 3), 32, np.uint8)
    scale = min(0.45, 0.45 * panel.shape[1] / 320)
    cv2.putText(strip, text, (4, HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def _fit(panel: np.ndarray) -> np.ndarray:
    import cv2
    height, width = panel.shape[:2]
    if width <= MAX_PANEL_WIDTH:
        return panel
    scale = MAX_PANEL_WIDTH / width
    return cv2.resize(panel, (MAX_PANEL_WIDTH, round(height * scale)),
                      interpolation=cv2.INTER_AREA)


def join(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels of one height side by side, 4 white pixels apart."""
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    out = [panels[0]]
    for panel in panels[1:]:
        out += [gap, panel]
    return np.concatenate(out, axis=1)


def render_row(image: Optional[np.ndarray], gt_bitmask: np.ndarray,
               dt_bitmask: np.ndarray, pairs: Sequence[Tuple], match: Dict,
               counts: Dict, score_thr: float, title: str,
               panels_only: bool = False, label: str = ''):
    """One gallery row (H + header, 3 W, 3) uint8 RGB (``panels_only``:
    the three panels, a list).

    Args:
        image: the RGB image (None: a gray canvas).
        match: the image's :func:`.errors.match_image` result;
            ``counts`` its :func:`.errors.image_counts`.
    """
    from bdd100k_ins_seg.visualization.overlay import overlay
    height, width = gt_bitmask.shape[:2]
    if image is None or image.shape[:2] != (height, width):
        image = np.full((height, width, 3), 110, np.uint8)
    gt_ids, dt_ids, gt_order, dt_order = _numbering(gt_bitmask, dt_bitmask,
                                                    pairs)
    gt_panel = overlay(image, gt_bitmask[..., 0], gt_ids)
    for g in np.flatnonzero(match['gt_counted']):
        d = match['gt_match'][g]
        if d < 0 or match['dt_class'][d] != match['gt_class'][g]:
            _outline(gt_panel, gt_ids == gt_order[g])
    shown = np.isin(dt_ids, [dt_order[d] for d in
                             np.flatnonzero(match['dt_used'])])
    dt_panel = overlay(image, np.where(shown, dt_bitmask[..., 0], 0),
                       np.where(shown, dt_ids, 0))
    for d in np.flatnonzero(match['dt_used'] & ~match['dt_ignored']):
        g = match['dt_match'][d]
        if g < 0 or match['gt_class'][g] != match['dt_class'][d]:
            _outline(dt_panel, dt_ids == dt_order[d])
    panels = [
        _header(_fit(image), title),
        _header(_fit(gt_panel), f'GT {counts["gt"]}, missed '
                f'{counts["missed"]} (outlined)'),
        _header(_fit(dt_panel), f'{label}score >= {score_thr}: '
                f'{counts["pred"]}, false pos. {counts["fp"]} (outlined)'),
    ]
    return panels if panels_only else join(panels)


def write_jpeg(path: str, rgb: np.ndarray, quality: int = 85) -> str:
    import cv2

    from bdd100k_ins_seg.formats.bitmask import atomic_write
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f'cannot encode {path}')
    atomic_write(path, np.asarray(data).tobytes())
    return path


def pick(counts: Sequence[Dict], num: int) -> Tuple[List[int], List[int]]:
    """(worst, best) image indices: the ``num`` lowest F1 at IoU .5 (most
    errors first among equals) and the ``num`` highest (most matches
    first), images with neither GT nor predictions left out, no image in
    both."""
    candidates = [i for i, c in enumerate(counts)
                  if c['gt'] + c['pred'] > 0]
    worst = sorted(candidates, key=lambda i: (
        counts[i]['f1'], -(counts[i]['missed'] + counts[i]['fp']), i))[:num]
    rest = [i for i in candidates if i not in set(worst)]
    best = sorted(rest, key=lambda i: (-counts[i]['f1'],
                                       -counts[i]['matched'], i))[:num]
    return worst, best


def write_gallery(evaluation, matches: Sequence[Dict],
                  counts: Sequence[Dict], img_dir: str, out_dir: str,
                  num: int, score_thr: float) -> Dict[str, List[Dict]]:
    """Rows of the worst and best ``num`` images under ``out_dir``
    (``worst_01.jpg``...). Returns ``{"worst": [...], "best": [...]}``,
    each ``{"name", "file", "f1", ...counts}`` (file relative to
    ``out_dir``'s parent)."""
    from bdd100k_ins_seg.visualization.overlay import find_image, read_image
    worst, best = pick(counts, num)
    out = {}
    for kind, indices in (('worst', worst), ('best', best)):
        rows = []
        for rank, i in enumerate(indices, start=1):
            name = evaluation.names[i]
            stem = osp.splitext(name)[0]
            found = find_image(img_dir, stem)
            image = read_image(found) if found else None
            gt, dt, pairs = evaluation.bitmasks(i)
            row = render_row(image, gt, dt, pairs, matches[i], counts[i],
                             score_thr, f'{stem} (F1 {counts[i]["f1"]:.2f})')
            file = f'{kind}_{rank:02d}.jpg'
            write_jpeg(osp.join(out_dir, file), row)
            rows.append(dict(name=name, file=f'{osp.basename(out_dir)}/'
                             f'{file}', **counts[i]))
        out[kind] = rows
    return out


__all__ = ['join', 'render_row', 'write_jpeg', 'pick', 'write_gallery']
