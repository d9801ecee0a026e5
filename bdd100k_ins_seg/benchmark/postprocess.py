"""Stages b and c: post-processing (masks to bitmask, PNG, files) and
``test.py --format-only`` end to end, each against a baseline in the same
run.

b. One 1280x720 image with 100 detections of realistic sizes (10-400 px
   boxes, 28x28 mask logits), 1 thread. Baseline: the path before box
   pasting, all on the main thread: mmdet's ``FCNMaskHead`` pastes every
   mask into a full-size (N, H, W) stack, ``encode_bitmask`` paints it, PIL
   encodes the PNG, the file is written. Ours: the box paste into one rank
   map (:mod:`bdd100k_ins_seg.inference.paste`), then the writer's PNG and file
   (:mod:`bdd100k_ins_seg.inference.writer`); rows for the paste alone, for the whole
   work of one image, and for what the main thread spends handing an image
   to the background writer (on a CPU model it paints there too).
c. ``test.py CONFIG CKPT --img-dir DIR --format-only`` (untrained weights,
   so every image has its full 100 detections, or ``--checkpoint``'s
   weights) on synthetic 1280x720
   images, per image: the time between the first and the last PNG written
   over the images between them (start-up and the first image's warm-up
   left out); baseline: the model forward alone (as stage a: the
   network up to the mask logits) on the same images, same threads. The
   speedup column is then images/s of test.py over images/s of the forward
   (target >= 0.9). ``SETTINGS['test_runs']`` test.py runs (``--test-runs``;
   default half the repeats, at least 2), each paying its start-up.
"""
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bdd100k_ins_seg.benchmark import (
    SETTINGS,
    make_row,
    median_ms,
    weights_label)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def make_predictions(num, width, height, seed=0):
    """Boxes of 10-400 px (x1, y1, x2, y2), (N, 8, 28, 28) logits, scores,
    0-based labels."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(10), np.log(400), num))
    h = w * rng.uniform(0.5, 2.0, num)
    x1 = rng.uniform(0, width - 10, num)
    y1 = rng.uniform(0, height - 10, num)
    boxes = np.stack([x1, y1, np.minimum(x1 + w, width),
                      np.minimum(y1 + h, height)], 1).astype(np.float32)
    yy, xx = np.mgrid[:28, :28]
    blob = 6.0 - 0.03 * ((xx - 13.5)**2 + (yy - 13.5)**2)  # an ellipse
    logits = blob[None, None] + rng.normal(0, 1, (num, 8, 28, 28))
    scores = rng.uniform(0.05, 1.0, num).astype(np.float32)
    labels = rng.integers(0, 8, num)
    return boxes, logits.astype(np.float32), scores, labels


def _pil_png(bitmask) -> bytes:
    """The PNG encoding the old path used: PIL, zlib level 1."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(bitmask).save(buffer, format='PNG', compress_level=1)
    return buffer.getvalue()


def stage_b(device, repeats, work_dir, num=100):
    import torch
    from mmengine.config import ConfigDict

    from mmdet.models.roi_heads.mask_heads import FCNMaskHead

    from bdd100k_ins_seg.formats.bitmask import atomic_write, encode_bitmask
    from bdd100k_ins_seg.inference.paste import enable_box_masks, paint
    from bdd100k_ins_seg.inference.writer import PredictionWriter, render
    width, height = SETTINGS['size']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        boxes, logits, scores, labels = make_predictions(num, width, height)
        preds = torch.from_numpy(logits).to(device)
        labels_t = torch.from_numpy(labels).to(device)
        meta = dict(ori_shape=(height, width), scale_factor=(1.0, 1.0))
        cfg = ConfigDict(mask_thr_binary=0.5)
        head = FCNMaskHead(num_convs=0, in_channels=8, conv_out_channels=8,
                           num_classes=8).to(device)
        box_head = FCNMaskHead(num_convs=0, in_channels=8,
                               conv_out_channels=8, num_classes=8).to(device)
        enable_box_masks(box_head)
        sync = torch.cuda.synchronize if device.startswith('cuda') else (
            lambda: None)
        out = osp.join(work_dir, 'b')
        os.makedirs(out, exist_ok=True)

        def full_paste():
            return head._predict_by_feat_single(
                preds, torch.from_numpy(boxes).to(device), labels_t, meta,
                cfg, rescale=True)

        def box_masks():
            return box_head._predict_by_feat_single(
                preds, torch.from_numpy(boxes).to(device), labels_t, meta,
                cfg, rescale=True)

        def today_paint():
            masks = full_paste()
            bitmask, _ = encode_bitmask(masks, labels + 1, scores, boxes)
            sync()
            return bitmask

        def today_all():
            atomic_write(osp.join(out, 'today.png'), _pil_png(today_paint()))

        def ours_paint():
            ranks, _ = paint(box_masks(), scores)
            sync()
            return ranks

        def ours_all():
            bitmask, _ = render(box_masks(), labels + 1, scores)
            from bdd100k_ins_seg.inference.writer import encode_png
            atomic_write(osp.join(out, 'ours.png'), encode_png(bitmask))

        reference = today_paint()
        ours = render(box_masks(), labels + 1, scores)[0]
        if not np.array_equal(reference, ours):
            raise RuntimeError('box paste and full paste differ')

        t_today_paint = median_ms(today_paint, repeats)
        t_today = median_ms(today_all, repeats)
        t_paint = median_ms(ours_paint, repeats)
        t_ours = median_ms(ours_all, repeats)
        # What the main thread spends per image: the hand-off to the writer
        # (on a GPU the paste runs here, on the model's device).
        writer = PredictionWriter(out, workers=2, queue_size=repeats + 2,
                                  fsync=False)
        handoff = []
        try:
            for k in range(repeats + 1):
                masks = box_masks()
                start = time.perf_counter()
                writer.put(f'img{k}.jpg', masks, labels_t + 1,
                           torch.from_numpy(scores), image_size=(height,
                                                                 width))
                sync()
                handoff.append((time.perf_counter() - start) * 1000)
        finally:
            writer.close()
        t_main = statistics.median(handoff[1:])
    finally:
        torch.set_num_threads(threads)
    size = f'{num} dets, {width}x{height}, {device}, 1 thread'
    today = 'mmdet full paste + encode_bitmask'
    today_png = today + ' + PIL PNG (level 1) + write'
    return [
        make_row('b', f'box paste into the rank map ({size})', t_paint,
                 today, t_today_paint),
        make_row('b', f'box paste + RGBA + PNG + write, all work ({size})',
                 t_ours, today_png, t_today),
        make_row('b', f'main thread per image: hand-off to the background '
                 f'writer ({size})', t_main, today_png + ' (main thread)',
                 t_today),
    ]


def _write_images(folder, count, width, height, seed=0):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3),
                             dtype=np.uint8)
        image = small.repeat(16, 0).repeat(16, 1)[:height, :width]
        Image.fromarray(np.ascontiguousarray(image)).save(
            osp.join(folder, f'img{k:04d}.jpg'), quality=90)


def _test_py_ms_per_image(config, checkpoint, img_dir, out_dir, work_dir,
                          threads):
    """Steady-state ms per image of one test.py run: from the first PNG
    written to the last, over the images in between."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(
                   [REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'test.py'), config, checkpoint,
         '--img-dir', img_dir, '--format-dir', out_dir, '--work-dir',
         work_dir], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError('test.py failed: ' + proc.stderr[-2000:])
    folder = osp.join(out_dir, 'bitmasks')
    times = sorted(os.stat(osp.join(folder, n)).st_mtime
                   for n in os.listdir(folder))
    return (times[-1] - times[0]) * 1000 / (len(times) - 1)


def stage_c(config, device, repeats, work_dir, count=12):
    import torch

    from bdd100k_ins_seg.benchmark.model import build_model
    width, height = SETTINGS['size']
    threads = torch.get_num_threads()
    # Its mask pasting switched off: the baseline is the forward alone, the
    # network up to the mask logits (mmdet's paste is post-processing).
    model, cfg = build_model(config, device, SETTINGS['checkpoint'])
    checkpoint = SETTINGS['checkpoint']
    if not checkpoint:
        checkpoint = osp.join(work_dir, 'untrained.pth')
        torch.save({'state_dict': model.state_dict(), 'meta': {}},
                   checkpoint)
    img_dir = osp.join(work_dir, 'images')
    _write_images(img_dir, count, width, height)

    from mmcv.transforms import Compose
    pipeline = []
    for step in cfg.get('unlabeled_test_pipeline',
                        cfg.test_dataloader.dataset.pipeline):
        step = dict(step)
        if str(step['type']).endswith('LoadAnnotations'):
            continue
        pipeline.append(step)
    transform = Compose(pipeline)
    batches = []
    for name in sorted(os.listdir(img_dir)):
        data = transform(dict(img_path=osp.join(img_dir, name),
                              img_id=0))
        batches.append(model.data_preprocessor(
            dict(inputs=[data['inputs']],
                 data_samples=[data['data_samples']]), False))
    sync = torch.cuda.synchronize if device.startswith('cuda') else (
        lambda: None)

    def forward_all():
        with torch.no_grad():
            for batch in batches:
                model.predict(batch['inputs'], batch['data_samples'])
        sync()

    # Interleaved (forward, test.py, forward, test.py, ...) so that a
    # change in the machine's load hits both sides alike.
    forward_all()  # warm-up
    forwards, runs = [], []
    for k in range(SETTINGS.get('test_runs') or max(2, repeats // 2)):
        start = time.perf_counter()
        forward_all()
        forwards.append((time.perf_counter() - start) * 1000 / len(batches))
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            runs.append(_test_py_ms_per_image(
                config, checkpoint, img_dir, osp.join(tmp, 'out'),
                osp.join(tmp, 'wd'), threads))
    t_forward = statistics.median(forwards)
    t_test = statistics.median(runs)
    name = osp.splitext(osp.basename(config))[0]
    what = (f'test.py --format-only, {name}, {width}x{height}, {device}, '
            f'{threads} threads, {weights_label() or "untrained weights"}')
    return [make_row('c', what, t_test, 'model forward alone (same images)',
                 t_forward)]


def run(config: str, device: str, repeats: int, work_dir: str) -> list:
    """Stage b and c rows (see the module doc); only the one of them
    ``SETTINGS['stages']`` asks for, if it names one."""
    asked = set(SETTINGS.get('stages') or ()) & {'b', 'c'} or {'b', 'c'}
    rows = []
    if 'b' in asked:
        rows += stage_b(device, repeats, work_dir)
    if 'c' in asked:
        rows += stage_c(config, device, repeats, work_dir)
    return rows


__all__ = ['run', 'stage_b', 'stage_c', 'make_predictions']
