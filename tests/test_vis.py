"""Deterministic palette, overlays and the vis.py command."""
import colorsys
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bdd100k_ins_seg.formats.bitmask import write_bitmask, write_score_file
from bdd100k_ins_seg.visualization.overlay import (
    CLASS_HUES,
    HUE_SPREAD,
    colorize,
    instance_color,
    outline,
    overlay,
    select_instances)
from test_evaluation import make_scenes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def hue_of(rgb):
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


@pytest.mark.parametrize('category', range(1, 9))
def test_same_class_same_hue_family(category):
    colors = {instance_color(category, i) for i in range(1, 60)}
    assert len(colors) > 50  # instances are told apart
    for color in colors:
        distance = abs((hue_of(color) - CLASS_HUES[category] + 180) % 360 -
                       180)
        assert distance <= HUE_SPREAD + 1  # +1: 8-bit rounding
    others = [c for c in CLASS_HUES if c != category]
    nearest = min(abs((CLASS_HUES[c] - CLASS_HUES[category] + 180) % 360 -
                      180) for c in others)
    assert nearest > 2 * (HUE_SPREAD + 1)  # families do not meet


def test_color_depends_only_on_class_and_index():
    categories = np.array([[3, 3, 0], [5, 0, 0]], np.uint8)
    instances = np.array([[7, 7, 0], [2, 0, 0]], np.int32)
    first = colorize(categories, instances)
    # Another image: same (class, index) pairs elsewhere, plus others.
    categories2 = np.array([[0, 5, 1], [3, 3, 0]], np.uint8)
    instances2 = np.array([[0, 2, 1], [7, 7, 0]], np.int32)
    second = colorize(categories2, instances2)
    assert (first[0, 0] == second[1, 0]).all()
    assert (first[1, 0] == second[0, 1]).all()
    assert (first[1, 0] == instance_color(5, 2)).all()
    assert (first[0, 2] == 0).all()


def test_overlay_blends_and_outlines():
    image = np.full((20, 20, 3), 100, np.uint8)
    categories = np.zeros((20, 20), np.uint8)
    instances = np.zeros((20, 20), np.int32)
    categories[5:15, 5:15], instances[5:15, 5:15] = 3, 1
    out = overlay(image, categories, instances, alpha=0.5)
    color = np.array(instance_color(3, 1))
    assert (out[0, 0] == 100).all()  # background untouched
    assert (out[10, 10] == np.round((100 + color) / 2)).all()  # blended
    assert (out[5, 10] == color).all()  # outline in full color
    edge = outline(instances)
    assert edge[5, 10] and not edge[10, 10] and not edge[0, 0]
    with pytest.raises(ValueError, match='mask is 20x20'):
        overlay(np.zeros((10, 10, 3), np.uint8), categories, instances)
    # A colored mask (tools/colorize.py output) gives the same overlay.
    colored = colorize(categories, instances)
    assert (overlay(image, colored=colored, alpha=0.5) == out).all()


def run_vis(args):
    return subprocess.run([sys.executable, osp.join(REPO, 'vis.py')] + args,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_vis_command(tmp_path):
    scenes = make_scenes(str(tmp_path), num_images=3, seed=5)
    pred = tmp_path / 'pred'
    frames = []
    for scene in scenes:
        labels = write_bitmask(str(pred / 'bitmasks' / (scene['stem'] +
                                                         '.png')),
                               scene['masks'], scene['labels'],
                               np.linspace(0.9, 0.3, len(scene['labels'])))
        frames.append(dict(name=scene['stem'] + '.jpg', labels=labels))
    write_score_file(str(pred / 'score.json'), frames)

    proc = run_vis(['-i', str(tmp_path / 'images'), '-c',
                    str(pred / 'bitmasks'), '-o', str(tmp_path / 'vis'),
                    '--score-file', str(pred / 'score.json'), '--nproc',
                    '2', '-n', '2'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(os.listdir(tmp_path / 'vis'))
    assert written == sorted(s['stem'] + '.jpg' for s in scenes)[:2]
    scene = scenes[0]
    vis = np.asarray(Image.open(tmp_path / 'vis' / written[0]))
    image = np.asarray(Image.open(tmp_path / 'images' / written[0]))
    assert vis.shape == image.shape
    foreground = scene['masks'].any(0)
    # Instances changed, most of the background did not (JPEG noise aside).
    diff = np.abs(vis.astype(int) - image).sum(-1)
    assert diff[foreground].mean() > 3 * diff[~foreground].mean()

    # A score file without a label's score: one-line error naming it,
    # nothing drawn.
    bad = json.loads((pred / 'score.json').read_text())
    del bad[1]['labels'][0]['score']
    (tmp_path / 'bad.json').write_text(json.dumps(bad))
    proc = run_vis(['-i', str(tmp_path / 'images'), '-c',
                    str(pred / 'bitmasks'), '-o', str(tmp_path / 'vis2'),
                    '--score-file', str(tmp_path / 'bad.json')])
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f'vis.py: error: score file {tmp_path / "bad.json"}: frame '
        f'{bad[1]["name"]}: label 0 has no finite "score" (found None)')
    assert not (tmp_path / 'vis2').exists()

    # A mask without its image: one-line error.
    os.remove(tmp_path / 'images' / written[0])
    proc = run_vis(['-i', str(tmp_path / 'images'), '-c',
                    str(pred / 'bitmasks'), '-o', str(tmp_path / 'vis3')])
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'vis.py: error: mask {scene["stem"]}.png: no image')


def test_images_of_every_format_read_are_found(tmp_path):
    """vis.py finds an image of a bitmask in every format test.py reads."""
    from bdd100k_ins_seg.visualization.overlay import find_image
    for name in ('a.webp', 'b.TIF', 'c.tiff', 'd.JPEG', 'e.bmp'):
        (tmp_path / name).write_bytes(b'')
        assert find_image(str(tmp_path), name.split('.')[0]) == \
            str(tmp_path / name)
    assert find_image(str(tmp_path), 'f') is None


def test_corrupt_mask_file_is_a_one_line_error(tmp_path):
    images, masks = tmp_path / 'images', tmp_path / 'masks'
    images.mkdir()
    masks.mkdir()
    Image.new('RGB', (16, 8)).save(images / 'a.jpg')
    (masks / 'a.png').write_bytes(b'not a png')
    proc = subprocess.run(
        [sys.executable, 'vis.py', '-i', str(images), '-c', str(masks), '-o',
         str(tmp_path / 'out')], cwd=osp.dirname(osp.dirname(
             osp.abspath(__file__))), capture_output=True, text=True)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('vis.py: error:') and 'a.png' in last


def test_select_instances_by_score_and_count():
    categories = np.zeros((4, 6), np.uint8)
    instances = np.zeros((4, 6), np.int32)
    for index, category in ((1, 3), (2, 1), (3, 5), (4, 3)):
        categories[:, index], instances[:, index] = category, index
    categories[:, 5], instances[:, 5] = 2, 9  # no score: always kept
    labels = {1: dict(score=0.9), 2: dict(score=0.2), 3: dict(score=0.5),
              4: dict(score=0.5), 7: dict(score=0.99)}  # 7: not in the image
    cats, insts, kept = select_instances(categories, instances, labels,
                                         score_thr=0.3)
    assert sorted(kept) == [1, 3, 4]
    assert (insts[:, 2] == 0).all() and (cats[:, 2] == 0).all()
    assert (insts[:, [1, 3, 4, 5]] == instances[:, [1, 3, 4, 5]]).all()
    assert (cats[:, [1, 3, 4, 5]] == categories[:, [1, 3, 4, 5]]).all()
    assert (instances[:, 2] == 2).all()  # the input is left alone
    # At most 2: the best (0.9), then the tie at 0.5 goes to index 3.
    _, insts, kept = select_instances(categories, instances, labels,
                                      score_thr=0.3, max_num=2)
    assert sorted(kept) == [1, 3]
    assert sorted(np.unique(insts)) == [0, 1, 3, 9]
    # Threshold 0 and no limit: everything stays.
    cats, insts, kept = select_instances(categories, instances, labels)
    assert (insts == instances).all() and (cats == categories).all()
    assert sorted(kept) == [1, 2, 3, 4]


def test_vis_draws_only_confident_predictions(tmp_path):
    scenes = make_scenes(str(tmp_path), num_images=1, seed=7)
    scene = scenes[0]
    assert len(scene['labels']) >= 3
    scores = np.linspace(0.9, 0.1, len(scene['labels']))
    pred = tmp_path / 'pred'
    labels = write_bitmask(str(pred / 'bitmasks' / (scene['stem'] + '.png')),
                           scene['masks'], scene['labels'], scores)
    write_score_file(str(pred / 'score.json'),
                     [dict(name=scene['stem'] + '.jpg', labels=labels)])
    image = np.asarray(Image.open(tmp_path / 'images' /
                                  (scene['stem'] + '.jpg'))).astype(int)

    def changed(extra, out):
        proc = run_vis(['-i', str(tmp_path / 'images'), '-c',
                        str(pred / 'bitmasks'), '-o', str(tmp_path / out),
                        '--score-file', str(pred / 'score.json'),
                        '--nproc', '1'] + extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        vis = np.asarray(Image.open(tmp_path / out /
                                    (scene['stem'] + '.jpg'))).astype(int)
        diff = np.abs(vis - image).sum(-1)
        # Per prediction (by score rank): is its visible part drawn?
        from bdd100k_ins_seg.formats.bitmask import read_bitmask
        _, instances = read_bitmask(str(pred / 'bitmasks' /
                                        (scene['stem'] + '.png')))
        drawn = []
        for label in sorted(labels, key=lambda lb: -lb['score']):
            visible = instances == label['index']
            drawn.append(diff[visible].mean() > 20 if visible.any() else None)
        return drawn, [lb['score'] for lb in
                       sorted(labels, key=lambda lb: -lb['score'])]

    drawn, ranked = changed([], 'default')  # threshold 0.3
    assert [d for d, s in zip(drawn, ranked) if s >= 0.3 and d is not None]
    for d, s in zip(drawn, ranked):
        if d is not None:
            assert d == (s >= 0.3), (drawn, ranked)
    drawn, ranked = changed(['--score-thr', '0', '--max-per-image', '1'],
                            'top1')
    visible = [d for d in drawn if d is not None]
    assert drawn[0] and not any(visible[1:]), drawn

    # The options need the scores.
    proc = run_vis(['-i', str(tmp_path / 'images'), '-c',
                    str(pred / 'bitmasks'), '-o', str(tmp_path / 'x'),
                    '--score-thr', '0.5'])
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        'vis.py: error: --score-thr needs --score-file (the scores)')
    assert not (tmp_path / 'x').exists()
