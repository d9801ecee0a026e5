"""The prediction writer: bitmask PNGs and score records, in the background.

Each rank renders its images and hands them to a few worker threads that
paint (CPU models; :mod:`bdd100k_ins_seg.inference.paste`), PNG-encode and write
``bitmasks/<stem>.png`` atomically as they finish, then append the image's
score labels to a per-process journal (``.parts/*.jsonl``, one json line per
image, flushed and fsync'd after its PNG is in place). The queue is bounded,
so memory stays a few images whatever the split size. At the end rank 0
merges the journals into ``score.json`` (written last: a complete
``score.json`` means a complete folder) and removes them.

An image is complete when its journal line is there: a run killed at any
moment (SIGKILL, node lost) leaves complete images and, at most, a PNG
without its line or a truncated last line, both redone by a resumed run.
"""
import json
import os
import os.path as osp
import queue
import shutil
import sys
import threading
import uuid
from typing import Dict, Iterable, List, Optional

import numpy as np

from bdd100k_ins_seg.formats.bitmask import (
    CATEGORY_NAMES,
    atomic_write,
    bitmask_name,
    check_labels,
    encode_bitmask,
    png_bytes,
    write_score_file)

#: Journal folder inside the output folder.
PARTS_DIR = '.parts'
_STOP = object()


def ranks_to_bitmask(ranks: np.ndarray, categories: np.ndarray
                     ) -> np.ndarray:
    """(H, W) instance indices (0 = background) and each index's category
    id (``categories[index - 1]``) to the RGBA bitmask array."""
    ranks = np.asarray(ranks)
    lut = np.zeros(len(categories) + 1, dtype=np.uint8)
    lut[1:] = categories
    height, width = ranks.shape
    bitmask = np.zeros((height, width, 4), dtype=np.uint8)
    bitmask[..., 0] = lut[ranks]
    bitmask[..., 2] = ranks >> 8
    bitmask[..., 3] = ranks & 0xFF
    return bitmask


def encode_png(bitmask: np.ndarray) -> bytes:
    """Lossless RGBA PNG of an (H, W, 4) uint8 array
    (:func:`bdd100k_ins_seg.formats.bitmask.png_bytes`: unfiltered rows, one
    deflate pass that releases the GIL)."""
    return png_bytes(bitmask)


def render(masks, labels, scores, bboxes=None, image_size=None):
    """Predictions -> ``(RGBA bitmask, score labels)``.

    ``masks`` is a :class:`~bdd100k_ins_seg.inference.paste.BoxMasks` (pasted here, on
    its device) or an (N, H, W) mask stack
    (:func:`~bdd100k_ins_seg.formats.bitmask.encode_bitmask`); both give the same
    array for the same model outputs.
    """
    from bdd100k_ins_seg.inference.paste import BoxMasks, paint
    if not isinstance(masks, BoxMasks):
        return encode_bitmask(masks, labels, scores, bboxes, image_size)
    labels = _numpy(labels).astype(np.int64).reshape(-1)
    scores = _numpy(scores).astype(np.float64).reshape(-1)
    n = len(masks)
    if len(labels) != n or len(scores) != n:
        raise ValueError(f'{n} masks but {len(labels)} labels and '
                         f'{len(scores)} scores')
    if image_size is not None and tuple(image_size[:2]) != masks.image_size:
        raise ValueError(f'masks are {masks.image_size[0]}x'
                         f'{masks.image_size[1]} (HxW) but the image is '
                         f'{image_size[0]}x{image_size[1]}')
    check_labels(labels, n)
    if sys.byteorder == 'little':
        # Painted as whole RGBA pixels: the map's bytes are the bitmask.
        packed, order = paint(masks, scores, categories=labels)
        height, width = masks.image_size
        bitmask = packed.cpu().numpy().view(np.uint8).reshape(
            height, width, 4)
    else:
        ranks, order = paint(masks, scores)
        bitmask = ranks_to_bitmask(ranks.cpu().numpy(), labels[order])
    return bitmask, score_labels(labels, scores, order)


def score_labels(labels, scores, order) -> List[Dict]:
    """``score.json`` labels, index 1 = the best score."""
    return [dict(index=rank + 1, score=float(scores[i]),
                 category=CATEGORY_NAMES[labels[i] - 1])
            for rank, i in enumerate(order)]


def _numpy(array) -> np.ndarray:
    if hasattr(array, 'detach'):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


class PredictionWriter:
    """Writes one rank's predictions into ``out_dir`` in worker threads.

    Args:
        out_dir: the output folder (``bitmasks/``, ``.parts/``).
        workers: background threads (PNG encoding and zlib release the GIL,
            as do torch's paste operations).
        queue_size: images waiting at most (default 2 per worker); ``put``
            blocks when full, so memory is bounded.
        fsync: flush journal lines and PNGs to disk (survives a lost node).

    ``put`` renders on the caller's thread what must stay on the model's
    device (a GPU paste; one small transfer of the (H, W) map) and queues
    the rest; ``close`` waits for every queued image, then raises the first
    error a worker met. Errors also surface at the next ``put``.
    """

    def __init__(self, out_dir: str, workers: int = 2,
                 queue_size: Optional[int] = None,
                 fsync: bool = True) -> None:
        self.out_dir = out_dir
        self.bitmask_dir = osp.join(out_dir, 'bitmasks')
        parts = osp.join(out_dir, PARTS_DIR)
        os.makedirs(self.bitmask_dir, exist_ok=True)
        os.makedirs(parts, exist_ok=True)
        self.journal = osp.join(
            parts, f'{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl')
        self.fsync = fsync
        self.written = 0
        self._journal = open(self.journal, 'a', encoding='utf-8')
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._queue: queue.Queue = queue.Queue(
            maxsize=queue_size or 2 * max(workers, 1))
        self._threads = [
            threading.Thread(target=self._work, daemon=True,
                             name=f'bitmask-writer-{i}')
            for i in range(max(workers, 1))]
        for thread in self._threads:
            thread.start()

    def put(self, name: str, masks, labels, scores, bboxes=None,
            image_size=None) -> None:
        """Queue one image (``name``: its ``score.json`` frame name)."""
        self._raise()
        from bdd100k_ins_seg.inference.paste import BoxMasks
        if isinstance(masks, BoxMasks) and masks.device.type != 'cpu':
            # Paste on the model's device; move only the (H, W) result.
            job = render(masks, labels, scores, bboxes, image_size)
        else:
            job = (masks, _numpy(labels), _numpy(scores),
                   None if bboxes is None else _numpy(bboxes), image_size)
        while True:
            try:
                self._queue.put((name, job), timeout=1.0)
                return
            except queue.Full:
                self._raise()

    def put_rendered(self, name: str, bitmask: np.ndarray,
                     labels: List[Dict]) -> None:
        """Queue one image already rendered (:func:`render`'s
        ``(bitmask, labels)``, e.g. also drawn by the caller)."""
        self._raise()
        while True:
            try:
                self._queue.put((name, (bitmask, labels)), timeout=1.0)
                return
            except queue.Full:
                self._raise()

    def close(self) -> None:
        """Finish every queued image, stop the workers, raise any error."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._journal.close()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain: the first error is reported
            name, job = item
            try:
                if len(job) == 5:
                    job = render(*job)
                bitmask, labels = job
                atomic_write(osp.join(self.bitmask_dir, bitmask_name(name)),
                             encode_png(bitmask), fsync=self.fsync)
                line = json.dumps(dict(name=name, labels=labels)) + '\n'
                with self._lock:
                    self._journal.write(line)
                    self._journal.flush()
                    if self.fsync:
                        os.fsync(self._journal.fileno())
                    self.written += 1
            except BaseException as e:  # reported on the main thread
                self._error = e


def read_journals(out_dir: str, files: Optional[Iterable[str]] = None
                  ) -> Dict[str, List[Dict]]:
    """``{frame name: labels}`` of the complete images in ``out_dir``.

    Reads the given journal files (default: all of ``.parts/``); a line
    cut by a kill is skipped, as is an image whose PNG is missing.
    """
    parts = osp.join(out_dir, PARTS_DIR)
    if files is None:
        files = ([osp.join(parts, f) for f in sorted(os.listdir(parts))
                  if f.endswith('.jsonl')] if osp.isdir(parts) else [])
    records = {}
    for path in files:
        with open(path, encoding='utf-8') as f:
            for line in f:
                if not line.endswith('\n'):
                    continue  # the last line of a killed writer
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                records[record['name']] = record['labels']
    bitmask_dir = osp.join(out_dir, 'bitmasks')
    return {name: labels for name, labels in records.items()
            if osp.isfile(osp.join(bitmask_dir, bitmask_name(name)))}


def read_score_file(out_dir: str) -> Dict[str, List[Dict]]:
    """``{frame name: labels}`` of a complete ``out_dir/score.json`` (labels
    without their file-wide ``id``); empty if there is none."""
    path = osp.join(out_dir, 'score.json')
    if not osp.isfile(path):
        return {}
    with open(path, encoding='utf-8') as f:
        frames = json.load(f)
    return {frame['name']: [{k: v for k, v in label.items() if k != 'id'}
                            for label in frame.get('labels') or []]
            for frame in frames}


def finish(out_dir: str, records: Dict[str, List[Dict]]) -> str:
    """Write ``score.json`` (frames sorted by name) and drop the journals.

    Returns the path of ``score.json``.
    """
    score_file = osp.join(out_dir, 'score.json')
    write_score_file(score_file, (
        dict(name=name, labels=records[name]) for name in sorted(records)))
    shutil.rmtree(osp.join(out_dir, PARTS_DIR), ignore_errors=True)
    return score_file


__all__ = ['PredictionWriter', 'render', 'ranks_to_bitmask', 'encode_png',
           'read_journals', 'read_score_file', 'finish', 'PARTS_DIR']
