"""The README's "Use it from Python" block runs as written: the zoo names
a model, its published weights are fetched and MD5-checked (here from a
local mirror folder), mmdet's API builds and runs it, mmdet's visualizer
draws the result; and its predictions are test.py's, label for label and
score for score, on the same image and weights.

To keep the test to seconds on a CPU, ``init_detector`` shrinks the
model of the named config (narrow ResNet-18, 320x192 input) and the mirror
holds seeded weights of that shrunk model, whose classifier is scaled up so
that, as a trained model's, its scores are far from uniform and depend on
the image's colours (an image handed over in the wrong channel order gets
other predictions; the test checks that it would see that). Every other
call is the block's. A fresh interpreter outside the repository runs
mmdet's API on a zoo config in tests/test_mmdet_api.py.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
NAME = 'mask_rcnn_r50_fpn_3x_ins_seg_bdd100k'
BDD100K_CLASSES = ('pedestrian', 'rider', 'car', 'truck', 'bus', 'train',
                   'motorcycle', 'bicycle')

SHRINK = dict(
    backbone=dict(depth=18, base_channels=8, init_cfg=None),
    neck=dict(in_channels=[8, 16, 32, 64], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(in_channels=16, conv_out_channels=16)),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50)))


def readme_block():
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    section = re.search(r'<!-- section:python-api -->(.*?)'
                        r'<!-- /section:python-api -->', text, re.S)
    assert section, 'README has no python-api section'
    [code] = re.findall(r'```python\n(.*?)```', section.group(1), re.S)
    return code


def shrunk(config):
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(dict(model=SHRINK))
    # init_detector's pipeline, and test.py --img-dir's
    for step in (cfg.test_dataloader.dataset.pipeline
                 + cfg.unlabeled_test_pipeline):
        if step.type == 'Resize':
            step.scale = (320, 192)
    return cfg


def by_class(labels, scores):
    """{class: its scores, best first}: equal however ties are ordered."""
    grouped = {}
    for label, score in sorted(zip(labels, scores), key=lambda p: -p[1]):
        grouped.setdefault(label, []).append(score)
    return grouped


def same_predictions(ours, reference, atol=1e-4):
    return ours.keys() == reference.keys() and all(
        len(ours[k]) == len(reference[k])
        and np.allclose(ours[k], reference[k], rtol=0, atol=atol)
        for k in ours)


def test_readme_python_block_runs_and_predicts_as_test_py(tmp_path,
                                                          monkeypatch):
    code = readme_block()
    assert f"zoo.get_entry('{NAME[:-len('_ins_seg_bdd100k')]}')" in code

    import mmdet.apis
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    from bdd100k_ins_seg.formats.sample_data import render_scene
    init_default_scope('mmdet')
    config = str(REPO / 'configs' / 'ins_seg' / f'{NAME}.py')
    # The shrunk config as a file: the block's model and test.py's.
    shrunk_config = tmp_path / f'{NAME}_shrunk.py'
    shrunk(config).dump(str(shrunk_config))
    torch.manual_seed(0)
    model = MODELS.build(shrunk(config).model)
    with torch.no_grad():  # logits of a few units: scores up to ~0.98
        model.roi_head.bbox_head.fc_cls.weight.mul_(30.0)
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    weights = mirror / f'{NAME}.pth'
    # the published (mmdet 2.x) layout: class names in meta['CLASSES']
    meta = dict(CLASSES=BDD100K_CLASSES, mmdet_version='2.18.0')
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, weights)
    md5 = hashlib.md5(weights.read_bytes()).hexdigest()
    (mirror / f'{NAME}.md5').write_text(f'{md5}  {NAME}.pth\n')

    init_detector = mmdet.apis.init_detector
    opened = []

    def init_shrunk(cfg, checkpoint=None, **kwargs):
        opened.append((cfg, checkpoint))
        return init_detector(str(shrunk_config), checkpoint, **kwargs)

    monkeypatch.setattr(mmdet.apis, 'init_detector', init_shrunk)
    monkeypatch.setenv('BDD100K_INS_SEG_MIRROR', str(mirror))
    monkeypatch.setenv('BDD100K_INS_SEG_CACHE', str(tmp_path / 'cache'))
    work = tmp_path / 'notebook'
    work.mkdir()
    monkeypatch.chdir(work)
    # A driving scene (RGB) at 640x360, where colour means something
    image, _ = render_scene(np.random.default_rng(0), (640, 360))
    Image.fromarray(image).save('street.jpg', quality=95)

    namespace = {}
    exec(compile(code, 'README.md python-api', 'exec'), namespace)

    cached = tmp_path / 'cache' / f'{NAME}.pth'
    assert opened == [(config, str(cached))]  # the zoo's config + download
    classes = namespace['classes']
    assert tuple(classes) == BDD100K_CLASSES  # not mmdet's COCO fallback
    printed = [classes[i] for i in namespace['pred'].labels.tolist()]
    assert 0 < len(printed) <= 100
    assert namespace['pred'].masks.shape[1:] == (360, 640)
    drawn = np.asarray(Image.open('street_pred.jpg'))
    assert drawn.shape == image.shape
    # drawn on the image in its own colours, not with red and blue swapped
    error = np.abs(drawn.astype(int) - image.astype(int)).mean(axis=(0, 1))
    swapped = np.abs(drawn.astype(int) - image[..., ::-1].astype(int)).mean(
        axis=(0, 1))
    assert error.mean() > 1 and error[[0, 2]].max() < swapped[[0, 2]].min()

    # test.py on the same file with the same weights
    images = tmp_path / 'images'
    images.mkdir()
    shutil.copy('street.jpg', images / 'street.jpg')
    proc = subprocess.run(
        [sys.executable, str(REPO / 'test.py'), str(shrunk_config),
         str(cached), '--img-dir', str(images), '--format-dir',
         str(tmp_path / 'out')],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [frame] = json.loads((tmp_path / 'out' / 'score.json').read_text())
    assert frame['name'] == 'street.jpg'
    reference = by_class([lb['category'] for lb in frame['labels']],
                         [lb['score'] for lb in frame['labels']])
    assert max(max(s) for s in reference.values()) > 0.5  # not uniform

    found = namespace['result'].pred_instances
    ours = by_class([classes[i] for i in found.labels.tolist()],
                    found.scores.tolist())
    assert same_predictions(ours, reference), (ours, reference)

    # The comparison sees an image handed over in RGB order.
    model = namespace['model']
    rgb = mmdet.apis.inference_detector(model, image).pred_instances
    wrong = by_class([classes[i] for i in rgb.labels.tolist()],
                     rgb.scores.tolist())
    assert not same_predictions(wrong, reference, atol=1e-2)
