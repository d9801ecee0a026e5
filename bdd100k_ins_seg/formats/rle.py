"""BDD100K's second official format: Scalabel json with RLE masks.

The download's GT (``labels/ins_seg/rles/ins_seg_{train,val}.json``) and
predictions for ``python -m bdd100k.eval.run -t ins_seg -g GT.json -r
PRED.json`` are Scalabel frames ``{"name", "labels": [{"id", "category",
"score", "rle": {"counts", "size"}}]}``, one COCO run-length encoding per
instance.

Predictions are derived from the bitmasks (the source of truth: what the
evaluator scores): each label's mask is exactly the pixels that prediction
owns in its image's bitmask, i.e. what ``python -m bdd100k.label.to_rle -m
ins_seg`` gives from the bitmask folder and ``score.json`` (labels numbered
1..N by decreasing score, indices without pixels left out). Here all the
RLEs of an image come from one pass over its instance map in column-major
order, instead of one full-image encoding per instance.

GT bitmasks convert the same way, keeping each instance's id and its
attribute bits (``truncated``, ``occluded``, ``crowd``, ``ignored``) as the
official bitmask writer (``bdd100k.label.to_mask``) packs them.
"""
import json
import os
import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from bdd100k_ins_seg.formats.bitmask import (CATEGORY_NAMES, atomic_write,
                                             whole_number)

#: File name of the predictions' RLE json in a ``--format-dir`` folder.
RLE_FILE = 'rles.json'
#: G-channel bits of a GT bitmask, as ``bdd100k.label.to_mask`` sets them.
ATTRIBUTE_BITS = (('truncated', 1 << 3), ('occluded', 1 << 2),
                  ('crowd', 1 << 1), ('ignored', 1 << 0))


def instance_rles(instance_map: np.ndarray) -> Dict[int, Dict]:
    """COCO RLEs of every non-zero id of an (H, W) instance map.

    Returns ``{id: {"counts": str, "size": [H, W]}}``, the strings
    ``pycocotools.mask.encode`` gives for ``instance_map == id`` (the
    counts alternate background / instance runs in column-major order,
    starting with background).
    """
    from pycocotools import mask as mask_utils
    height, width = instance_map.shape
    flat = np.ascontiguousarray(instance_map.T).ravel()
    total = flat.size
    if total == 0:
        return {}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [total]))
    values = flat[starts]
    inside = values != 0
    starts, ends, values = starts[inside], ends[inside], values[inside]
    order = np.argsort(values, kind='stable')  # runs of an id stay in order
    starts, ends, values = starts[order], ends[order], values[order]
    bounds = np.flatnonzero(np.diff(values)) + 1
    out = {}
    for s, e in zip(np.split(starts, bounds), np.split(ends, bounds)):
        if not len(s):
            continue
        counts = np.empty(2 * len(s), np.int64)
        counts[0::2] = s - np.concatenate(([0], e[:-1]))  # background gap
        counts[1::2] = e - s
        counts = counts.tolist()
        if e[-1] < total:
            counts.append(int(total - e[-1]))
        rle = mask_utils.frPyObjects(
            dict(counts=counts, size=[height, width]), height, width)
        out[int(flat[s[0]])] = dict(counts=rle['counts'].decode('ascii'),
                                    size=[height, width])
    return out


def rle_counts(counts: str) -> List[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools'
    ``rleFrString``: 6-bit characters from 48, the runs after the second
    stored as differences to the run two before)."""
    out: List[int] = []
    data = counts.encode('ascii') if isinstance(counts, str) else counts
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1f) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode(rle: Dict) -> np.ndarray:
    """(H, W) bool mask of an RLE ``{"counts": str, "size": [H, W]}``, the
    pixels ``pycocotools.mask.decode`` gives."""
    height, width = (int(v) for v in rle['size'])
    counts = np.asarray(rle_counts(rle['counts']), np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f'RLE counts do not cover a {height}x{width} '
                         'mask')
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(width, height).T


def _split(bitmask: np.ndarray) -> Tuple[np.ndarray, np.ndarray,
                                          np.ndarray]:
    bitmask = np.asarray(bitmask)
    if bitmask.ndim != 3 or bitmask.shape[2] != 4:
        raise ValueError(f'expected an (H, W, 4) RGBA bitmask, got shape '
                         f'{bitmask.shape}')
    ids = (bitmask[..., 2].astype(np.int32) << 8) | bitmask[..., 3]
    return bitmask[..., 0], bitmask[..., 1], ids


def _one_value(ids: np.ndarray, channel: np.ndarray, what: str,
               where: str) -> Dict[int, int]:
    """``{id: value}`` of a channel that must be constant per instance."""
    inside = ids != 0
    pairs = np.unique(ids[inside].astype(np.int64) * 256 + channel[inside])
    found = {}
    for pair in pairs.tolist():
        key, value = divmod(pair, 256)
        if key in found:
            raise ValueError(f'{where}: instance {key} has pixels of '
                             f'several {what} values')
        found[key] = value
    return found


def _category_name(category: int, where: str) -> str:
    if not 1 <= category <= len(CATEGORY_NAMES):
        raise ValueError(f'{where}: unknown category id {category} '
                         f'(expected 1..{len(CATEGORY_NAMES)})')
    return CATEGORY_NAMES[category - 1]


def prediction_labels(bitmask: np.ndarray, ann_score: Iterable[Tuple],
                      where: str = '<prediction>') -> List[Dict]:
    """The RLE labels of one prediction bitmask and its ``(index, score)``
    pairs: ``[{"id", "category", "score", "rle"}]``, what
    ``bdd100k.label.to_rle.insseg_to_rle`` makes (id ``"1"`` = the best
    score, ties in listed order; an index without pixels is left out)."""
    categories, _, ids = _split(bitmask)
    rles = instance_rles(ids)
    category_of = _one_value(ids, categories, 'category', where)
    labels = []
    for index, score in sorted(ann_score, key=lambda pair: pair[1],
                               reverse=True):
        key = whole_number(index)
        if key is None or key not in rles:
            continue
        labels.append(dict(id=str(len(labels) + 1),
                           category=_category_name(category_of[key], where),
                           score=float(score), rle=rles.pop(key)))
    return labels


def gt_labels(bitmask: np.ndarray, where: str = '<gt>') -> List[Dict]:
    """The RLE labels of one GT bitmask, by increasing instance id:
    ``[{"id", "category", "attributes", "rle"}]`` (instances of a category
    id outside 1..8, which no evaluator scores, are left out)."""
    categories, attributes, ids = _split(bitmask)
    rles = instance_rles(ids)
    category_of = _one_value(ids, categories, 'category', where)
    attribute_of = _one_value(ids, attributes, 'attribute', where)
    labels = []
    for key in sorted(rles):
        if not 1 <= category_of[key] <= len(CATEGORY_NAMES):
            continue  # no class of the 8: no evaluator scores it
        bits = attribute_of[key]
        labels.append(dict(
            id=str(key), category=_category_name(category_of[key], where),
            attributes={name: bool(bits & bit)
                        for name, bit in ATTRIBUTE_BITS},
            rle=rles[key]))
    return labels


def _read(path: str) -> np.ndarray:
    """A bitmask PNG as (H, W, 4) uint8, read as the official code reads
    it (PIL)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f'{path}: not a readable PNG ({e})') from None


def prediction_frames(bitmask_dir: str, frames: Sequence[Dict]
                      ) -> List[Dict]:
    """RLE frames of a prediction folder: ``frames`` are the score file's
    (``{"name", "labels": [{"index", "score", ...}]}``), each frame's
    bitmask ``<bitmask_dir>/<stem>.png``."""
    out = []
    for frame in frames:
        name = frame['name']
        path = osp.join(bitmask_dir, osp.splitext(name)[0] + '.png')
        pairs = [(label['index'], label['score'])
                 for label in frame.get('labels') or []]
        out.append(dict(name=name, labels=prediction_labels(
            _read(path), pairs, path)))
    return out


def gt_frames(mask_dir: str, names: Optional[Sequence[str]] = None
              ) -> List[Dict]:
    """RLE frames of a GT bitmask folder (``names``: the PNG file names,
    default all, sorted); frame names ``<stem>.jpg``."""
    if names is None:
        names = sorted(n for n in os.listdir(mask_dir)
                       if n.endswith('.png'))
    out = []
    for name in names:
        path = osp.join(mask_dir, name)
        out.append(dict(name=osp.splitext(name)[0] + '.jpg',
                        labels=gt_labels(_read(path), path)))
    return out


def write_rle_file(path: str, frames: Sequence[Dict]) -> None:
    """Write ``{"frames": [...]}`` (Scalabel's dataset layout) atomically."""
    atomic_write(path, json.dumps(dict(frames=list(frames))).encode('utf-8'))


def read_rle_file(path: str) -> List[Dict]:
    """The frames of a Scalabel RLE json (a list of frames, or
    ``{"frames": [...]}``), as plain dicts; ``ValueError`` if it is not
    one."""
    with open(path, encoding='utf-8') as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'not valid JSON ({e})') from None
    frames = data.get('frames') if isinstance(data, dict) else data
    if not isinstance(frames, list):
        raise ValueError('expected Scalabel frames (a list, or {"frames": '
                         '[...]})')
    for n, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(
                frame.get('name'), str):
            raise ValueError(f'frame {n} has no "name"')
        for k, label in enumerate(frame.get('labels') or []):
            rle = label.get('rle') if isinstance(label, dict) else None
            if not isinstance(rle, dict) or 'counts' not in rle or \
                    'size' not in rle:
                raise ValueError(f'frame {frame["name"]}: label {k} has no '
                                 '"rle" {"counts", "size"}')
    return frames


def rasterize(labels: Sequence[Dict], height: int, width: int,
              gt: bool = False) -> Tuple[np.ndarray, List[Tuple]]:
    """Paint RLE labels into an RGBA bitmask array (the evaluator's input).

    Predictions (``gt=False``) are painted by increasing score, so the
    higher score wins where masks overlap, and numbered 1..N by decreasing
    score; GT instances keep their order, numbered 1..N, with their
    attribute bits. Labels of unknown categories are skipped.

    Returns ``(bitmask, ann_score)``: ``ann_score`` the ``(index, score)``
    pairs of the predictions (empty for GT).
    """
    known = {name: i + 1 for i, name in enumerate(CATEGORY_NAMES)}
    items = [label for label in labels if label.get('category') in known]
    if not gt:
        items = sorted(items, key=lambda label: -float(label['score']))
    bitmask = np.zeros((height, width, 4), np.uint8)
    pairs = []
    for rank in range(len(items) - 1, -1, -1):  # best painted last
        label = items[rank]
        rle = label['rle']
        if list(rle['size']) != [height, width]:
            raise ValueError(f'label {label.get("id")}: RLE of size '
                             f'{rle["size"]}, expected {[height, width]}')
        mask = decode(rle)
        index = rank + 1
        attrs = 0
        if gt:
            given = label.get('attributes') or {}
            for name, bit in ATTRIBUTE_BITS:
                if given.get(name):
                    attrs |= bit
        bitmask[mask] = (known[label['category']], attrs, index >> 8,
                         index & 255)
    if not gt:
        pairs = [(rank + 1, float(label['score']))
                 for rank, label in enumerate(items)]
    return bitmask, pairs


def frame_size(frame: Dict) -> Optional[Tuple[int, int]]:
    """(H, W) of a frame from its first RLE, or None without labels."""
    for label in frame.get('labels') or []:
        size = (label.get('rle') or {}).get('size')
        if size:
            return int(size[0]), int(size[1])
    return None


__all__ = ['RLE_FILE', 'instance_rles', 'rle_counts', 'decode',
           'prediction_labels', 'gt_labels', 'prediction_frames',
           'gt_frames', 'write_rle_file', 'read_rle_file', 'rasterize',
           'frame_size']
