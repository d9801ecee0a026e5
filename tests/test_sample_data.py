"""The embedded sample dataset: layout, bitmask format, determinism, and
that its COCO json (made by the official converter) loads in our dataset."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bdd100k_ins_seg.formats.sample_data import (
    CROWD,
    IGNORE,
    generate_sample_dataset,
    is_complete,
    render_scene)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COUNTS = dict(train=3, val=2, test=1)
SIZE = (160, 96)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('sample') / 'bdd')
    generate_sample_dataset(out, seed=3, counts=COUNTS, size=SIZE, nproc=1,
                            progress=False)
    return out


def test_layout(sample):
    for split, n in COUNTS.items():
        images = sorted(os.listdir(osp.join(sample, 'images', '10k', split)))
        assert len(images) == n and all(i.endswith('.jpg') for i in images)
        if split == 'test':
            assert not osp.exists(
                osp.join(sample, 'labels', 'ins_seg', 'bitmasks', split))
            continue
        masks = sorted(os.listdir(
            osp.join(sample, 'labels', 'ins_seg', 'bitmasks', split)))
        assert [m[:-4] for m in masks] == [i[:-4] for i in images]
        assert osp.isfile(
            osp.join(sample, 'jsons', f'ins_seg_{split}_cocofmt.json'))
    assert is_complete(sample, seed=3, counts=COUNTS, size=SIZE)
    assert not is_complete(sample, seed=4, counts=COUNTS, size=SIZE)
    assert not osp.exists(sample + '.partial')


def test_same_seed_same_bytes(sample, tmp_path):
    # drawn in 2 processes this time, in one for the fixture
    again = str(tmp_path / 'again')
    generate_sample_dataset(again, seed=3, counts=COUNTS, size=SIZE, nproc=2,
                            progress=False)
    first, second = _files(sample), _files(again)
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first)

    other = str(tmp_path / 'other')
    generate_sample_dataset(other, seed=4, counts=dict(train=1), size=SIZE,
                            nproc=1, progress=False)
    images = {k for k in first if k.startswith('images/10k/train/')}
    assert not set(_files(other)) & images  # other names, other scenes


def test_bitmask_format():
    seen_classes, crowd_seen, sizes = set(), False, []
    for i in range(30):
        image, label = render_scene(np.random.default_rng([0, 9, i]))
        assert image.shape == (192, 320, 3) and image.dtype == np.uint8
        assert label.shape == (192, 320, 4) and label.dtype == np.uint8
        category, attrs = label[..., 0], label[..., 1]
        inst = (label[..., 2].astype(int) << 8) | label[..., 3]
        assert ((category == 0) == (inst == 0)).all()
        ids = np.unique(inst[inst > 0])
        assert (ids == np.arange(1, len(ids) + 1)).all()  # 1..N, no gaps
        for k in ids:
            pixels = inst == k
            # one category and one attribute value per instance
            assert len(np.unique(category[pixels])) == 1
            assert len(np.unique(attrs[pixels])) == 1
            sizes.append(int(pixels.sum()))
            if attrs[pixels][0] & CROWD:
                crowd_seen = True
                assert attrs[pixels][0] & IGNORE
        seen_classes |= set(np.unique(category).tolist())
    # pedestrian, rider, car, truck, bus, motorcycle, bicycle; no train
    assert seen_classes - {0} == {1, 2, 3, 4, 5, 7, 8}
    assert crowd_seen
    # COCO small (< 32^2 px) and large (> 96^2 px) instances both occur
    assert min(sizes) < 32 * 32 and max(sizes) > 96 * 96


def test_coco_json_loads_in_dataset(sample):
    import bdd100k_ins_seg.plugin  # noqa: F401  (registers the dataset)
    from mmdet.registry import DATASETS
    from pycocotools import mask as mask_utils

    dataset = DATASETS.build(
        dict(type='BDD100KInsSegDataset', data_root=sample + '/',
             ann_file='jsons/ins_seg_val_cocofmt.json',
             data_prefix=dict(img='images/10k/val/'), test_mode=True,
             pipeline=[]))
    assert len(dataset) == COUNTS['val']
    for info in dataset:
        assert osp.isfile(info['img_path'])
        assert (info['width'], info['height']) == SIZE
        label = np.asarray(Image.open(
            osp.join(sample, 'labels', 'ins_seg', 'bitmasks', 'val',
                     osp.basename(info['img_path'])[:-4] + '.png')))
        inst = (label[..., 2].astype(int) << 8) | label[..., 3]
        assert len(info['instances']) == len(np.unique(inst[inst > 0]))
        crowd = (label[..., 1] & CROWD) > 0
        for ann in info['instances']:
            mask = mask_utils.decode(ann['mask']).astype(bool)
            ids = np.unique(inst[mask])
            assert len(ids) == 1 and (inst == ids[0]).sum() == mask.sum()
            assert ann['bbox_label'] == label[mask][0, 0] - 1
            assert ann['ignore_flag'] == int(crowd[mask].any())
    with open(osp.join(sample, 'jsons', 'ins_seg_val_cocofmt.json')) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(
        dataset.metainfo['classes'])


def test_cli_refuses_non_empty_output(tmp_path):
    (tmp_path / 'keep.txt').write_text('x')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'make_sample_data.py'),
         '--out', str(tmp_path), '--num-train', '1'],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'make_sample_data.py: error: --out: ')
    assert 'not empty' in proc.stderr
    assert os.listdir(tmp_path) == ['keep.txt']


def test_scene_mix_changes_what_scenes_hold(tmp_path):
    counts = {'default': np.zeros(9, int), 'city': np.zeros(9, int)}
    brightness = {'default': [], 'city': []}
    for i in range(12):
        for mix in counts:
            image, label = render_scene(np.random.default_rng([0, 9, i]),
                                        SIZE, mix)
            inst = (label[..., 2].astype(int) << 8) | label[..., 3]
            for k in np.unique(inst[inst > 0]):
                counts[mix][label[inst == k][0, 0]] += 1
            brightness[mix].append(image.mean())
    default, city = counts['default'], counts['city']
    # pedestrians + riders, buses up; cars down; darker
    assert city[[1, 2]].sum() > 1.5 * default[[1, 2]].sum()
    assert city[5] > default[5] and city[3] < 0.7 * default[3]
    assert np.mean(brightness['city']) < 0.85 * np.mean(
        brightness['default'])

    # recorded, and a sample of another mix is not the one asked for
    out = str(tmp_path / 'city')
    generate_sample_dataset(out, seed=3, counts=dict(train=1, val=1),
                            size=SIZE, nproc=1, progress=False,
                            scene_mix='city')
    assert is_complete(out, seed=3, size=SIZE, scene_mix='city')
    assert not is_complete(out, seed=3, size=SIZE)
    with pytest.raises(ValueError, match='unknown scene mix'):
        generate_sample_dataset(str(tmp_path / 'x'), scene_mix='town')
