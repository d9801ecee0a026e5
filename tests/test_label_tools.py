"""tools/to_coco.py and tools/colorize.py on synthetic bitmasks."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from bdd100k_ins_seg.visualization.overlay import instance_color
from test_evaluation import make_scenes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run_tool(name, args):
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', name)] + args,
        capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=REPO))


def check_coco(coco, scenes):
    assert [c['id'] for c in coco['categories']] == list(range(1, 9))
    images = {im['file_name']: im for im in coco['images']}
    assert sorted(images) == sorted(s['stem'] + '.jpg' for s in scenes)
    for scene in scenes:
        image = images[scene['stem'] + '.jpg']
        assert (image['height'], image['width']) == scene['size']
        anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
        assert len(anns) == len(scene['masks'])
        for ann in anns:
            rle = ann['segmentation']
            if isinstance(rle['counts'], str):
                rle = dict(rle, counts=rle['counts'].encode())
            mask = mask_utils.decode(rle).astype(bool)
            # Each annotation is exactly one GT instance, with its class.
            match = [i for i, m in enumerate(scene['masks'])
                     if (m == mask).all()]
            assert len(match) == 1
            assert ann['category_id'] == scene['labels'][match[0]]
    ids = [a['id'] for a in coco['annotations']]
    assert len(set(ids)) == len(ids)


def test_to_coco_from_bitmasks_and_rles(tmp_path):
    scenes = make_scenes(str(tmp_path), num_images=3, size=(120, 80),
                         seed=4)
    out = tmp_path / 'coco.json'
    proc = run_tool('to_coco.py', ['-i', str(tmp_path / 'gt'), '-o',
                                   str(out), '--nproc', '2'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as f:
        check_coco(json.load(f), scenes)

    # The same labels as Scalabel frames with RLE masks.
    frames = []
    for scene in scenes:
        labels = []
        for i, (mask, category) in enumerate(zip(scene['masks'],
                                                 scene['labels'])):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            labels.append(dict(
                id=str(i), category=['pedestrian', 'rider', 'car', 'truck',
                                     'bus', 'train', 'motorcycle',
                                     'bicycle'][category - 1],
                rle=dict(counts=rle['counts'].decode(),
                         size=list(rle['size']))))
        frames.append(dict(name=scene['stem'] + '.jpg', labels=labels))
    rle_json = tmp_path / 'rles.json'
    rle_json.write_text(json.dumps(frames))
    out2 = tmp_path / 'coco_rle.json'
    proc = run_tool('to_coco.py', ['-i', str(rle_json), '-o', str(out2),
                                   '--nproc', '1'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out2) as f:
        check_coco(json.load(f), scenes)

    proc = run_tool('to_coco.py', ['-i', str(tmp_path / 'none'), '-o',
                                   str(tmp_path / 'x.json')])
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'x.json').exists()


def test_to_coco_names_a_damaged_bitmask(tmp_path):
    """A bitmask cut short, or one with a category id outside 1..8 (which
    the official converter writes into the json): one line naming it, no
    json."""
    make_scenes(str(tmp_path), num_images=3, size=(120, 80), seed=6)
    gt = tmp_path / 'gt'
    names = sorted(os.listdir(gt))
    out = tmp_path / 'coco.json'
    whole = (gt / names[1]).read_bytes()
    (gt / names[1]).write_bytes(whole[:len(whole) // 2])
    proc = run_tool('to_coco.py', ['-i', str(gt), '-o', str(out),
                                   '--nproc', '2'])
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'to_coco.py: error: {gt}: bitmask {gt / names[1]}: not a readable '
        'PNG (')
    assert not out.exists()
    (gt / names[1]).write_bytes(whole)
    bitmask = np.array(Image.open(gt / names[2]))
    instance = int(bitmask[..., 3][bitmask[..., 3] > 0].min())
    bitmask[..., 0][bitmask[..., 3] == instance] = 12
    Image.fromarray(bitmask).save(gt / names[2])
    proc = run_tool('to_coco.py', ['-i', str(gt), '-o', str(out),
                                   '--nproc', '1'])
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f'to_coco.py: error: {gt}: bitmask {gt / names[2]}: unknown '
        f'category id 12 (expected 1..8) in instance {instance}')
    assert not out.exists()


def test_colorize(tmp_path):
    scenes = make_scenes(str(tmp_path), num_images=2, seed=6)
    proc = run_tool('colorize.py', ['-i', str(tmp_path / 'gt'), '-o',
                                    str(tmp_path / 'colored'), '--nproc',
                                    '2'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for scene in scenes:
        colored = np.asarray(
            Image.open(tmp_path / 'colored' / (scene['stem'] + '.png')))
        assert colored.shape == scene['size'] + (3, )
        for i, (mask, category) in enumerate(zip(scene['masks'],
                                                 scene['labels'])):
            # GT instance ids are 1..N in make_scenes.
            assert (colored[mask] == instance_color(category, i + 1)).all()
        assert not colored[~scene['masks'].any(0)].any()
