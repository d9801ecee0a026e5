"""The README's "Use it from Python" block runs as written: the zoo names
a model, its published weights are fetched and MD5-checked (here from a
local mirror folder), mmdet's API builds and runs it, mmdet's visualizer
draws the result.

To keep the test to seconds on a CPU, ``init_detector`` shrinks the
model of the named config (narrow ResNet-18, 320x192 input) and the mirror
holds random weights of that shrunk model; every other call is the block's.
A fresh interpreter outside the repository runs mmdet's API on a zoo config
in tests/test_mmdet_api.py.
"""
import hashlib
import re
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
    for step in cfg.test_dataloader.dataset.pipeline:
        if step.type == 'Resize':
            step.scale = (320, 192)
    return cfg


def test_readme_python_block_runs(tmp_path, monkeypatch):
    code = readme_block()
    assert f"zoo.get_entry('{NAME[:-len('_ins_seg_bdd100k')]}')" in code

    import mmdet.apis
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    config = str(REPO / 'configs' / 'ins_seg' / f'{NAME}.py')
    torch.manual_seed(0)
    model = MODELS.build(shrunk(config).model)
    with torch.no_grad():  # the truck logit dominant: predictions pass 0.3
        model.roi_head.bbox_head.fc_cls.weight.zero_()
        model.roi_head.bbox_head.fc_cls.bias.zero_()
        model.roi_head.bbox_head.fc_cls.bias[3] = 20.0
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
        return init_detector(shrunk(cfg), checkpoint, **kwargs)

    monkeypatch.setattr(mmdet.apis, 'init_detector', init_shrunk)
    monkeypatch.setenv('BDD100K_INS_SEG_MIRROR', str(mirror))
    monkeypatch.setenv('BDD100K_INS_SEG_CACHE', str(tmp_path / 'cache'))
    work = tmp_path / 'notebook'
    work.mkdir()
    monkeypatch.chdir(work)
    image = np.random.default_rng(0).integers(0, 255, (360, 640, 3),
                                              dtype=np.uint8)
    Image.fromarray(image).save('street.jpg', quality=95)

    namespace = {}
    exec(compile(code, 'README.md python-api', 'exec'), namespace)

    cached = tmp_path / 'cache' / f'{NAME}.pth'
    assert opened == [(config, str(cached))]  # the zoo's config + download
    classes = namespace['classes']
    assert tuple(classes) == BDD100K_CLASSES  # not mmdet's COCO fallback
    printed = [classes[i] for i in namespace['pred'].labels.tolist()]
    assert 0 < len(printed) <= 100 and set(printed) == {'truck'}
    assert namespace['pred'].masks.shape[1:] == (360, 640)
    drawn = np.asarray(Image.open('street_pred.jpg'))
    assert drawn.shape == image.shape
    assert np.abs(drawn.astype(int) - image.astype(int)).mean() > 1
