"""Where the AP goes: confusion matrix, per-image counts, COCO-analyze.

All three read the official per-image quantities of the bitmask protocol
(:class:`.evaluate.Evaluation` ``per_image``): the non-overlapping masks'
IoUs of every prediction with every GT instance, in any class.

- :func:`match_image`: one-to-one matching across classes at mask IoU >=
  0.5 of the predictions scoring >= a threshold, highest score first, each
  taking the unused GT instance it overlaps most (as the official matching
  does within a class). A prediction on an ignore region, or a second one
  on a crowd region (which the official matching lets several predictions
  take), is neither right nor wrong: it is left out, as the official
  protocol leaves it out of the AP. GT instances of ignore regions are not
  counted; crowd regions are.
- :func:`confusion_matrix`: mmdet's layout: row = GT class (last row:
  predictions that matched no GT), column = predicted class (last column:
  GT instances no prediction matched).
- :func:`error_breakdown`: COCO's ``analyze()`` per class: the precision
  at IoU .75 and .5 (the official arrays), then at IoU .1 (``Loc``:
  localisation errors forgiven), with false positives on GT of a class of
  the same super-category forgiven (``Sim``), of any other class (``Oth``),
  every false positive forgiven (``BG``) and every miss recovered (``FN``:
  precision 1). Each is the official accumulation (``COCOeval.accumulate``)
  run again on the official matching at IoU .1 (``compute_match``) with
  those predictions marked ignored.
"""
import contextlib
import io
from typing import Dict, List, Sequence, Tuple

import numpy as np

#: Row/column name of "no match" in the confusion matrix.
BACKGROUND = 'background'
#: The error breakdown's steps, in COCO-analyze's order.
STEPS = ('C75', 'C50', 'Loc', 'Sim', 'Oth', 'BG', 'FN')


def match_image(res: Dict, cat_ids: Sequence[int], score_thr: float = 0.3,
                iou_thr: float = 0.5) -> Dict:
    """Match one image's predictions to its GT instances across classes.

    Args:
        res: the image's official ``compute_iou`` dict.
        cat_ids: the evaluated category ids (GT of other ids are skipped,
            as the official evaluator skips them).

    Returns:
        dict of arrays: ``gt_class``/``dt_class`` (class indices, -1 for
        GT the protocol skips), ``gt_counted`` (a GT instance of the
        matrix: not an ignore region, a known class), ``gt_match`` (the
        prediction that took each GT, -1), ``dt_match`` (the GT each
        prediction took, -1), ``dt_used`` (scores >= ``score_thr``),
        ``dt_ignored`` (left out, see the module doc).
    """
    index_of = {c: i for i, c in enumerate(cat_ids)}
    gt_class = np.array([index_of.get(int(c), -1)
                         for c in res['gt_cat_ids']], np.int64)
    dt_class = np.array([index_of.get(int(c), -1)
                         for c in res['dt_cat_ids']], np.int64)
    crowd = np.asarray(res['gt_crowds']) != 0
    ignore = np.asarray(res['gt_ignores']) != 0
    ious = np.asarray(res['ious'], np.float64).reshape(len(dt_class),
                                                       len(gt_class))
    scores = np.asarray(res['dt_scores'], np.float64)
    known = gt_class >= 0
    dt_used = (scores >= score_thr) & (dt_class >= 0)
    gt_match = np.full(len(gt_class), -1, np.int64)
    dt_match = np.full(len(dt_class), -1, np.int64)
    dt_ignored = np.zeros(len(dt_class), bool)
    taken = ~known
    for d in np.flatnonzero(dt_used):  # decreasing score: the dict's order
        row = np.where(taken, 0.0, ious[d])
        g = int(np.argmax(row)) if len(row) else -1
        if g < 0 or row[g] < iou_thr:
            continue
        if not crowd[g]:
            taken[g] = True
        if ignore[g] or gt_match[g] >= 0:
            dt_ignored[d] = True
            continue
        gt_match[g] = d
        dt_match[d] = g
    return dict(gt_class=gt_class, dt_class=dt_class,
                gt_counted=known & ~ignore, gt_match=gt_match,
                dt_match=dt_match, dt_used=dt_used, dt_ignored=dt_ignored)


def image_counts(match: Dict) -> Dict:
    """GT, predictions, matched (same class), missed, false positives and
    F1 at IoU .5 of one :func:`match_image` result."""
    gt = int(match['gt_counted'].sum())
    used = match['dt_used']
    scored = used & ~match['dt_ignored']
    hit = match['dt_match'] >= 0
    same = np.zeros(len(hit), bool)
    same[hit] = (match['gt_class'][match['dt_match'][hit]] ==
                 match['dt_class'][hit])
    matched = int(same.sum())
    preds = int(scored.sum())
    denominator = gt + preds
    return dict(gt=gt, pred=int(used.sum()), ignored=int(
        (used & match['dt_ignored']).sum()), matched=matched,
        missed=gt - matched, fp=preds - matched,
        f1=1.0 if denominator == 0 else 2.0 * matched / denominator)


def confusion_matrix(per_image: Sequence[Dict], cat_ids: Sequence[int],
                     score_thr: float = 0.3, iou_thr: float = 0.5
                     ) -> Tuple[np.ndarray, List[Dict], List[Dict]]:
    """(K+1, K+1) counts over all images (see the module doc), with each
    image's :func:`match_image` result and :func:`image_counts`."""
    k = len(cat_ids)
    matrix = np.zeros((k + 1, k + 1), np.int64)
    matches, counts = [], []
    for res in per_image:
        m = match_image(res, cat_ids, score_thr, iou_thr)
        for g in np.flatnonzero(m['gt_counted']):
            d = m['gt_match'][g]
            matrix[m['gt_class'][g], k if d < 0 else m['dt_class'][d]] += 1
        fp = m['dt_used'] & ~m['dt_ignored'] & (m['dt_match'] < 0)
        np.add.at(matrix, (k, m['dt_class'][fp]), 1)
        matches.append(m)
        counts.append(image_counts(m))
    return matrix, matches, counts


class _Rerun:
    """The official matching and accumulation on given per-image dicts:
    ``FastInsSegEval``'s ``compute_match`` (the official one) and
    ``COCOeval.accumulate``, at IoU .1, area "all", 100 detections."""

    def __init__(self, per_image: Sequence[Dict], cat_ids: Sequence[int],
                 cat_names: Sequence[str]):
        from scalabel.eval.detect import COCOevalV2

        from bdd100k_ins_seg.evaluation.bitmask_eval import FastInsSegEval

        class Evaluator(FastInsSegEval):
            def __init__(self):  # no files: the dicts are given
                COCOevalV2.__init__(self, list(cat_names), nproc=1)

        ev = Evaluator()
        ev.iou_res = list(per_image)
        ev.img_names = [str(i) for i in range(len(per_image))]
        p = ev.params
        p.imgIds = ev.img_names
        p.catIds = list(cat_ids)
        p.iouThrs = np.array([0.1])
        p.areaRng, p.areaRngLbl = [p.areaRng[0]], ['all']
        p.maxDets = [100]
        self.ev = ev
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        self.base = ev.evalImgs

    def index(self, k: int, i: int) -> int:
        return k * len(self.ev.img_names) + i

    def accumulate(self, eval_imgs: List[Dict]) -> np.ndarray:
        """(R, K) precision of the official accumulation of ``eval_imgs``
        (-1: a class without GT)."""
        self.ev.evalImgs = eval_imgs
        with contextlib.redirect_stdout(io.StringIO()):
            self.ev.accumulate()
        return self.ev.eval['precision'][0, :, :, 0, 0]


def _forgive(rerun: _Rerun, per_image: Sequence[Dict],
             cat_ids: Sequence[int], allowed) -> List[Dict]:
    """The IoU-.1 matches with chosen false positives marked ignored.

    ``allowed(k, gt_cat_id)``: whether a false positive of class index
    ``k`` on a GT of ``gt_cat_id`` (IoU >= .1) is forgiven (None: every
    false positive is). Each GT forgives one prediction, the best scoring,
    unless it is a crowd region.
    """
    out = list(rerun.base)
    for i, res in enumerate(per_image):
        ious = np.asarray(res['ious'], np.float64)
        gt_cats = np.asarray(res['gt_cat_ids'])
        crowd = np.asarray(res['gt_crowds']) != 0
        for k, cat_id in enumerate(cat_ids):
            e = rerun.base[rerun.index(k, i)]
            if not e or not e['dtMatches'].shape[1]:
                continue
            fp = (e['dtMatches'][0] == 0) & ~e['dtIgnore'][0].astype(bool)
            if not fp.any():
                continue
            e = dict(e, dtIgnore=e['dtIgnore'].astype(bool).copy())
            if allowed is None:
                e['dtIgnore'][0, fp] = True
            else:
                rows = ious[np.asarray(res['dt_cat_ids']) == cat_id]
                other = np.array([allowed(k, int(c)) for c in gt_cats],
                                 bool)
                used = np.zeros(len(gt_cats), bool)
                for d in np.flatnonzero(fp):
                    row = np.where(other & ~used, rows[d], 0.0)
                    if not len(row) or row.max() < 0.1:
                        continue
                    g = int(np.argmax(row))
                    used[g] = not crowd[g]
                    e['dtIgnore'][0, d] = True
            out[rerun.index(k, i)] = e
    return out


def error_breakdown(evaluation) -> Dict[str, np.ndarray]:
    """COCO-analyze's seven (R, K) precision arrays (see the module doc),
    keyed by :data:`STEPS` (-1 where a class has no GT)."""
    classes, cat_ids = evaluation.classes, evaluation.cat_ids
    k_num = len(classes)
    curves = {}
    for step, iou in (('C75', 0.75), ('C50', 0.5)):
        curves[step] = np.stack([evaluation.curve(k, iou)
                                 for k in range(k_num)], axis=1)
    rerun = _Rerun(evaluation.per_image, cat_ids, classes)
    curves['Loc'] = rerun.accumulate(rerun.base).copy()
    group_of = {cat_ids[k]: evaluation.groups.get(c)
                for k, c in enumerate(classes)}

    def similar(k, gt_cat):
        return gt_cat != cat_ids[k] and gt_cat in group_of and \
            group_of[gt_cat] == group_of[cat_ids[k]]

    def other(k, gt_cat):
        return gt_cat != cat_ids[k] and gt_cat in group_of

    for step, allowed in (('Sim', similar), ('Oth', other), ('BG', None)):
        curves[step] = rerun.accumulate(_forgive(
            rerun, evaluation.per_image, cat_ids, allowed)).copy()
    has_gt = curves['Loc'][0] > -1
    curves['FN'] = np.where(has_gt[None, :], 1.0, -1.0) * np.ones_like(
        curves['Loc'])
    return curves


def step_aps(curves: Dict[str, np.ndarray]) -> Dict[str, Dict]:
    """AP x100 of every step per class index and overall (the mean of the
    defined points, as the official summary averages), NaN without GT."""
    out = {}
    for step in STEPS:
        c = curves[step]
        per_class = []
        for k in range(c.shape[1]):
            defined = c[:, k][c[:, k] > -1]
            per_class.append(float(np.mean(defined) * 100)
                             if len(defined) else float('nan'))
        defined = c[c > -1]
        out[step] = dict(per_class=per_class, overall=float(
            np.mean(defined) * 100) if len(defined) else float('nan'))
    return out


def errors_summary(evaluation, curves) -> Dict:
    """The ``errors`` part of summary.json: per class (and ``OVERALL``)
    the AP of every step."""
    aps = step_aps(curves)
    table = {name: {step: aps[step]['per_class'][k] for step in STEPS}
             for k, name in enumerate(evaluation.classes)}
    table['OVERALL'] = {step: aps[step]['overall'] for step in STEPS}
    return dict(steps=list(STEPS), iou=dict(C75=0.75, C50=0.5, Loc=0.1),
                ap=table)


def mean_curve(c: np.ndarray) -> np.ndarray:
    """The mean over the classes with GT of an (R, K) array (-1: none)."""
    defined = c[0] > -1
    if not defined.any():
        return np.full(c.shape[0], -1.0)
    return c[:, defined].mean(axis=1)


__all__ = ['BACKGROUND', 'STEPS', 'match_image', 'image_counts',
           'confusion_matrix', 'error_breakdown', 'step_aps',
           'errors_summary', 'mean_curve']
