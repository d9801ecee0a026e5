"""The official BDD100K instance-segmentation scores, computed faster.

``python -m bdd100k.eval.run -t ins_seg`` (``bdd100k.eval.ins_seg``) spends
almost all its time in per-instance scans of the full image: one pass per
GT instance (``parse_bitmask``), per prediction (``parse_res_bitmask``) and
per instance again for the areas (``get_mask_areas``). Here the same
per-image quantities (IoU matrix, areas, categories, crowd and ignore flags,
scores) come from a few whole-image passes (``np.bincount`` over the 16-bit
instance ids), with the same values, dtypes and order, and are handed to the
official matching and accumulation (``BDD100KInsSegEval.compute_match``,
scalabel's ``COCOevalV2.accumulate``/``summarize``), so the ``DetResult`` is
the official one, number for number.

Where the official code stops with an assertion or an index error (an
instance spanning several categories, a prediction index listed twice in
``score.json``, more than 100 GT instances in an image), this raises a
``ValueError`` naming the file.
"""
import contextlib
import io
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from bdd100k.eval.ins_seg import BDD100KInsSegEval

from bdd100k_ins_seg.formats.bitmask import whole_number

#: The official IoU code keeps at most this many GT instances per image
#: (``bdd100k.common.bitmask.MAX_DET``) and fails with more.
MAX_GT = 100
#: Instance ids are 16 bits: (B << 8) + A of the RGBA bitmask.
NUM_IDS = 1 << 16


def default_nproc(num_images: Optional[int] = None, limit: int = 8) -> int:
    """Processes for the per-image pass: the CPU cores this process may use,
    at most ``limit``, and 1 for few images (a pool costs more than it
    saves below ~8 images per process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    nproc = max(1, min(cores, limit))
    if num_images is not None:
        nproc = max(1, min(nproc, num_images // 8))
    return nproc


def _is_rgba8_png(data: bytes) -> bool:
    """Whether PNG bytes hold 8-bit RGBA (IHDR bit depth 8, colour type
    6), the only layout the evaluator reads."""
    return (data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
            and data[24] == 8 and data[25] == 6)


def _decode_rgba8(data: bytes) -> Optional[np.ndarray]:
    """8-bit RGBA PNG bytes as (H, W, 4) uint8, or None if the fast
    decoders cannot read them.

    libspng (``pyspng``) decodes these bitmasks about twice as fast as
    OpenCV's libpng, and OpenCV about 1.2x as fast as PIL; PNG is lossless,
    so all give the same pixels.
    """
    try:
        import pyspng
    except ImportError:  # an optional speed-up: OpenCV does the same
        pyspng = None
    if pyspng is not None:
        try:
            bitmask = pyspng.load(data)
        except Exception:  # noqa: BLE001 corrupt: PIL names the problem
            return None
    else:
        import cv2
        bgra = cv2.imdecode(np.frombuffer(data, np.uint8),
                            cv2.IMREAD_UNCHANGED)
        if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
            return None
        bitmask = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)
    if bitmask.dtype != np.uint8 or bitmask.ndim != 3 or \
            bitmask.shape[2] != 4:
        return None
    return np.ascontiguousarray(bitmask)


def read_bitmask(path: str) -> np.ndarray:
    """An RGBA bitmask PNG as a (H, W, 4) uint8 array.

    8-bit RGBA files go through :func:`_decode_rgba8`; anything else
    through PIL, as the official reader does, and is refused unless it
    comes out (H, W, 4).
    """
    with open(path, 'rb') as f:
        data = f.read()
    if _is_rgba8_png(data):
        bitmask = _decode_rgba8(data)
        if bitmask is not None:
            return bitmask
    from PIL import Image
    try:
        with Image.open(path) as image:
            bitmask = np.asarray(image, dtype=np.uint8)
    except OSError as e:
        raise ValueError(f'{path}: not a readable PNG ({e})') from None
    if bitmask.ndim != 3 or bitmask.shape[2] != 4:
        raise ValueError(f'{path}: not an RGBA bitmask (array of shape '
                         f'{bitmask.shape}, expected (H, W, 4))')
    return np.ascontiguousarray(bitmask)


class Runs:
    """The two bitmasks of an image cut into runs: maximal stretches of
    pixels, in raster order, over which neither the GT's nor the
    prediction's RGBA value changes.

    Bitmasks are piecewise constant, so an image has a few tens of
    thousands of runs instead of ~1M pixels; every per-instance count is a
    sum of run lengths, the same integers as a count of pixels.

    Attributes:
        gt, dt: (R,) uint32 RGBA values of the runs (R in the low byte).
        lengths: (R,) int64 run lengths in pixels.
    """

    def __init__(self, gt_bitmask: np.ndarray, dt_bitmask: np.ndarray):
        gt = gt_bitmask.view('<u4').ravel()
        dt = dt_bitmask.view('<u4').ravel()
        size = gt.size
        starts = np.empty(size, bool)
        starts[0] = True
        np.not_equal(gt[1:], gt[:-1], out=starts[1:])
        np.logical_or(starts[1:], dt[1:] != dt[:-1], out=starts[1:])
        starts = np.flatnonzero(starts)
        self.gt = gt[starts]
        self.dt = dt[starts]
        self.lengths = np.diff(starts, append=size)


def _channels(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray,
                                             np.ndarray]:
    """The category (R), attribute (G) and instance id ((B << 8) + A) of
    uint32 RGBA values."""
    ids = ((values >> 8) & 0xff00) | (values >> 24)
    return (values & 0xff).astype(np.int64), \
        ((values >> 8) & 0xff).astype(np.int64), ids.astype(np.int64)


def _value_per_instance(labels: np.ndarray, values: np.ndarray, num: int,
                        path: str, what: str) -> np.ndarray:
    """The one value (0..255) of each instance 1..num, from runs' instance
    numbers ``labels`` (0: none) and ``values``; an error if an instance
    has several."""
    inside = labels > 0
    pairs = np.unique(labels[inside] * 256 + values[inside])
    if len(pairs) != num:
        instances = pairs >> 8
        several = instances[1:][instances[1:] == instances[:-1]][0]
        raise ValueError(
            f'{path}: instance {int(several)} (in the order the evaluator '
            f'counts them) has pixels of several {what} values')
    return (pairs & 0xff).astype(np.int32)


class ParsedMasks:
    """One bitmask's instances, numbered 1..N as the evaluator does.

    Attributes:
        labels: (R,) int64, each run's instance number (0: none).
        areas: (N,) float64 pixel counts.
        categories: (N,) int32, or the official empty array (no
            predictions).
        attributes: (N,) int32 (GT only).
        scores: (N,) the predictions' scores.
    """

    def __init__(self, labels, areas, categories, attributes=None,
                 scores=None):
        self.labels = labels
        self.areas = areas
        self.categories = categories
        self.attributes = attributes
        self.scores = scores

    def __len__(self):
        return len(self.areas)


def parse_gt(runs: Runs, path: str = '<gt>') -> ParsedMasks:
    """What ``parse_bitmask`` + ``get_mask_areas`` give for a GT bitmask:
    instances numbered 1..N in increasing id order."""
    categories, attributes, ids = _channels(runs.gt)
    present = np.unique(ids[ids != 0])
    num = len(present)
    lut = np.zeros(NUM_IDS, np.int64)
    lut[present] = np.arange(1, num + 1)
    labels = lut[ids]
    areas = np.bincount(labels, weights=runs.lengths,
                        minlength=num + 1)[1:]
    return ParsedMasks(
        labels, areas,
        _value_per_instance(labels, categories, num, path, 'category'),
        attributes=_value_per_instance(labels, attributes, num, path,
                                       'attribute'))


def _index_key(index) -> Optional[int]:
    """The instance id a ``score.json`` index selects (``ann_map == index``
    in the official code), or None if no pixel can have it."""
    key = whole_number(index)
    return key if key is not None and 0 <= key < NUM_IDS else None


def parse_pred(runs: Runs, ann_score: Sequence[Tuple],
               path: str = '<prediction>') -> ParsedMasks:
    """What ``parse_res_bitmask`` + ``get_mask_areas`` give for a
    prediction bitmask and its ``(index, score)`` pairs: predictions
    numbered 1..N by decreasing score (stable), those without pixels
    dropped (index 0, if listed, is the pixels of id 0)."""
    categories, _, ids = _channels(runs.dt)
    counts = np.bincount(ids, weights=runs.lengths, minlength=NUM_IDS)
    lut = np.zeros(NUM_IDS, np.int64)
    scores, selected = [], []
    for index, score in sorted(ann_score, key=lambda pair: pair[1],
                               reverse=True):
        key = _index_key(index)
        if key is None or counts[key] == 0:
            continue
        if lut[key]:
            raise ValueError(f'{path}: index {index} is listed more than '
                             'once in the score file')
        selected.append(key)
        lut[key] = len(selected)
        scores.append(score)
    num = len(selected)
    labels = lut[ids]
    if not num:
        return ParsedMasks(labels, np.zeros(0), np.array([]),
                           scores=np.array(scores))
    return ParsedMasks(
        labels, counts[selected],
        _value_per_instance(labels, categories, num, path, 'category'),
        scores=np.array(scores))


def intersection_over_union(dt: ParsedMasks, gt: ParsedMasks,
                            runs: Runs) -> np.ndarray:
    """(num_dt, num_gt) float64 IoUs, the values
    ``bdd100k.common.bitmask.bitmask_intersection_rate`` computes."""
    num_dt, num_gt = len(dt), len(gt)
    both = (dt.labels > 0) & (gt.labels > 0)
    inter = np.bincount(
        (dt.labels[both] - 1) * num_gt + gt.labels[both] - 1,
        weights=runs.lengths[both],
        minlength=num_dt * num_gt).reshape(num_dt, num_gt)
    # The official code sums int64 pixel counts: the same integers here
    # (sums of run lengths, exact in float64 below 2**53).
    inter = inter.astype(np.int64)
    union = (dt.areas.astype(np.int64)[:, None] +
             gt.areas.astype(np.int64)[None, :] - inter)
    with np.errstate(divide='ignore', invalid='ignore'):
        ious = inter / union
    return np.where(union > 0, ious, 0.0)


def image_ious(gt_path: str, dt_path: str,
               ann_score: Sequence[Tuple]) -> Dict[str, np.ndarray]:
    """The official ``compute_iou`` dict of one image (without ``ind``)."""
    return bitmask_ious(read_bitmask(gt_path), read_bitmask(dt_path),
                        ann_score, gt_path, dt_path)


def bitmask_ious(gt_bitmask: np.ndarray, dt_bitmask: np.ndarray,
                 ann_score: Sequence[Tuple], gt_path: str = '<gt>',
                 dt_path: str = '<prediction>') -> Dict[str, np.ndarray]:
    """:func:`image_ious` of two (H, W, 4) uint8 RGBA arrays."""
    if dt_bitmask.shape != gt_bitmask.shape:
        raise ValueError(
            f'{dt_path}: size {dt_bitmask.shape[1]}x{dt_bitmask.shape[0]} '
            f'differs from its GT ({gt_bitmask.shape[1]}x'
            f'{gt_bitmask.shape[0]})')
    runs = Runs(gt_bitmask, dt_bitmask)
    gt = parse_gt(runs, gt_path)
    if len(gt) > MAX_GT:
        raise ValueError(f'{gt_path}: {len(gt)} GT instances; the '
                         f'official evaluator handles at most {MAX_GT}')
    dt = parse_pred(runs, ann_score, dt_path)
    ious = intersection_over_union(dt, gt, runs)
    return dict(ious=ious, gt_areas=gt.areas, gt_cat_ids=gt.categories,
                gt_crowds=np.bitwise_and(gt.attributes, 2),
                gt_ignores=np.bitwise_and(gt.attributes, 1),
                dt_areas=dt.areas, dt_scores=dt.scores,
                dt_cat_ids=dt.categories)


class FastInsSegEval(BDD100KInsSegEval):
    """``BDD100KInsSegEval`` with the per-image pass replaced; matching,
    accumulation and summary are the official ones."""

    def compute_iou(self, img_ind: int) -> dict:
        img_name = self.img_names[img_ind]
        if img_name not in self.img2score:
            raise ValueError(f'{self.dt_json}: no entry for {img_name}')
        result = image_ious(self.gt_paths[img_name],
                            self.dt_paths[img_name],
                            self.img2score[img_name])
        result['ind'] = img_ind
        return result

    def compute_match(self, img_ind: int) -> Dict[int, dict]:
        """The official ``BDD100KInsSegEval.compute_match``, same output.

        The official loop redoes the greedy matching for each of the four
        area ranges although it does not depend on them (only the ignore
        flags do); here it runs once per category and IoU threshold, on
        Python floats (the rows are a few elements long).
        """
        res = self.iou_res[img_ind]
        p = self.params
        area_num = len(p.areaRng)
        img_num = len(self)
        thrs = [float(t) for t in p.iouThrs]
        thr_num = len(thrs)
        to_updates = {}
        for cat_ind, cat_id in enumerate(p.catIds):
            gt_inds_c = res['gt_cat_ids'] == cat_id
            dt_inds_c = res['dt_cat_ids'] == cat_id
            gt_areas_c = res['gt_areas'][gt_inds_c]
            gt_crowds_c = res['gt_crowds'][gt_inds_c]
            gt_ignores_c = res['gt_ignores'][gt_inds_c]
            dt_areas_c = res['dt_areas'][dt_inds_c]
            dt_scores_c = res['dt_scores'][dt_inds_c]
            ious_c = res['ious'][dt_inds_c, :][:, gt_inds_c]
            gt_num_c, dt_num_c = ious_c.shape[1], ious_c.shape[0]

            # matched[t][d]: the GT that detection d takes at threshold t.
            matched = [[-1] * dt_num_c for _ in range(thr_num)]
            if gt_num_c:
                rows = ious_c.tolist()
                crowd = [bool(c) for c in gt_crowds_c]
                for t_ind, thr in enumerate(thrs):
                    taken = [False] * gt_num_c
                    for d_ind, row in enumerate(rows):
                        # max and first argmax over the GT not taken yet
                        # (taken columns read 0.0, as the official zeroes
                        # them).
                        best, g_ind = -1.0, -1
                        for g, iou in enumerate(row):
                            if taken[g]:
                                iou = 0.0
                            if iou > best:
                                best, g_ind = iou, g
                        if best < thr:
                            continue
                        matched[t_ind][d_ind] = g_ind
                        if not crowd[g_ind]:
                            taken[g_ind] = True
            match_arr = np.array(matched, dtype=np.int64).reshape(
                thr_num, dt_num_c)
            dt_matches = (match_arr >= 0).astype(np.float64)
            gt_matches = np.zeros((thr_num, gt_num_c))
            t_hit, d_hit = np.nonzero(match_arr >= 0)
            gt_matches[t_hit, match_arr[t_hit, d_hit]] = 1

            for area_ind, area_rng in enumerate(p.areaRng):
                gt_out_of_range_a = np.logical_or(area_rng[0] > gt_areas_c,
                                                  gt_areas_c > area_rng[1])
                gt_ignores_a = gt_ignores_c | gt_out_of_range_a
                dt_ignores_a = np.zeros((thr_num, dt_num_c))
                dt_ignores_a[t_hit, d_hit] = gt_ignores_a[match_arr[t_hit,
                                                                    d_hit]]
                dt_out_of_range_a = np.logical_or(
                    area_rng[0] > dt_areas_c,
                    dt_areas_c > area_rng[1]).reshape(1, -1).repeat(
                        thr_num, axis=0)
                dt_ignores_a = np.logical_or(
                    dt_ignores_a,
                    np.logical_and(np.logical_not(dt_matches),
                                   dt_out_of_range_a))
                eval_ind = (cat_ind * area_num * img_num +
                            area_ind * img_num + img_ind)
                to_updates[eval_ind] = {
                    'category_id': cat_id,
                    'aRng': p.areaRng[area_ind],
                    'maxDet': p.maxDets[-1],
                    'dtMatches': dt_matches.copy(),
                    'gtMatches': gt_matches.copy(),
                    'dtScores': dt_scores_c,
                    'gtIgnore': gt_ignores_a,
                    'dtIgnore': dt_ignores_a,
                }
        return to_updates


def only_predicted_hint(num_predicted: int) -> str:
    """How to score only the GT images that have a prediction."""
    return (f'to score the {num_predicted} images that have one, add '
            '--only-predicted')


def gt_to_score(gt_paths: Sequence[str], pred_paths: Sequence[str],
                only_predicted: bool = False) -> List[str]:
    """The GT bitmasks to score: every one, each with a prediction of its
    file name (the official rule), or, with ``only_predicted``, those that
    have a prediction.

    Raises:
        ValueError: a GT bitmask without prediction (and not
            ``only_predicted``: the message says how to score the others),
            or no GT bitmask with a prediction at all.
    """
    names = {os.path.basename(p) for p in pred_paths}
    scored = [p for p in gt_paths if os.path.basename(p) in names]
    if not scored:
        raise ValueError(
            f'none of the {len(gt_paths)} GT bitmasks has a prediction '
            'bitmask of its file name (<image stem>.png)')
    if len(scored) < len(gt_paths) and not only_predicted:
        missing = [p for p in gt_paths if os.path.basename(p) not in names]
        raise ValueError(
            f'{len(missing)} of the {len(gt_paths)} GT bitmasks '
            f'{"has" if len(missing) == 1 else "have"} no prediction '
            f'bitmask, e.g. {os.path.basename(missing[0])}: '
            f'{only_predicted_hint(len(scored))}')
    return scored


@contextlib.contextmanager
def quiet_evaluator():
    """Keep the official code's progress messages ("evaluating...",
    "0 images are missed", pycocotools' "Accumulating...") off the console,
    for callers that print the result table themselves."""
    from bdd100k.common.logger import logger
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def evaluate_ins_seg(gt_paths: Sequence[str], pred_paths: Sequence[str],
                     score_file: str, nproc: Optional[int] = None,
                     config=None):
    """``bdd100k.eval.ins_seg.evaluate_ins_seg``, with the fast per-image
    pass: the same ``scalabel.eval.detect.DetResult``.

    Args: those of :func:`accumulated_evaluator`.
    """
    return accumulated_evaluator(gt_paths, pred_paths, score_file, nproc,
                                 config).summarize()


def accumulated_evaluator(gt_paths: Sequence[str],
                          pred_paths: Sequence[str], score_file: str,
                          nproc: Optional[int] = None,
                          config=None) -> FastInsSegEval:
    """The evaluator of :func:`evaluate_ins_seg` after ``accumulate``: its
    ``summarize()`` is the result, ``eval['precision']`` the official
    precision arrays, ``iou_res`` the per-image IoUs and instances.

    Args:
        gt_paths: GT bitmask PNGs (their order is the evaluation order, as
            the official CLI sorts them).
        pred_paths: prediction bitmask PNGs, matched to the GT by file name.
        score_file: the predictions' ``score.json``.
        nproc: processes (None: :func:`default_nproc`).
        config: scalabel ``Config`` of the categories (None: BDD100K's
            ``ins_seg``).
    """
    from bdd100k.common.logger import logger
    from bdd100k.common.utils import load_bdd100k_config, reorder_preds
    from scalabel.label.transforms import get_coco_categories

    gt_paths = list(gt_paths)
    if config is None:
        config = load_bdd100k_config('ins_seg').scalabel
    if nproc is None:
        nproc = default_nproc(len(gt_paths))
    names = {os.path.basename(p) for p in pred_paths}
    missing = [p for p in gt_paths if os.path.basename(p) not in names]
    if missing:
        raise ValueError(f'{len(missing)} GT bitmasks have no prediction '
                         f'bitmask, e.g. {os.path.basename(missing[0])}')
    categories = get_coco_categories(config)
    pred_paths = reorder_preds(gt_paths, list(pred_paths))
    evaluator = FastInsSegEval(
        gt_paths, pred_paths, score_file,
        [c['name'] for c in categories], nproc)
    evaluator.params.catIds = [c['id'] for c in categories]
    logger.info('evaluating...')
    evaluator.evaluate()
    logger.info('accumulating...')
    evaluator.accumulate()
    return evaluator
