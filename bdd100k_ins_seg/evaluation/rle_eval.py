"""The official scores of RLE json files (Scalabel frames with RLE masks).

``python -m bdd100k.eval.run -t ins_seg -g GT.json -r PRED.json`` loads
both files as BDD100K frames, maps their categories to the ins_seg config
(``bdd100k_to_scalabel``) and scores them with
``scalabel.eval.ins_seg.evaluate_ins_seg`` (COCO's matching on the RLEs,
crowd and ignored GT as ``iscrowd``; overlapping predictions are removed).
:func:`load_frames` and :func:`evaluate_frames` are those steps, the
latter also returning the accumulated ``COCOevalV2`` whose precision
arrays give the result (for the PR curves of
:mod:`bdd100k_ins_seg.analysis`).
"""
from typing import List, Optional, Tuple


def load_frames(path: str, nproc: int = 1) -> List:
    """Scalabel ``Frame`` objects of an RLE json, as the official CLI loads
    them (``bdd100k.eval.run._load_frames``)."""
    from bdd100k.common.utils import load_bdd100k_config
    from bdd100k.label.to_scalabel import bdd100k_to_scalabel
    from scalabel.label.io import load
    config = load_bdd100k_config('ins_seg')
    return bdd100k_to_scalabel(load(path, nproc).frames, config)


def frames_from_dicts(frames) -> List:
    """Scalabel ``Frame`` objects of plain frame dicts (e.g.
    :func:`bdd100k_ins_seg.formats.rle.prediction_frames`), as
    :func:`load_frames` would give them from a file."""
    from bdd100k.common.utils import load_bdd100k_config
    from bdd100k.label.to_scalabel import bdd100k_to_scalabel
    from scalabel.label.io import parse
    config = load_bdd100k_config('ins_seg')
    return bdd100k_to_scalabel([parse(dict(f)) for f in frames], config)


def evaluate_frames(gt_frames, pred_frames, nproc: int = 1,
                    config=None) -> Tuple[object, Optional[object]]:
    """``scalabel.eval.ins_seg.evaluate_ins_seg``, step by step.

    Returns ``(DetResult, COCOevalV2)``: the official result, and the
    evaluator after ``accumulate`` (None where the official code returns
    the empty result: no predictions at all).
    """
    from bdd100k.common.utils import load_bdd100k_config
    from scalabel.eval.detect import COCOV2, COCOevalV2, DetResult
    from scalabel.eval.utils import check_overlap, reorder_preds
    from scalabel.label.to_coco import scalabel2coco_ins_seg

    if config is None:
        config = load_bdd100k_config('ins_seg').scalabel
    gt_frames = sorted(gt_frames, key=lambda frame: frame.name)
    ann_coco = scalabel2coco_ins_seg(gt_frames, config)
    ann_coco['annotations'] = [
        ann for ann in ann_coco['annotations'] if 'segmentation' in ann]
    coco_gt = COCOV2(None, ann_coco)
    pred_frames = reorder_preds(gt_frames, pred_frames)
    # Drops the predictions of a frame whose masks overlap. In one process:
    # the official pool passes this function an argument it does not take
    # (a TypeError with nproc > 1).
    check_overlap(pred_frames, config, 1)
    pred_res = scalabel2coco_ins_seg(pred_frames, config)['annotations']
    if not pred_res:
        return DetResult.empty(coco_gt), None
    for ann in pred_res:
        ann.pop('bbox', None)
    coco_dt = coco_gt.loadRes(pred_res)
    cat_ids = coco_dt.getCatIds()
    cat_names = [cat['name'] for cat in coco_dt.loadCats(cat_ids)]
    coco_eval = COCOevalV2(cat_names, coco_gt, coco_dt, 'segm', nproc)
    coco_eval.params.imgIds = sorted(coco_gt.getImgIds())
    coco_eval.evaluate()
    coco_eval.accumulate()
    return coco_eval.summarize(), coco_eval


def evaluate_rle_files(gt_file: str, pred_file: str, nproc: int = 1):
    """The official ``DetResult`` of two RLE json files (what
    ``bdd100k.eval.run`` computes for them)."""
    return evaluate_frames(load_frames(gt_file, nproc),
                           load_frames(pred_file, nproc), nproc)[0]


__all__ = ['load_frames', 'frames_from_dicts', 'evaluate_frames',
           'evaluate_rle_files']
