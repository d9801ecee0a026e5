"""Time the bitmask writer against the original formatter, same run, medians.

    python tools/benchmark_writer.py [--dets 100] [--size 1280x720] [--repeat 7]

One image with DETS predictions of realistic sizes. Measured per image:
- writer: ``bdd100k_ins_seg.bitmask.encode_bitmask`` painting each
  full-resolution mask only inside its box (what the metric and test.py do),
  then the same plus PNG encoding;
- original: the MMDetection 2.x formatter of the original zoo: decode every
  prediction's full-image RLE, then blend all 4 channels over the whole image
  once per mask (``bitmask = bitmask * (1 - mask) + mask * color``), then
  PNG encoding;
- mmdet paste: ``FCNMaskHead._predict_by_feat_single``, which turns the
  28x28 mask logits into DETS full-resolution masks (CPU path: one mask at a
  time within its box), i.e. what inference spends before any writer runs.
Prints medians (ms) and the original/writer ratio.
"""
import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dets', type=int, default=100,
                        help='predictions per image (default 100)')
    parser.add_argument('--size', default='1280x720',
                        help='image WIDTHxHEIGHT (default 1280x720)')
    parser.add_argument('--repeat', type=int, default=7,
                        help='timed runs per method (default 7)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def make_predictions(num, width, height, seed):
    """Boxes of 10-400 px (x1, y1, x2, y2), 28x28 logits, scores, labels."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(10), np.log(400), num))
    h = w * rng.uniform(0.5, 2.0, num)
    x1 = rng.uniform(0, width - 10, num)
    y1 = rng.uniform(0, height - 10, num)
    boxes = np.stack([x1, y1, np.minimum(x1 + w, width),
                      np.minimum(y1 + h, height)], 1).astype(np.float32)
    yy, xx = np.mgrid[:28, :28]
    blob = 6.0 - 0.03 * ((xx - 13.5)**2 + (yy - 13.5)**2)  # an ellipse
    logits = blob[None] + rng.normal(0, 1, (num, 28, 28))
    scores = rng.uniform(0.05, 1.0, num)
    labels = rng.integers(0, 8, num)  # mmdet's 0-based labels
    return boxes, logits.astype(np.float32), scores, labels


def paste_masks(boxes, logits, labels, width, height):
    """mmdet 3's FCNMaskHead: logits -> (N, H, W) bool at full resolution."""
    import torch
    from mmengine.config import ConfigDict

    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    head = FCNMaskHead(num_convs=0, in_channels=8, conv_out_channels=8,
                       num_classes=8)
    mask_preds = torch.from_numpy(logits)[:, None].repeat(1, 8, 1, 1)
    meta = dict(ori_shape=(height, width), scale_factor=(1.0, 1.0))
    return head._predict_by_feat_single(
        mask_preds, torch.from_numpy(boxes.copy()),
        torch.from_numpy(labels), meta, ConfigDict(mask_thr_binary=0.5),
        rescale=True)


def original_formatter(rles, scores, labels, width, height):
    """The original zoo's formatter, kept as the baseline."""
    import pycocotools.mask as mask_utils
    bitmask = np.zeros((height, width, 4), dtype=np.uint8)
    for idx in np.argsort(scores):
        mask = mask_utils.decode(rles[idx])
        color = [labels[idx] + 1, 0, (idx + 1) >> 8, (idx + 1) & 255]
        for channel in range(4):
            bitmask[..., channel] = (bitmask[..., channel] * (1 - mask) +
                                     mask * color[channel])
    return bitmask


def png(bitmask):
    buffer = io.BytesIO()
    Image.fromarray(bitmask).save(buffer, format='PNG')
    return buffer.getvalue()


def median_ms(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    args = parse_args()
    width, height = (int(v) for v in args.size.split('x'))
    import torch

    import bdd100k_ins_seg  # noqa: F401  (mmcv ops before mmdet)
    import pycocotools.mask as mask_utils

    from bdd100k_ins_seg.bitmask import encode_bitmask, png_bytes
    torch.set_num_threads(1)

    boxes, logits, scores, labels = make_predictions(
        args.dets, width, height, args.seed)
    masks = paste_masks(boxes, logits, labels, width, height)
    masks_np = masks.numpy()
    # mmdet 2.x handed the formatter one RLE per full-image mask.
    rles = mask_utils.encode(
        np.asfortranarray(masks_np.transpose(1, 2, 0).astype(np.uint8)))

    ours, _ = encode_bitmask(masks, labels + 1, scores, boxes)
    theirs = original_formatter(rles, scores, labels, width, height)
    # Same pixels covered by the same class (the index numbering differs:
    # the original numbers by input order, the writer by score rank).
    assert (ours[..., 0] == theirs[..., 0]).all()
    assert ((ours[..., 3] > 0) | (ours[..., 2] > 0)).sum() == (
        (theirs[..., 3] > 0) | (theirs[..., 2] > 0)).sum()

    r = args.repeat
    t_writer = median_ms(
        lambda: encode_bitmask(masks, labels + 1, scores, boxes), r)
    t_writer_png = median_ms(
        lambda: png_bytes(encode_bitmask(masks, labels + 1, scores,
                                         boxes)[0]), r)
    t_original = median_ms(
        lambda: original_formatter(rles, scores, labels, width, height), r)
    t_original_png = median_ms(
        lambda: png(original_formatter(rles, scores, labels, width, height)),
        r)
    t_paste = median_ms(
        lambda: paste_masks(boxes, logits, labels, width, height), r)

    print(f'{args.dets} detections, {width}x{height}, median of {r} runs, '
          f'1 thread')
    print(f'{"":28s}{"ms/image":>10s}')
    print(f'{"writer (paint in boxes)":28s}{t_writer:10.1f}')
    print(f'{"original (decode + blend)":28s}{t_original:10.1f}')
    print(f'{"  ratio original/writer":28s}{t_original / t_writer:10.1f}x')
    print(f'{"writer + PNG encode":28s}{t_writer_png:10.1f}')
    print(f'{"original + PNG encode":28s}{t_original_png:10.1f}')
    print(f'{"  ratio":28s}{t_original_png / t_writer_png:10.1f}x')
    print(f'{"mmdet mask paste (CPU)":28s}{t_paste:10.1f}')


if __name__ == '__main__':
    main()
