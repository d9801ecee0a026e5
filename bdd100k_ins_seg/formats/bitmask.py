"""BDD100K instance-segmentation bitmasks: the prediction writer and a reader.

A prediction bitmask is an RGBA uint8 PNG at the image's own size:
R = category id 1..8, G = 0, ``B << 8 | A`` = the prediction's index 1..N
(0 = background). Instances never overlap: where masks overlap, the
prediction with the higher score wins. Beside the PNGs, ``score.json`` lists
one frame per image ``{"name": "<stem>.jpg", "labels": [{"id", "index",
"score", "category"}]}``; the official evaluator
(``python -m bdd100k.eval.run -t ins_seg``) reads ``name``, ``index`` and
``score`` from it.

Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so a killed run never leaves a truncated PNG or json.
"""
import json
import math
import os
import os.path as osp
import struct
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

#: The 8 classes, in the order of their category ids 1..8.
BDD100K_INS_SEG_CLASSES = ('pedestrian', 'rider', 'car', 'truck', 'bus',
                           'train', 'motorcycle', 'bicycle')
#: One display color (RGB) per class, in class order.
BDD100K_INS_SEG_PALETTE = [(220, 20, 60), (255, 0, 0), (0, 0, 142),
                           (0, 0, 70), (0, 60, 100), (0, 80, 100),
                           (0, 0, 230), (119, 11, 32)]

#: Category names, index i = category id i + 1.
CATEGORY_NAMES = BDD100K_INS_SEG_CLASSES
#: The index is stored in two bytes (B, A).
MAX_INSTANCES = 65535
#: mmdet pastes each mask into its box widened by one pixel on every side
#: (``_do_paste_mask``: floor(x1) - 1 .. ceil(x2) + 1), so painting within
#: that window never cuts a mask.
BOX_MARGIN = 1
# Read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def frame_name(img_path: str) -> str:
    """The ``score.json`` frame name of an image: ``<stem>.jpg``.

    The evaluator maps a frame to its bitmask by replacing ``.jpg`` with
    ``.png``, so the name must end in ``.jpg`` whatever the image format.
    """
    return osp.splitext(osp.basename(img_path))[0] + '.jpg'


def bitmask_name(img_path: str) -> str:
    """The bitmask file name of an image: ``<stem>.png``."""
    return osp.splitext(osp.basename(img_path))[0] + '.png'


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, 'detach'):  # torch.Tensor, on any device
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _mask_boxes(masks) -> np.ndarray:
    """Tight (x1, y1, x2, y2) pixel boxes of (N, H, W) masks (one pass)."""
    masks = _to_numpy(masks).astype(bool, copy=False)
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float64)
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def check_labels(labels: np.ndarray, n: int) -> None:
    """Raise ``ValueError`` unless ``n`` predictions fit in one bitmask and
    every category id in ``labels`` is 1..8."""
    if n > MAX_INSTANCES:
        raise ValueError(f'{n} predictions in one image; a bitmask holds at '
                         f'most {MAX_INSTANCES}')
    bad = labels[(labels < 1) | (labels > len(CATEGORY_NAMES))]
    if len(bad):
        raise ValueError(f'unknown category id {int(bad[0])} (expected '
                         f'1..{len(CATEGORY_NAMES)})')


def encode_bitmask(masks,
                   labels,
                   scores,
                   bboxes=None,
                   image_size: Optional[Tuple[int, int]] = None
                   ) -> Tuple[np.ndarray, List[Dict]]:
    """Render instance predictions as one non-overlapping RGBA bitmask.

    Args:
        masks: (N, H, W) bool (or 0/1) array or tensor, at the image's size.
        labels: (N,) category ids 1..8 (mmdet's labels + 1).
        scores: (N,) confidence in [0, 1].
        bboxes: optional (N, 4) boxes (x1, y1, x2, y2) in pixels that hold
            each mask (mmdet's ``pred_instances.bboxes``). Each mask is read
            and painted only within its box widened by ``BOX_MARGIN``; the
            full image is never scanned per mask. Without boxes they are
            computed from the masks (one extra pass over all masks).
        image_size: optional (H, W) the masks must have.

    Returns:
        ``(bitmask, labels)``: the (H, W, 4) uint8 RGBA array and one dict
        ``{"index", "score", "category"}`` per prediction. Index 1 is the
        highest score; masks are painted in ascending score order, so the
        higher score wins where masks overlap.

    Raises:
        ValueError: masks not (N, H, W) or not of ``image_size``; lengths
            that disagree; category ids outside 1..8; more than 65535
            predictions.
    """
    shape = tuple(masks.shape)
    if len(shape) != 3:
        raise ValueError(f'masks must be (N, H, W), got shape {shape}')
    n, height, width = shape
    if image_size is not None and (height, width) != tuple(image_size[:2]):
        raise ValueError(f'masks are {height}x{width} (HxW) but the image '
                         f'is {image_size[0]}x{image_size[1]}')
    labels = _to_numpy(labels).astype(np.int64).reshape(-1)
    scores = _to_numpy(scores).astype(np.float64).reshape(-1)
    if len(labels) != n or len(scores) != n:
        raise ValueError(f'{n} masks but {len(labels)} labels and '
                         f'{len(scores)} scores')
    check_labels(labels, n)
    if bboxes is None:
        boxes = _mask_boxes(masks)
    else:
        boxes = _to_numpy(bboxes).astype(np.float64).reshape(-1, 4)
        if len(boxes) != n:
            raise ValueError(f'{n} masks but {len(boxes)} boxes')

    # Index 1 = best score; a stable sort keeps the input order among ties.
    order = np.argsort(-scores, kind='stable')
    instance_map = np.zeros((height, width), dtype=np.uint16)
    category_map = np.zeros((height, width), dtype=np.uint8)
    for rank in range(n - 1, -1, -1):  # ascending score: best painted last
        i = order[rank]
        x1, y1, x2, y2 = boxes[i]
        if not (np.all(np.isfinite(boxes[i])) and x2 > x1 and y2 > y1):
            # Not a box that holds the mask (e.g. SOLO heads return zeros):
            # use the mask's own extent.
            x1, y1, x2, y2 = _mask_boxes(masks[i:i + 1])[0]
        x1 = max(int(math.floor(x1)) - BOX_MARGIN, 0)
        y1 = max(int(math.floor(y1)) - BOX_MARGIN, 0)
        x2 = min(int(math.ceil(x2)) + BOX_MARGIN, width)
        y2 = min(int(math.ceil(y2)) + BOX_MARGIN, height)
        if x2 <= x1 or y2 <= y1:
            continue
        crop = _to_numpy(masks[i, y1:y2, x1:x2])
        if crop.dtype != bool:
            crop = crop != 0
        instance_map[y1:y2, x1:x2][crop] = rank + 1
        category_map[y1:y2, x1:x2][crop] = labels[i]

    bitmask = np.zeros((height, width, 4), dtype=np.uint8)
    bitmask[..., 0] = category_map
    bitmask[..., 2] = instance_map >> 8
    bitmask[..., 3] = instance_map & 0xFF
    label_list = [
        dict(index=rank + 1, score=float(scores[i]),
             category=CATEGORY_NAMES[labels[i] - 1])
        for rank, i in enumerate(order)
    ]
    return bitmask, label_list


def _deflate():
    """(compress, crc32, level): zlib-ng's when installed (about 3x faster
    than the standard zlib on bitmasks, and smaller at level 2), else the
    standard library's."""
    try:
        from zlib_ng import zlib_ng
        return zlib_ng.compress, zlib_ng.crc32, 2
    except ImportError:
        import zlib
        return zlib.compress, zlib.crc32, 1


def _png_chunk(kind: bytes, data, crc32) -> bytes:
    return (struct.pack('>I', len(data)) + kind + bytes(data) +
            struct.pack('>I', crc32(data, crc32(kind)) & 0xFFFFFFFF))


def png_bytes(bitmask: np.ndarray) -> bytes:
    """PNG-encode an (H, W, 4) uint8 RGBA array.

    Rows are stored unfiltered (PNG filter type 0) and deflated once at a
    fast level: a bitmask is long runs of equal pixels, which deflate
    compresses as well without a filter, so per-row filter selection (what
    PIL and libpng spend most of their time on) buys nothing. About 12x
    faster than PIL at ``compress_level=1`` with zlib-ng, and smaller.
    """
    bitmask = np.asarray(bitmask)
    if bitmask.dtype != np.uint8 or bitmask.ndim != 3 or \
            bitmask.shape[2] != 4 or 0 in bitmask.shape:
        raise ValueError(f'bitmask: expected a non-empty (H, W, 4) uint8 '
                         f'array, got {bitmask.dtype} {bitmask.shape}')
    height, width = bitmask.shape[:2]
    rows = np.zeros((height, width * 4 + 1), np.uint8)  # column 0: filter
    rows[:, 1:] = bitmask.reshape(height, width * 4)
    compress, crc32, level = _deflate()
    header = struct.pack('>IIBBBBB', width, height, 8, 6, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header, crc32) +
            _png_chunk(b'IDAT', compress(memoryview(rows), level), crc32) +
            _png_chunk(b'IEND', b'', crc32))


def atomic_write(path: str, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename
    (``fsync``: flushed to disk before the rename)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix='.' + osp.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the usual mode.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def write_bitmask(path: str,
                  masks,
                  labels,
                  scores,
                  bboxes=None,
                  image_size: Optional[Tuple[int, int]] = None
                  ) -> List[Dict]:
    """Render predictions (see :func:`encode_bitmask`) into the PNG ``path``.

    Returns the label dicts ``{"index", "score", "category"}`` for
    ``score.json``.
    """
    bitmask, label_list = encode_bitmask(masks, labels, scores, bboxes,
                                         image_size)
    atomic_write(path, png_bytes(bitmask))
    return label_list


def write_score_file(path: str, frames: Iterable[Dict]) -> List[Dict]:
    """Write ``score.json`` from frames ``{"name", "labels": [...]}``.

    Every label gets an ``id`` unique across the file (a running number, as a
    string like Scalabel's ids). Returns the frames as written.
    """
    written = []
    next_id = 1
    for frame in frames:
        labels = []
        for label in frame.get('labels') or []:
            labels.append(dict(id=str(next_id), **{
                k: v for k, v in label.items() if k != 'id'}))
            next_id += 1
        written.append(dict(name=frame['name'], labels=labels))
    atomic_write(path, json.dumps(written).encode('utf-8'))
    return written


def read_bitmask(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read a BDD100K bitmask PNG.

    Returns:
        ``(categories, instances)``: (H, W) uint8 category ids (0 =
        background) and (H, W) int32 instance ids ``B << 8 | A``.

    Raises:
        ValueError: the file is not an RGBA PNG.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.asarray(image)
    except (OSError, SyntaxError) as e:
        raise ValueError(f'cannot read bitmask {path}: {e}') from None
    if mode != 'RGBA' or array.ndim != 3 or array.shape[2] != 4:
        raise ValueError(f'{path} is not an RGBA bitmask (mode {mode})')
    instances = (array[..., 2].astype(np.int32) << 8) | array[..., 3]
    return array[..., 0].copy(), instances


def whole_number(value) -> Optional[int]:
    """``value`` as an int where it is a whole number (an int, a float such
    as 3.0, a numpy scalar; a bool is 0 or 1, as ``==`` compares it), else
    None: how the evaluator reads a ``score.json`` index."""
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        number = float(value)
        if number.is_integer():
            return int(number)
    return None


def load_score_file(path: str) -> Dict[str, Dict[int, Dict]]:
    """Read ``score.json`` into ``{bitmask file name: {index: label}}``.

    Every frame must have a ``name`` and every label a whole-number
    ``index`` and a finite ``score`` (what the evaluator reads); anything
    else is a ``ValueError`` naming the frame and the label, without the
    path (the caller names the file).
    """
    with open(path, encoding='utf-8') as f:
        try:
            frames = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'not valid JSON ({e})') from None
    if not isinstance(frames, list):
        raise ValueError('expected a list of frames ({"name": ..., '
                         f'"labels": [...]}}), found a {type(frames).__name__}')
    by_name = {}
    for n, frame in enumerate(frames):
        name = frame.get('name') if isinstance(frame, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f'frame {n} has no "name"')
        labels = frame.get('labels') or []
        if not isinstance(labels, list):
            raise ValueError(f'frame {name}: "labels" is not a list')
        by_index = {}
        for k, label in enumerate(labels):
            found = label if isinstance(label, dict) else {}
            index = whole_number(found.get('index'))
            score = found.get('score')
            if index is None or index < 0:
                raise ValueError(f'frame {name}: label {k} has no whole '
                                 f'"index" (found {found.get("index")!r})')
            if isinstance(score, bool) or not isinstance(
                    score, (int, float)) or not math.isfinite(score):
                raise ValueError(f'frame {name}: label {k} has no finite '
                                 f'"score" (found {score!r})')
            by_index[index] = label
        by_name[osp.splitext(name)[0] + '.png'] = by_index
    return by_name


def instance_masks(categories: np.ndarray, instances: np.ndarray
                   ) -> List[Tuple[int, int, np.ndarray]]:
    """Split a decoded bitmask into ``(index, category id, (H, W) bool)``."""
    out = []
    for index in np.unique(instances):
        if index == 0:
            continue
        mask = instances == index
        category = int(np.bincount(categories[mask]).argmax())
        out.append((int(index), category, mask))
    return out


__all__: Sequence[str] = (
    'CATEGORY_NAMES', 'MAX_INSTANCES', 'frame_name', 'bitmask_name',
    'check_labels', 'encode_bitmask', 'png_bytes', 'atomic_write', 'write_bitmask',
    'write_score_file', 'read_bitmask', 'whole_number', 'load_score_file',
    'instance_masks')
