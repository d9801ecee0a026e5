"""The official evaluation, kept open for analysis.

:func:`evaluate` scores GT and predictions given as bitmask folders (+ the
score file) or as RLE json files, by the official code paths of
``python -m bdd100k.eval.run -t ins_seg`` (:mod:`..evaluation.bitmask_eval`
for bitmasks, :mod:`..evaluation.rle_eval` for RLE json), and keeps what the
analysis needs besides the result: the precision arrays of the official
accumulation (``COCOeval.eval['precision']``, [IoU x recall x class x area
x max detections]) and, per image, the official per-image quantities of the
bitmask protocol (``compute_iou``: the IoUs of every prediction with every
GT instance, classes, scores, crowd and ignore flags). RLE inputs are
painted into bitmasks for the latter (predictions by increasing score, so
the higher score wins where masks overlap).
"""
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from bdd100k_ins_seg.cli import InputError


@dataclass
class Evaluation:
    """The official result and what the analysis reads besides it.

    Attributes:
        official: ``dict(DetResult)``, the json the official CLI writes with
            ``--out-file``.
        precision: the official ``eval['precision']`` ([T, R, K, A, M]), or
            None where the official code scores no prediction at all.
        iou_thrs, rec_thrs: the thresholds of its T and R axes.
        classes: the 8 class names (K axis order); ``cat_ids`` their ids.
        groups: class name -> its super-category (human, vehicle, bike).
        names: the images, in evaluation order (``<stem>.png``).
        per_image: per image, the official ``compute_iou`` dict (bitmask
            protocol: ``ious`` (D, G), ``gt_cat_ids``, ``gt_crowds``,
            ``gt_ignores``, ``dt_scores`` (decreasing), ``dt_cat_ids``...).
        kind: ``'bitmask'`` or ``'rle'``; ``sources`` what to read the
            bitmasks of an image from (:meth:`bitmasks`).
    """
    official: Dict
    precision: Optional[np.ndarray]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    classes: List[str]
    cat_ids: List[int]
    groups: Dict[str, str]
    names: List[str]
    per_image: List[Dict]
    kind: str
    sources: Dict = field(default_factory=dict)
    area_index: int = 0
    maxdet_index: int = -1

    def curve(self, class_index: int, iou: Optional[float]) -> np.ndarray:
        """The official 101-point precision of a class (area all, 100
        detections) at IoU ``iou``, or the mean over the 10 thresholds for
        None; -1 where the class has no GT."""
        if self.precision is None:
            return np.full(len(self.rec_thrs), -1.0)
        p = self.precision[:, :, class_index, self.area_index,
                           self.maxdet_index]
        if iou is None:
            return p.mean(axis=0)
        t = int(np.flatnonzero(np.isclose(self.iou_thrs, iou))[0])
        return p[t]

    def bitmasks(self, i: int) -> Tuple[np.ndarray, np.ndarray, List]:
        """(GT RGBA array, prediction RGBA array, prediction ``(index,
        score)`` pairs) of image ``i``."""
        name = self.names[i]
        if self.kind == 'bitmask':
            from bdd100k_ins_seg.evaluation.bitmask_eval import read_bitmask
            scores = self.sources['scores'].get(name, {})
            pairs = [(index, label['score'])
                     for index, label in scores.items()]
            return (read_bitmask(self.sources['gt'][name]),
                    read_bitmask(self.sources['pred'][name]), pairs)
        return _rasterize_pair(self.sources['gt'][name],
                               self.sources['pred'].get(name),
                               self.sources.get('size', {}).get(name))


def _groups(config) -> Dict[str, str]:
    groups = {}
    for top in config.categories:
        for sub in top.subcategories or []:
            groups[sub.name] = top.name
        if not top.subcategories:
            groups[top.name] = top.name
    return groups


def _label_dicts(frame) -> List[Dict]:
    """A scalabel Frame's labels as the plain dicts of
    :func:`..formats.rle.rasterize`."""
    out = []
    for label in frame.labels or []:
        if label.rle is None:
            continue
        out.append(dict(id=label.id, category=label.category,
                        score=label.score if label.score is not None else 0.0,
                        attributes=dict(label.attributes or {}),
                        rle=dict(counts=label.rle.counts,
                                 size=list(label.rle.size))))
    return out


def _rasterize_pair(gt_labels, pred_labels, size):
    from bdd100k_ins_seg.formats.rle import rasterize
    height, width = size
    gt, _ = rasterize(gt_labels, height, width, gt=True)
    dt, pairs = rasterize(pred_labels or [], height, width)
    return gt, dt, pairs


def _quiet():
    """The official code's progress messages and pycocotools' prints: off
    the output (the analysis has its own)."""
    from bdd100k_ins_seg.evaluation.bitmask_eval import quiet_evaluator
    return quiet_evaluator()


def _bitmask_inputs(gt: str, pred: str, score_file: Optional[str],
                    nproc: Optional[int]):
    from bdd100k.common.utils import list_files

    from bdd100k_ins_seg.evaluation.bitmask_eval import accumulated_evaluator
    from bdd100k_ins_seg.formats.bitmask import load_score_file
    if not score_file:
        raise InputError('--score-file', 'bitmask predictions need their '
                         'score.json')
    if not osp.isfile(score_file):
        raise InputError('--score-file', f'not found: {score_file}')
    try:
        scores = load_score_file(score_file)
    except (OSError, ValueError) as e:
        raise InputError(f'score file {score_file}', str(e)) from None
    gt_paths = list_files(gt, '.png', with_prefix=True)
    pred_paths = list_files(pred, '.png', with_prefix=True)
    if not gt_paths:
        raise InputError('--gt', f'no bitmask PNGs in {gt}')
    if not pred_paths:
        raise InputError('--result', f'no bitmask PNGs in {pred}')
    try:
        with _quiet():
            evaluator = accumulated_evaluator(gt_paths, pred_paths,
                                              score_file, nproc=nproc)
    except (ValueError, OSError) as e:
        raise InputError('evaluation', str(e)) from None
    sources = dict(gt=evaluator.gt_paths, pred=evaluator.dt_paths,
                   scores=scores)
    per_image = [evaluator.iou_res[i] for i in range(len(evaluator))]
    return (evaluator.summarize(), evaluator, list(evaluator.img_names),
            per_image, sources)


def _rle_inputs(gt: str, pred: str, nproc: Optional[int]):
    from bdd100k_ins_seg.evaluation.bitmask_eval import bitmask_ious
    from bdd100k_ins_seg.evaluation.rle_eval import (evaluate_frames,
                                                     load_frames)
    from bdd100k_ins_seg.formats.rle import frame_size, read_rle_file
    frames = {}
    for flag, path in (('--gt', gt), ('--result', pred)):
        try:  # every label with its RLE (a score.json has none)
            read_rle_file(path)
        except (OSError, ValueError) as e:
            raise InputError(f'{flag} {path}', str(e)) from None
    for flag, path in (('--gt', gt), ('--result', pred)):
        try:
            frames[flag] = load_frames(path, 1)
        except Exception as e:  # noqa: BLE001 pydantic, json, io errors
            raise InputError(f'{flag} {path}', f'not a Scalabel RLE json: '
                             f'{type(e).__name__}: {e}') from None
    try:
        with _quiet():
            result, coco_eval = evaluate_frames(frames['--gt'],
                                                frames['--result'],
                                                nproc or 1)
    except (ValueError, KeyError, AssertionError) as e:
        raise InputError('evaluation', str(e)) from None
    gt_by_name = {f.name: _label_dicts(f) for f in frames['--gt']}
    pred_by_name = {f.name: _label_dicts(f) for f in frames['--result']}
    names, per_image, sizes = [], [], {}
    for name in sorted(gt_by_name):
        png = osp.splitext(name)[0] + '.png'
        size = (frame_size(dict(labels=gt_by_name[name])) or
                frame_size(dict(labels=pred_by_name.get(name))) or (1, 1))
        sizes[png] = size
        gt_bitmask, dt_bitmask, pairs = _rasterize_pair(
            gt_by_name[name], pred_by_name.get(name), size)
        per_image.append(bitmask_ious(gt_bitmask, dt_bitmask, pairs,
                                      f'{gt}:{name}', f'{pred}:{name}'))
        names.append(png)
    sources = dict(
        gt={osp.splitext(n)[0] + '.png': v for n, v in gt_by_name.items()},
        pred={osp.splitext(n)[0] + '.png': v
              for n, v in pred_by_name.items()},
        size=sizes)
    return result, coco_eval, names, per_image, sources


def _as_rle(gt: str, pred: str, kinds: List[str],
            score_file: Optional[str]) -> Tuple[str, str]:
    """A bitmask folder beside an RLE json, converted to RLE json (in a
    temporary folder) by :mod:`bdd100k_ins_seg.formats.rle`."""
    import json
    import tempfile

    from bdd100k_ins_seg.formats import rle
    if kinds[1] == 'bitmask' and not (score_file and
                                      osp.isfile(score_file)):
        raise InputError('--score-file', 'bitmask predictions need their '
                         'score.json')
    folder = tempfile.mkdtemp(prefix='bdd100k_analysis_')
    try:
        if kinds[0] == 'bitmask':
            path = osp.join(folder, 'gt.json')
            rle.write_rle_file(path, rle.gt_frames(gt))
            return path, pred
        with open(score_file, encoding='utf-8') as f:
            frames = json.load(f)
        path = osp.join(folder, 'pred.json')
        rle.write_rle_file(path, rle.prediction_frames(pred, frames))
        return gt, path
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError('--gt/--result', f'converting the bitmasks to RLE: '
                         f'{e}') from None


def evaluate(gt: str, pred: str, score_file: Optional[str] = None,
             nproc: Optional[int] = None) -> Evaluation:
    """The official evaluation of ``pred`` against ``gt``.

    Args:
        gt, pred: bitmask folders or RLE json files; one of each: the
            bitmasks are converted to RLE and both scored as RLE json.
        score_file: the predictions' ``score.json`` (bitmasks only).
        nproc: processes of the per-image pass (bitmasks).

    Raises:
        InputError: missing or unreadable inputs.
    """
    kinds = []
    for flag, path in (('--gt', gt), ('--result', pred)):
        if osp.isdir(path):
            kinds.append('bitmask')
        elif osp.isfile(path) and path.endswith('.json'):
            kinds.append('rle')
        elif not osp.exists(path):
            raise InputError(flag, f'not found: {path}')
        else:
            raise InputError(flag, f'neither a bitmask folder nor an RLE '
                             f'.json: {path}')
    converted = None
    if kinds[0] != kinds[1]:  # the bitmask side as RLE json
        gt, pred = _as_rle(gt, pred, kinds, score_file)
        converted = osp.dirname(gt if kinds[0] == 'bitmask' else pred)
        kinds = ['rle', 'rle']
    try:
        return _evaluate(gt, pred, kinds[0], score_file, nproc)
    finally:
        if converted:
            import shutil
            shutil.rmtree(converted, ignore_errors=True)


def _evaluate(gt: str, pred: str, kind: str, score_file: Optional[str],
              nproc: Optional[int]) -> Evaluation:
    from bdd100k.common.utils import load_bdd100k_config
    from scalabel.label.transforms import get_coco_categories
    config = load_bdd100k_config('ins_seg').scalabel
    categories = get_coco_categories(config)
    if kind == 'bitmask':
        result, evaluator, names, per_image, sources = _bitmask_inputs(
            gt, pred, score_file, nproc)
    else:
        result, evaluator, names, per_image, sources = _rle_inputs(
            gt, pred, nproc)
    if evaluator is not None:
        params = evaluator.params
        precision = evaluator.eval['precision']
        iou_thrs, rec_thrs = params.iouThrs, params.recThrs
        area_index = list(params.areaRngLbl).index('all')
        maxdet_index = list(params.maxDets).index(100)
        eval_ids = list(params.catIds)
    else:  # no prediction at all: the official empty result
        from pycocotools.cocoeval import Params
        params = Params(iouType='segm')
        precision, iou_thrs, rec_thrs = None, params.iouThrs, params.recThrs
        area_index, maxdet_index = 0, -1
        eval_ids = [c['id'] for c in categories]
    cat_ids = [c['id'] for c in categories]
    if precision is not None and eval_ids != cat_ids:
        # the RLE path indexes the classes the predictions' COCO lists
        order = [eval_ids.index(c) for c in cat_ids]
        precision = precision[:, :, order]
    return Evaluation(
        official=dict(result), precision=precision, iou_thrs=iou_thrs,
        rec_thrs=rec_thrs, classes=[c['name'] for c in categories],
        cat_ids=cat_ids, groups=_groups(config), names=names,
        per_image=per_image, kind=kind, sources=sources,
        area_index=area_index, maxdet_index=maxdet_index)


__all__ = ['Evaluation', 'evaluate']
