"""The official BDD100K instance-segmentation metric inside mmengine.

Predictions are rendered as non-overlapping bitmasks by
:mod:`bdd100k_ins_seg.bitmask` and scored by the ``bdd100k`` package's own
evaluator (``bdd100k.eval.ins_seg.evaluate_ins_seg``, the code behind
``python -m bdd100k.eval.run -t ins_seg``) against the GT bitmask folder,
so the numbers logged during training and testing are the official ones.
"""
import os
import os.path as osp
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmdet.registry import METRICS

from .bitmask import (atomic_write, bitmask_name, encode_bitmask, frame_name,
                      png_bytes, write_score_file)

#: Summary keys returned (prefixed ``bdd100k/``), in the evaluator's order.
METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10',
                'AR100', 'ARs', 'ARm', 'ARl')


def list_gt_bitmasks(gt_dir: str) -> List[str]:
    """The GT bitmask paths, listed exactly as the official CLI lists them."""
    from bdd100k.common.utils import list_files
    return list_files(gt_dir, '.png', with_prefix=True)


def evaluate_bitmasks(gt_paths: Sequence[str], pred_paths: Sequence[str],
                      score_file: str, nproc: Optional[int] = None):
    """Score prediction bitmasks: the official evaluator's numbers.

    Args:
        gt_paths: GT bitmask PNGs.
        pred_paths: prediction bitmask PNGs, one per GT (same file names).
        score_file: the predictions' ``score.json``.
        nproc: evaluator processes (None: the CPU cores available, bounded;
            see :func:`bdd100k_ins_seg.bitmask_eval.default_nproc`).

    Returns:
        ``scalabel.eval.detect.DetResult``, identical to what
        ``python -m bdd100k.eval.run -t ins_seg`` computes (``dict(result)``
        is the json the CLI writes with ``--out-file``; ``str(result)`` its
        table), by :mod:`bdd100k_ins_seg.bitmask_eval`.
    """
    from .bitmask_eval import evaluate_ins_seg
    return evaluate_ins_seg(gt_paths, pred_paths, score_file, nproc=nproc)


@METRICS.register_module()
class BDD100KInsSegMetric(BaseMetric):
    """Official BDD100K bitmask AP (non-overlapping masks, x100).

    Args:
        gt_dir: folder of GT bitmask PNGs (``<image stem>.png``). Every
            evaluated image needs one; GT files of images that were not
            evaluated (a subset run) are left out with a warning.
        outfile_prefix: folder to keep the predictions in
            (``bitmasks/*.png`` + ``score.json``); a temporary folder if None.
        format_only: only write the predictions (e.g. the test split).
        nproc: processes of the official evaluator.
        score_thr: drop predictions scoring below this.
        coco_ann_file: a COCO json of the same images (``tools/to_coco.py``);
            when given, COCO box and mask AP (overlapping masks, pycocotools,
            the protocol of the BDD100K paper) are reported beside the
            official numbers as ``coco_bbox_mAP``, ``coco_segm_mAP``, ...
        collect_device: 'cpu' or 'gpu', to gather results across ranks.
        prefix: metric name prefix (default ``bdd100k``).

    Returns (from ``evaluate``): ``bdd100k/segm_AP``, ``segm_AP50``,
    ``segm_AP75``, ``segm_APs``, ``segm_APm``, ``segm_APl`` and the
    ``segm_AR*`` recalls, as the official evaluator prints them (x100);
    with ``coco_ann_file`` also ``coco_bbox_*`` and ``coco_segm_*`` (x100).
    """

    default_prefix: Optional[str] = 'bdd100k'

    def __init__(self,
                 gt_dir: Optional[str] = None,
                 outfile_prefix: Optional[str] = None,
                 format_only: bool = False,
                 nproc: int = 2,
                 score_thr: float = 0.0,
                 coco_ann_file: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if format_only and outfile_prefix is None:
            raise ValueError('BDD100KInsSegMetric: format_only needs '
                             'outfile_prefix (where to write the bitmasks)')
        if not format_only and gt_dir is None:
            raise ValueError('BDD100KInsSegMetric: gt_dir (the GT bitmask '
                             'folder) is needed unless format_only=True')
        self.gt_dir = gt_dir
        self.outfile_prefix = outfile_prefix
        self.format_only = format_only
        self.nproc = nproc
        self.score_thr = score_thr
        self._coco_metric = None
        if coco_ann_file is not None and not format_only:
            if not osp.isfile(coco_ann_file):
                raise FileNotFoundError(
                    f'BDD100KInsSegMetric: coco_ann_file not found: '
                    f'{coco_ann_file}')
            from mmdet.evaluation import CocoMetric
            self._coco_metric = CocoMetric(ann_file=coco_ann_file,
                                           metric=['bbox', 'segm'])
        #: ``dict(DetResult)`` of the last evaluation: every class and
        #: metric, as ``bdd100k.eval.run --out-file`` writes it.
        self.last_result: Optional[Dict] = None

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Render each image's predictions into a PNG (kept as bytes, so
        rank 0 can write every image once after gathering)."""
        for sample in data_samples:
            pred = sample['pred_instances']
            scores = pred['scores']
            keep = scores >= self.score_thr
            if not bool(keep.all()):
                pred = {k: pred[k][keep] for k in
                        ('masks', 'labels', 'scores', 'bboxes') if k in pred}
            height, width = sample['ori_shape'][:2]
            if 'masks' not in pred:
                raise ValueError('BDD100KInsSegMetric needs mask '
                                 'predictions; the model returned boxes only')
            bitmask, labels = encode_bitmask(
                pred['masks'], pred['labels'] + 1, pred['scores'],
                pred.get('bboxes'), image_size=(height, width))
            result = dict(name=frame_name(sample['img_path']),
                          png=png_bytes(bitmask), labels=labels)
            if self._coco_metric is not None:
                # mmdet's COCO metric encodes the (overlapping) masks as RLE;
                # its entry travels with ours, so ranks gather both at once.
                self._coco_metric.process(
                    data_batch, [dict(sample, pred_instances=pred)])
                result['coco'] = self._coco_metric.results.pop()
            self.results.append(result)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        logger: MMLogger = MMLogger.get_current_instance()
        # The distributed sampler pads with repeated images and
        # collect_results drops the padding; a repeated name here would
        # only come from a dataset listing an image twice.
        unique = OrderedDict()
        for result in results:
            unique.setdefault(result['name'], result)
        if len(unique) != len(results):
            logger.warning(f'{len(results) - len(unique)} images were listed '
                           'twice; each is written and scored once')
        if self.outfile_prefix is None:
            with tempfile.TemporaryDirectory() as tmp_dir:
                metrics = self._write_and_score(list(unique.values()),
                                                tmp_dir, logger)
        else:
            metrics = self._write_and_score(list(unique.values()),
                                            self.outfile_prefix, logger)
        if self._coco_metric is not None:
            metrics.update(self._coco_ap([r['coco'] for r in unique.values()]))
        return metrics

    def _coco_ap(self, coco_results: list) -> Dict[str, float]:
        """COCO box/mask AP (x100) of the same predictions, overlapping."""
        from .datasets import BDD100K_INS_SEG_CLASSES
        self._coco_metric.dataset_meta = self.dataset_meta or dict(
            classes=BDD100K_INS_SEG_CLASSES)
        coco = self._coco_metric.compute_metrics(coco_results)
        return {f'coco_{k}': round(100 * v, 1) for k, v in coco.items()
                if isinstance(v, float)}

    def _write_and_score(self, results: List[dict], out_dir: str,
                         logger: MMLogger) -> Dict[str, float]:
        bitmask_dir = osp.join(out_dir, 'bitmasks')
        os.makedirs(bitmask_dir, exist_ok=True)
        score_file = osp.join(out_dir, 'score.json')
        # A score.json left by an earlier run would pair its indices with
        # the new masks if this run died half-way: remove it first.
        if osp.exists(score_file):
            os.remove(score_file)
        pred_paths = []
        for result in results:
            path = osp.join(bitmask_dir, bitmask_name(result['name']))
            atomic_write(path, result['png'])
            pred_paths.append(path)
        # Written last: a complete score.json marks a complete folder.
        write_score_file(score_file, ({
            'name': r['name'],
            'labels': r['labels']
        } for r in results))
        stale = len([n for n in os.listdir(bitmask_dir)
                     if n.endswith('.png')]) - len(pred_paths)
        if stale > 0:
            logger.warning(f'{bitmask_dir} also holds {stale} PNGs of images '
                           'not in this run')
        logger.info(f'{len(pred_paths)} prediction bitmasks and score.json '
                    f'written to {out_dir}')
        if self.format_only:
            return {}

        gt_by_name = {osp.basename(p): p for p in list_gt_bitmasks(
            self.gt_dir)} if osp.isdir(self.gt_dir) else None
        if not gt_by_name:
            raise FileNotFoundError(
                f'no GT bitmasks (*.png) in {self.gt_dir}')
        missing = [p for p in pred_paths if osp.basename(p) not in gt_by_name]
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} evaluated images have no GT bitmask in '
                f'{self.gt_dir}, e.g. {osp.basename(missing[0])}')
        if len(gt_by_name) > len(pred_paths):
            logger.warning(
                f'scoring {len(pred_paths)} of the {len(gt_by_name)} GT '
                f'bitmasks in {self.gt_dir} (the images that were evaluated)')
        # The CLI's order: GT files sorted; predictions matched by name.
        pred_by_name = {osp.basename(p): p for p in pred_paths}
        names = sorted(pred_by_name, key=lambda n: gt_by_name[n])
        result = evaluate_bitmasks([gt_by_name[n] for n in names],
                                   [pred_by_name[n] for n in names],
                                   score_file, nproc=self.nproc)
        self.last_result = dict(result)
        logger.info('BDD100K instance segmentation (official bitmask '
                    f'protocol):\n{result}')
        summary = result.summary()
        return {f'segm_{k}': float(summary[k]) for k in METRIC_NAMES}
