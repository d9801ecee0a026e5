"""A model over a video, frame by frame (``tools/video_demo.py``).

Frames are read with OpenCV, run through the model in batches (the
config's unlabeled test pipeline, then the model's ``test_step``), and
each frame's predictions are rendered once into the non-overlapping
bitmask the evaluator reads (:func:`..writer.render`). The drawn frame is
that bitmask's confident predictions over the frame, as ``vis.py`` draws
them (:func:`bdd100k_ins_seg.visualization.overlay.overlay`, captions
``<class> <score>``); the output mp4 has the video's size, frame count and
frame rate. With a format folder the same bitmasks and ``score.json`` are
written as ``test.py`` writes them, one frame named ``<video stem>-<frame
index, 7 digits from 1>.jpg`` as BDD100K names video frames.
"""
import os
import os.path as osp
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from bdd100k_ins_seg.cli import InputError


@dataclass
class VideoInfo:
    """What OpenCV reports of a video."""
    path: str
    width: int
    height: int
    fps: float
    frames: int


def open_video(path: str):
    """``(cv2.VideoCapture, VideoInfo)``; :class:`InputError` if OpenCV
    cannot open the file or reads no frame size from it."""
    if not osp.isfile(path):
        raise InputError(f'video {path}', 'not found')
    # FFmpeg's own messages ("moov atom not found") would precede the
    # one-line error: quiet, unless the user asks for them.
    os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
    import cv2
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InputError(f'video {path}', 'OpenCV cannot open it (not a '
                         'video, or a codec it lacks)')
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0:
        capture.release()
        raise InputError(f'video {path}', 'OpenCV reads no frame size')
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or fps != fps or fps <= 0:
        fps = 30.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return capture, VideoInfo(path, width, height, float(fps),
                              max(frames, 0))


def video_frame_name(stem: str, index: int) -> str:
    """BDD100K's name of frame ``index`` (0-based) of video ``stem``:
    ``<stem>-<index + 1, 7 digits>.jpg``."""
    return f'{stem}-{index + 1:07d}.jpg'


def inference_pipeline(cfg):
    """The config's test pipeline for in-memory frames: the unlabeled one
    (else the test dataset's, without annotation loading), its first step
    reading an array."""
    from mmengine.dataset import Compose
    pipeline = cfg.get('unlabeled_test_pipeline') or \
        cfg.test_dataloader.dataset.pipeline
    steps = [dict(step) for step in pipeline
             if 'LoadAnnotations' not in str(step.get('type'))]
    steps[0] = dict(type='mmdet.LoadImageFromNDArray')
    return Compose(steps)


def load_model(cfg, checkpoint: str, device: str):
    """The detector of ``cfg`` with ``checkpoint``'s weights on ``device``
    in eval mode (what mmdet's ``init_detector`` builds, with the 8
    classes), pasting masks into their boxes only: the bitmask needs no
    full-size mask stack."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from mmdet.registry import MODELS

    from bdd100k_ins_seg.formats.bitmask import BDD100K_INS_SEG_CLASSES
    from bdd100k_ins_seg.inference.paste import enable_box_masks
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = cfg.model.copy()
    model_cfg.train_cfg = None
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg.backbone.init_cfg = None  # the checkpoint has the weights
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu')
    model.cfg = cfg
    model.dataset_meta = dict(classes=BDD100K_INS_SEG_CLASSES)
    enable_box_masks(model)
    return model.to(device).eval()


def draw(frame_rgb: np.ndarray, bitmask: np.ndarray, labels: List[Dict],
         score_thr: float) -> np.ndarray:
    """The predictions scoring >= ``score_thr`` over the frame, as
    ``vis.py`` draws a bitmask with its score file."""
    from bdd100k_ins_seg.visualization.overlay import overlay, select_instances
    categories = bitmask[..., 0]
    instances = (bitmask[..., 2].astype(np.int32) << 8) | bitmask[..., 3]
    by_index = {label['index']: label for label in labels}
    categories, instances, kept = select_instances(
        categories, instances, by_index, score_thr)
    return overlay(frame_rgb, categories, instances, labels=kept)


def predict(model, frames: List[np.ndarray], pipeline) -> List:
    """The model's ``DetDataSample`` of each BGR frame, in one batch
    (mmdet's ``inference_detector`` runs a list one image at a time)."""
    import torch
    data = [pipeline(dict(img=frame, img_id=i))
            for i, frame in enumerate(frames)]
    batch = dict(inputs=[d['inputs'] for d in data],
                 data_samples=[d['data_samples'] for d in data])
    with torch.no_grad():
        return model.test_step(batch)


def _render(sample, image_size):
    from bdd100k_ins_seg.inference.writer import render
    pred = sample.pred_instances
    return render(pred.masks, pred.labels + 1, pred.scores,
                  pred.get('bboxes'), image_size=image_size)


def run_video(model, cfg, video: str, out_path: str,
              score_thr: float = 0.3, batch_size: int = 1,
              format_dir: Optional[str] = None,
              progress: bool = True) -> Dict:
    """Run ``model`` over ``video``; write the drawn mp4 to ``out_path``
    (through a temporary file: no half-written video) and, with
    ``format_dir``, its bitmasks and ``score.json``.

    Returns dict(frames, fps, width, height, seconds, frames_per_second).
    """
    import cv2
    from tqdm import tqdm

    from bdd100k_ins_seg.inference.writer import PredictionWriter, finish
    capture, info = open_video(video)
    stem = osp.splitext(osp.basename(video))[0]
    pipeline = inference_pipeline(cfg)
    folder = osp.dirname(osp.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, '.' + osp.basename(out_path) + '.tmp.mp4')
    out = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*'mp4v'), info.fps,
                          (info.width, info.height))
    if not out.isOpened():
        capture.release()
        raise InputError(f'--out {out_path}', 'OpenCV cannot write an mp4 '
                         'there')
    writer = PredictionWriter(format_dir, fsync=False) if format_dir \
        else None
    records = {}
    written = 0
    start = time.perf_counter()
    bar = tqdm(total=info.frames or None, unit='frame', desc=stem,
               disable=not progress)
    try:
        done = False
        while not done:
            frames = []
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    done = True
                    break
                frames.append(frame)
            if not frames:
                break
            samples = predict(model, frames, pipeline)
            for frame, sample in zip(frames, samples):
                bitmask, labels = _render(sample, frame.shape[:2])
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                out.write(cv2.cvtColor(draw(rgb, bitmask, labels, score_thr),
                                       cv2.COLOR_RGB2BGR))
                if writer is not None:
                    name = video_frame_name(stem, written)
                    writer.put_rendered(name, bitmask, labels)
                    records[name] = labels
                written += 1
                bar.update()
        out.release()
        if writer is not None:
            writer.close()
            finish(format_dir, records)
        if not written:
            raise InputError(f'video {video}', 'OpenCV reads no frame from '
                             'it')
        os.replace(tmp, out_path)
    finally:
        bar.close()
        capture.release()
        out.release()
        if osp.exists(tmp):
            os.remove(tmp)
    seconds = time.perf_counter() - start
    return dict(frames=written, fps=info.fps, width=info.width,
                height=info.height, seconds=seconds,
                frames_per_second=written / seconds if seconds else 0.0)


__all__ = ['VideoInfo', 'open_video', 'video_frame_name',
           'inference_pipeline', 'load_model', 'predict', 'draw',
           'run_video']
