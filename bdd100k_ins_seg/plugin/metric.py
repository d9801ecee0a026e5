"""The official BDD100K instance-segmentation metric inside mmengine.

Predictions are rendered as non-overlapping bitmasks and written, image by
image in background threads on every rank, by
:class:`bdd100k_ins_seg.inference.writer.PredictionWriter`; rank 0 then writes
``score.json`` and scores the folder by the ``bdd100k`` package's own
evaluator (``bdd100k.eval.ins_seg.evaluate_ins_seg``, the code behind
``python -m bdd100k.eval.run -t ins_seg``) against the GT bitmask folder,
so the numbers logged during training and testing are the official ones.
"""
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence

from mmengine.dist import (all_gather_object, barrier,
                           broadcast_object_list, collect_results,
                           is_main_process)
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmdet.registry import METRICS

from bdd100k_ins_seg.formats.bitmask import bitmask_name, frame_name
from bdd100k_ins_seg.formats.rle import (RLE_FILE, prediction_frames,
                                         write_rle_file)
from bdd100k_ins_seg.inference.preflight import write_manifest
from bdd100k_ins_seg.inference.paste import BoxMasks
from bdd100k_ins_seg.inference.writer import (
    PredictionWriter,
    finish,
    read_journals,
    read_score_file)

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
            see :func:`bdd100k_ins_seg.evaluation.bitmask_eval.default_nproc`).

    Returns:
        ``scalabel.eval.detect.DetResult``, identical to what
        ``python -m bdd100k.eval.run -t ins_seg`` computes (``dict(result)``
        is the json the CLI writes with ``--out-file``; ``str(result)`` its
        table), by :mod:`bdd100k_ins_seg.evaluation.bitmask_eval`.
    """
    from bdd100k_ins_seg.evaluation.bitmask_eval import evaluate_ins_seg
    return evaluate_ins_seg(gt_paths, pred_paths, score_file, nproc=nproc)


@METRICS.register_module()
class BDD100KInsSegMetric(BaseMetric):
    """Official BDD100K bitmask AP (non-overlapping masks, x100).

    Args:
        gt_dir: folder of GT bitmask PNGs (``<image stem>.png``). Every
            evaluated image needs one.
        gt_file: the GT as an RLE json instead (Scalabel frames, e.g.
            ``labels/ins_seg/rles/ins_seg_val.json``): the predictions are
            converted to RLE (:mod:`bdd100k_ins_seg.formats.rle`) and
            scored as ``python -m bdd100k.eval.run -g GT.json -r
            rles.json`` scores them.
        only_predicted: score the GT bitmasks of the evaluated images only
            (a validation on part of the split; the default), saying how
            many of how many. False: every GT bitmask of ``gt_dir`` needs a
            prediction, as in the official evaluator (``test.py``'s default;
            its ``--only-predicted`` sets True).
        outfile_prefix: folder to keep the predictions in
            (``bitmasks/*.png`` + ``score.json``); a temporary folder if None.
        format_only: only write the predictions (e.g. the test split).
        nproc: evaluator processes (None: the CPU cores available, bounded;
            see :func:`bdd100k_ins_seg.evaluation.bitmask_eval.default_nproc`).
        score_thr: drop predictions scoring below this.
        coco_ann_file: a COCO json of the same images (``tools/to_coco.py``);
            when given, COCO box and mask AP (overlapping masks, pycocotools,
            the protocol of the BDD100K paper) are reported beside the
            official numbers as ``coco_bbox_mAP``, ``coco_segm_mAP``, ...
        workers: background threads writing the bitmasks of each rank.
        resume: keep the images an earlier, interrupted run completed in
            ``outfile_prefix`` (its ``.parts`` journals) and add this run's;
            otherwise only this run's images make ``score.json``.
        manifest: the run's fingerprints (test.py), written as
            ``outfile_prefix/.run.json`` before the first image.
        out_format: what ``outfile_prefix`` keeps: ``'bitmask'``
            (``bitmasks/`` + ``score.json``), ``'rle'`` (``rles.json``,
            made from the finished bitmasks, which are then removed) or
            ``'both'``.
        classwise: also return each class's mask AP
            (``segm_AP_<class>``; classes without GT are left out).
        collect_device: 'cpu' or 'gpu', to gather COCO results across ranks.
        prefix: metric name prefix (default ``bdd100k``).

    Each rank writes its own images into the output folder (which all ranks
    must share) while the model runs on the next batch; ``score.json``
    lists the frames sorted by name and is written last.

    Returns (from ``evaluate``): ``bdd100k/segm_AP``, ``segm_AP50``,
    ``segm_AP75``, ``segm_APs``, ``segm_APm``, ``segm_APl`` and the
    ``segm_AR*`` recalls, as the official evaluator prints them (x100);
    with ``coco_ann_file`` also ``coco_bbox_*`` and ``coco_segm_*`` (x100).
    """

    default_prefix: Optional[str] = 'bdd100k'

    def __init__(self,
                 gt_dir: Optional[str] = None,
                 only_predicted: bool = True,
                 gt_file: Optional[str] = None,
                 outfile_prefix: Optional[str] = None,
                 format_only: bool = False,
                 nproc: Optional[int] = None,
                 score_thr: float = 0.0,
                 coco_ann_file: Optional[str] = None,
                 workers: int = 2,
                 resume: bool = False,
                 manifest: Optional[dict] = None,
                 out_format: str = 'bitmask',
                 classwise: bool = True,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if format_only and outfile_prefix is None:
            raise ValueError('BDD100KInsSegMetric: format_only needs '
                             'outfile_prefix (where to write the bitmasks)')
        if not format_only and gt_dir is None and gt_file is None:
            raise ValueError('BDD100KInsSegMetric: gt_dir (the GT bitmask '
                             'folder) or gt_file (an RLE json) is needed '
                             'unless format_only=True')
        if out_format not in ('bitmask', 'rle', 'both'):
            raise ValueError(f'BDD100KInsSegMetric: out_format must be '
                             f"'bitmask', 'rle' or 'both', got {out_format!r}")
        self.gt_dir = gt_dir
        self.gt_file = gt_file
        self.out_format = out_format
        self.classwise = classwise
        self.only_predicted = only_predicted
        self.outfile_prefix = outfile_prefix
        self.format_only = format_only
        self.nproc = nproc
        self.score_thr = score_thr
        self.workers = workers
        self.resume = resume
        self.manifest = manifest
        self._writer: Optional[PredictionWriter] = None
        self._out_dir: Optional[str] = None
        self._tmp_dir: Optional[str] = None
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
        """Hand each image's predictions to the background writer: its PNG
        and score labels are on disk a moment later."""
        writer = self._start()
        for sample in data_samples:
            pred = sample['pred_instances']
            if 'masks' not in pred:
                raise ValueError('BDD100KInsSegMetric needs mask '
                                 'predictions; the model returned boxes only')
            keep = pred['scores'] >= self.score_thr
            if not bool(keep.all()):
                pred = {k: pred[k][keep] for k in
                        ('masks', 'labels', 'scores', 'bboxes') if k in pred}
            height, width = sample['ori_shape'][:2]
            writer.put(frame_name(sample['img_path']), pred['masks'],
                       pred['labels'] + 1, pred['scores'], pred.get('bboxes'),
                       image_size=(height, width))
            if self._coco_metric is not None:
                # mmdet's COCO metric encodes the (overlapping) masks as RLE.
                masks = pred['masks']
                if isinstance(masks, BoxMasks):
                    masks = masks.full()
                self._coco_metric.process(data_batch, [
                    dict(sample, pred_instances=dict(pred, masks=masks))])
                self.results.append(self._coco_metric.results.pop())

    def _start(self) -> PredictionWriter:
        """The writer of this evaluation round (all ranks, same folder)."""
        if self._writer is not None:
            return self._writer
        out_dir = self.outfile_prefix
        if out_dir is None:
            # Every rank writes into rank 0's temporary folder.
            self._tmp_dir = tempfile.mkdtemp() if is_main_process() else None
            shared = [self._tmp_dir]
            broadcast_object_list(shared)
            out_dir = shared[0]
        self._out_dir = out_dir
        if is_main_process():
            if self.manifest is not None:
                write_manifest(out_dir, self.manifest)
            score_file = osp.join(out_dir, 'score.json')
            # An earlier score.json would pair its indices with the new
            # masks if this run died half-way: remove it first (a resumed
            # run keeps its frames: they are complete).
            if osp.exists(score_file) and not self.resume:
                os.remove(score_file)
            # rles.json is made from the bitmasks at the end, every time.
            rle_file = osp.join(out_dir, RLE_FILE)
            if osp.exists(rle_file):
                os.remove(rle_file)
        # Every rank has read what earlier runs left (test.py's resume)
        # before any rank writes.
        barrier()
        self._writer = PredictionWriter(out_dir, workers=self.workers)
        return self._writer

    def evaluate(self, size: int) -> dict:
        """Finish the writes of every rank; rank 0 then writes ``score.json``
        from the journals and scores it (``size`` is unused: each rank
        wrote its own images)."""
        logger: MMLogger = MMLogger.get_current_instance()
        writer = self._start()
        try:
            writer.close()
        finally:
            self._writer = None
        journals = all_gather_object(writer.journal)
        coco_results = None
        if self._coco_metric is not None:
            coco_results = collect_results(self.results, size,
                                           self.collect_device)
        self.results.clear()
        metrics = [None]
        if is_main_process():
            try:
                metrics = [self._finish(journals, coco_results, logger)]
            finally:
                if self._tmp_dir is not None:
                    shutil.rmtree(self._tmp_dir, ignore_errors=True)
                    self._tmp_dir = None
        broadcast_object_list(metrics)
        return metrics[0]

    def _coco_ap(self, coco_results: list) -> Dict[str, float]:
        """COCO box/mask AP (x100) of the same predictions, overlapping."""
        from bdd100k_ins_seg.formats.bitmask import BDD100K_INS_SEG_CLASSES
        self._coco_metric.dataset_meta = self.dataset_meta or dict(
            classes=BDD100K_INS_SEG_CLASSES)
        coco = self._coco_metric.compute_metrics(coco_results)
        return {f'coco_{k}': round(100 * v, 1) for k, v in coco.items()
                if isinstance(v, float)}

    def flush(self) -> None:
        """Finish the queued images of this rank and stop (an interrupted
        run: no ``score.json``; ``--resume`` continues it)."""
        try:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()
        finally:
            if self._tmp_dir is not None:  # nothing to resume there
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
                self._tmp_dir = None

    def compute_metrics(self, results: list) -> dict:
        """Unused: :meth:`evaluate` scores the written folder."""
        raise NotImplementedError

    def _finish(self, journals: List[str], coco_results: Optional[list],
                logger: MMLogger) -> Dict[str, float]:
        out_dir = self._out_dir
        if self.resume:
            records = read_score_file(out_dir)
            records.update(read_journals(out_dir))
        else:
            records = read_journals(out_dir, journals)
        score_file = finish(out_dir, records)
        bitmask_dir = osp.join(out_dir, 'bitmasks')
        pred_paths = [osp.join(bitmask_dir, bitmask_name(name))
                      for name in sorted(records)]
        stale = len([n for n in os.listdir(bitmask_dir)
                     if n.endswith('.png')]) - len(pred_paths)
        if stale > 0:
            logger.warning(f'{bitmask_dir} also holds {stale} PNGs of images '
                           'not in this run')
        logger.info(f'{len(pred_paths)} prediction bitmasks and score.json '
                    f'written to {out_dir}')
        rle_frames = None
        if self.out_format != 'bitmask' or self.gt_file:
            rle_frames = prediction_frames(bitmask_dir, [
                dict(name=n, labels=records[n]) for n in sorted(records)])
        if self.out_format != 'bitmask':
            write_rle_file(osp.join(out_dir, RLE_FILE), rle_frames)
            logger.info(f'{RLE_FILE} written to {out_dir}')
        if self.format_only:
            metrics = {}
        elif self.gt_file:
            metrics = self._score_rle(rle_frames, logger)
        else:
            metrics = self._score(pred_paths, score_file, logger)
        if self.out_format == 'rle' and self.outfile_prefix is not None:
            # rles.json is complete: the bitmasks it was made from go.
            shutil.rmtree(bitmask_dir, ignore_errors=True)
            os.remove(score_file)
        if self._coco_metric is not None:
            metrics.update(self._coco_ap(coco_results))
        return {f'{self.prefix}/{k}' if self.prefix else k: v
                for k, v in metrics.items()}

    def _score(self, pred_paths: List[str], score_file: str,
               logger: MMLogger) -> Dict[str, float]:
        from bdd100k_ins_seg.evaluation.bitmask_eval import (
            only_predicted_hint, quiet_evaluator)
        if not pred_paths:
            raise ValueError('no predictions to score (0 images)')
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
            if not self.only_predicted:
                unscored = sorted(set(gt_by_name) - {
                    osp.basename(p) for p in pred_paths})
                raise ValueError(
                    f'{len(unscored)} of the {len(gt_by_name)} GT bitmasks '
                    f'in {self.gt_dir} '
                    f'{"has" if len(unscored) == 1 else "have"} no '
                    'prediction, e.g. '
                    f'{unscored[0]} ({only_predicted_hint(len(pred_paths))})')
            logger.info(
                f'scoring {len(pred_paths)} of the {len(gt_by_name)} GT '
                f'bitmasks in {self.gt_dir} (the images that were evaluated)')
        # The CLI's order: GT files sorted; predictions matched by name.
        pred_by_name = {osp.basename(p): p for p in pred_paths}
        names = sorted(pred_by_name, key=lambda n: gt_by_name[n])
        with quiet_evaluator():  # its "evaluating...": the table follows
            result = evaluate_bitmasks([gt_by_name[n] for n in names],
                                       [pred_by_name[n] for n in names],
                                       score_file, nproc=self.nproc)
        self.last_result = dict(result)
        logger.info('BDD100K instance segmentation (official bitmask '
                    f'protocol):\n{result}')
        return self._metrics(result)

    def _metrics(self, result) -> Dict[str, float]:
        summary = result.summary()
        metrics = {f'segm_{k}': float(summary[k]) for k in METRIC_NAMES}
        if self.classwise:
            metrics.update({f'segm_AP_{name}': float(value)
                            for name, value in result.AP[0].items()
                            if value == value})  # NaN: a class without GT
        return metrics

    def _score_rle(self, pred_frames: List[Dict],
                   logger: MMLogger) -> Dict[str, float]:
        """Score RLE predictions against the RLE GT file, as the
        official CLI scores two RLE json files."""
        from bdd100k_ins_seg.evaluation.bitmask_eval import quiet_evaluator
        from bdd100k_ins_seg.evaluation.rle_eval import (evaluate_frames,
                                                         frames_from_dicts,
                                                         load_frames)
        if not pred_frames:
            raise ValueError('no predictions to score (0 images)')
        gt_frames = load_frames(self.gt_file)
        names = {f['name'] for f in pred_frames}
        missing = names - {f.name for f in gt_frames}
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} evaluated images have no frame in '
                f'{self.gt_file}, e.g. {sorted(missing)[0]}')
        if len(gt_frames) > len(names):
            if not self.only_predicted:
                raise ValueError(
                    f'{len(gt_frames) - len(names)} of the {len(gt_frames)} '
                    f'GT frames in {self.gt_file} have no prediction')
            logger.info(f'scoring {len(names)} of the {len(gt_frames)} GT '
                        f'frames in {self.gt_file} (the images that were '
                        'evaluated)')
            gt_frames = [f for f in gt_frames if f.name in names]
        with quiet_evaluator():
            result, _ = evaluate_frames(
                gt_frames, frames_from_dicts(pred_frames), self.nproc or 1)
        self.last_result = dict(result)
        logger.info('BDD100K instance segmentation (official RLE '
                    f'protocol):\n{result}')
        return self._metrics(result)
