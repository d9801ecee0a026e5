"""BDD100KInsSegMetric: the official evaluator, in-process and as the CLI.

Also home of ``make_scenes``, the synthetic images + GT bitmasks that the
other inference tests use.
"""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bdd100k_ins_seg.plugin  # noqa: F401  (mmcv ops before mmdet)
from bdd100k_ins_seg.plugin.metric import BDD100KInsSegMetric


def make_scenes(root, num_images=4, size=(160, 96), seed=0,
                per_image=5):
    """Write ``root/images/<stem>.jpg`` and ``root/gt/<stem>.png``.

    Each image has ``per_image`` non-overlapping rectangles and ellipses of
    random classes and sizes (small, medium and, if it fits, large).

    Returns:
        list of dict(stem, masks (N, H, W) bool, labels (N,) category ids
        1..8, size (H, W)).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    os.makedirs(osp.join(root, 'images'), exist_ok=True)
    os.makedirs(osp.join(root, 'gt'), exist_ok=True)
    yy, xx = np.mgrid[:height, :width]
    scenes = []
    for k in range(num_images):
        stem = f'{seed:02d}{k:04d}-scene'
        image = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
        instances = np.zeros((height, width), np.uint16)
        categories = np.zeros((height, width), np.uint8)
        masks, labels = [], []
        slot = width // per_image
        for j in range(per_image):
            w = int(rng.integers(6, slot - 2))
            h = int(rng.integers(6, height - 4))
            x = j * slot + int(rng.integers(0, slot - w))
            y = int(rng.integers(0, height - h))
            if j % 2:
                mask = (((xx - x - w / 2) / (w / 2))**2 +
                        ((yy - y - h / 2) / (h / 2))**2) <= 1
            else:
                mask = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
            category = int(rng.integers(1, 9))
            instances[mask] = j + 1
            categories[mask] = category
            image[mask] = np.array([30 * category, 255 - 25 * category,
                                    40 + 20 * j], np.uint8)
            masks.append(mask)
            labels.append(category)
        bitmask = np.zeros((height, width, 4), np.uint8)
        bitmask[..., 0] = categories
        bitmask[..., 2] = instances >> 8
        bitmask[..., 3] = instances & 255
        Image.fromarray(image).save(
            osp.join(root, 'images', stem + '.jpg'), quality=95)
        Image.fromarray(bitmask).save(osp.join(root, 'gt', stem + '.png'))
        scenes.append(dict(stem=stem, masks=np.stack(masks),
                           labels=np.array(labels), size=(height, width)))
    return scenes


def data_sample(scene, masks=None, labels=None, scores=None, img_dir=''):
    """What mmengine's evaluator hands to ``process`` for one image."""
    masks = scene['masks'] if masks is None else masks
    labels = scene['labels'] if labels is None else labels
    n = len(masks)
    if scores is None:
        scores = np.linspace(0.9, 0.5, n) if n else np.zeros(0)
    boxes = np.zeros((n, 4), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(ys):
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return dict(
        img_path=osp.join(img_dir, scene['stem'] + '.jpg'),
        ori_shape=scene['size'],
        pred_instances=dict(
            masks=torch.from_numpy(np.asarray(masks, bool).reshape(
                n, *scene['size'])),
            labels=torch.as_tensor(np.asarray(labels) - 1, dtype=torch.long),
            scores=torch.as_tensor(scores, dtype=torch.float32),
            bboxes=torch.from_numpy(boxes)))


def run_metric(samples, gt_dir, out_dir=None, **kwargs):
    metric = BDD100KInsSegMetric(gt_dir=gt_dir, outfile_prefix=out_dir,
                                 nproc=1, **kwargs)
    metric.process({}, samples)
    return metric, metric.evaluate(len(samples))


def run_cli(gt_dir, pred_dir, out_file):
    cmd = [sys.executable, '-m', 'bdd100k.eval.run', '-t', 'ins_seg',
           '-g', gt_dir, '-r', osp.join(pred_dir, 'bitmasks'),
           '--score-file', osp.join(pred_dir, 'score.json'),
           '--nproc', '1', '--out-file', out_file]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out_file) as f:
        return json.load(f)


def same_numbers(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_numbers, a, b))
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('scenes'))
    return root, make_scenes(root, num_images=4, seed=1)


def test_gt_through_writer_scores_100_in_process_and_cli(scenes, tmp_path):
    root, items = scenes
    gt_dir = osp.join(root, 'gt')
    out_dir = str(tmp_path / 'pred')
    metric, metrics = run_metric([data_sample(s) for s in items], gt_dir,
                                 out_dir)

    assert metrics['bdd100k/segm_AP'] == pytest.approx(100.0)
    assert metrics['bdd100k/segm_AP50'] == pytest.approx(100.0)
    assert metrics['bdd100k/segm_AR100'] == pytest.approx(100.0)
    assert sorted(os.listdir(osp.join(out_dir, 'bitmasks'))) == sorted(
        s['stem'] + '.png' for s in items)
    # The official command line on the very same files: identical numbers.
    cli = run_cli(gt_dir, out_dir, str(tmp_path / 'cli.json'))
    assert same_numbers(cli, json.loads(json.dumps(metric.last_result)))
    assert cli['AP'][-1]['OVERALL'] == metrics['bdd100k/segm_AP']


def test_in_process_equals_cli_on_imperfect_predictions(scenes, tmp_path):
    root, items = scenes
    gt_dir = osp.join(root, 'gt')
    rng = np.random.default_rng(2)
    samples = []
    for k, scene in enumerate(items):
        masks, labels = scene['masks'].copy(), scene['labels'].copy()
        masks[0] = np.roll(masks[0], 3 + k, axis=1)  # a poor mask
        labels[1] = labels[1] % 8 + 1  # a wrong class
        masks = np.concatenate([masks, masks[2:3, ::-1]])  # a false positive
        labels = np.append(labels, labels[2])
        samples.append(data_sample(scene, masks, labels,
                                   rng.uniform(0.1, 1.0, len(labels))))
    out_dir = str(tmp_path / 'pred')
    metric, metrics = run_metric(samples, gt_dir, out_dir)
    assert 10 < metrics['bdd100k/segm_AP'] < 90
    cli = run_cli(gt_dir, out_dir, str(tmp_path / 'cli.json'))
    assert same_numbers(cli, json.loads(json.dumps(metric.last_result)))
    for key in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'AR1', 'AR100'):
        assert cli[key][-1]['OVERALL'] == metrics[f'bdd100k/segm_{key}']


def test_shifted_or_relabeled_predictions_score_less(scenes, tmp_path):
    root, items = scenes
    gt_dir = osp.join(root, 'gt')
    shifted = [
        data_sample(s, masks=np.roll(s['masks'], 4, axis=2)) for s in items
    ]
    _, metrics = run_metric(shifted, gt_dir)
    assert 0 < metrics['bdd100k/segm_AP'] < 95

    relabeled = [
        data_sample(s, labels=s['labels'] % 8 + 1) for s in items
    ]
    _, metrics = run_metric(relabeled, gt_dir)
    assert metrics['bdd100k/segm_AP'] < 1
    # One instance missing per image lowers recall, not precision.
    dropped = [
        data_sample(s, masks=s['masks'][1:], labels=s['labels'][1:])
        for s in items
    ]
    _, metrics = run_metric(dropped, gt_dir)
    assert metrics['bdd100k/segm_AR100'] < 100


def test_score_thr_drops_low_scores(scenes, tmp_path):
    root, items = scenes
    samples = [data_sample(s, scores=np.full(len(s['masks']), 0.2))
               for s in items]
    samples[0]['pred_instances']['scores'][0] = 0.9
    out_dir = str(tmp_path / 'pred')
    run_metric(samples, None, out_dir, format_only=True, score_thr=0.5)
    with open(osp.join(out_dir, 'score.json')) as f:
        frames = json.load(f)
    assert [len(f['labels']) for f in frames] == [1, 0, 0, 0]
    assert [f['name'] for f in frames] == [s['stem'] + '.jpg' for s in items]


def test_format_only_needs_no_gt_and_subset_is_scored(scenes, tmp_path):
    root, items = scenes
    metric, metrics = run_metric([data_sample(items[0])],
                                 osp.join(root, 'gt'))
    # One image of four: only its GT is used.
    assert metrics['bdd100k/segm_AP'] == pytest.approx(100.0)
    # Unless every GT bitmask must have a prediction (test.py's default).
    with pytest.raises(ValueError, match=r'^3 of the 4 GT bitmasks in .* '
                       r'have no prediction, e\.g\. .*add --only-predicted'):
        run_metric([data_sample(items[0])], osp.join(root, 'gt'),
                   only_predicted=False)
    with pytest.raises(ValueError, match='gt_dir'):
        BDD100KInsSegMetric()
    with pytest.raises(ValueError, match='outfile_prefix'):
        BDD100KInsSegMetric(format_only=True)


def test_image_without_gt_is_an_error(scenes, tmp_path):
    root, items = scenes
    other = make_scenes(str(tmp_path), num_images=1, seed=7)
    with pytest.raises(FileNotFoundError, match='no GT bitmask'):
        run_metric([data_sample(other[0])], osp.join(root, 'gt'))
    with pytest.raises(FileNotFoundError, match='no GT bitmasks'):
        run_metric([data_sample(other[0])], str(tmp_path / 'missing'))


def test_coco_ap_beside_the_official_numbers(scenes, tmp_path):
    """With a COCO json of the same images, pycocotools' box/mask AP of the
    same predictions is reported next to the official bitmask AP."""
    from bdd100k_ins_seg.formats.labels import bitmasks_to_coco, write_json
    root, items = scenes
    gt_dir = osp.join(root, 'gt')
    coco = bitmasks_to_coco(gt_dir, nproc=1)
    ann_file = str(tmp_path / 'coco.json')
    write_json(coco, ann_file)
    img_id = {im['file_name'][:-4]: im['id'] for im in coco['images']}

    def with_ids(samples):
        for sample, scene in zip(samples, items):
            sample['img_id'] = img_id[scene['stem']]
        return samples

    _, perfect = run_metric(with_ids([data_sample(s) for s in items]),
                            gt_dir, coco_ann_file=ann_file)
    assert perfect['bdd100k/segm_AP'] == 100
    assert perfect['bdd100k/coco_segm_mAP'] == 100
    assert perfect['bdd100k/coco_bbox_mAP'] == 100
    shifted = with_ids([
        data_sample(s, masks=np.roll(s['masks'], 4, axis=2)) for s in items
    ])
    _, worse = run_metric(shifted, gt_dir, coco_ann_file=ann_file)
    assert 0 < worse['bdd100k/coco_segm_mAP'] < 95
    assert worse['bdd100k/coco_bbox_mAP'] < 95
    with pytest.raises(FileNotFoundError, match='coco_ann_file'):
        BDD100KInsSegMetric(gt_dir=gt_dir,
                            coco_ann_file=str(tmp_path / 'none.json'))


def test_interrupted_rewrite_leaves_no_stale_score_file(scenes, tmp_path,
                                                        monkeypatch):
    """Rewriting an output folder: if the run dies while writing PNGs, the
    old score.json must not stay beside the new masks looking complete."""
    import bdd100k_ins_seg.inference.writer as evaluation
    root, items = scenes
    out_dir = tmp_path / 'pred'
    run_metric([data_sample(s) for s in items], osp.join(root, 'gt'),
               str(out_dir))
    assert (out_dir / 'score.json').exists()
    written = []
    real_write = evaluation.atomic_write

    def dying_write(path, data, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, data, **kwargs)

    monkeypatch.setattr(evaluation, 'atomic_write', dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_metric([data_sample(s) for s in items], osp.join(root, 'gt'),
                   str(out_dir))
    assert len(written) == 2
    assert not (out_dir / 'score.json').exists()
