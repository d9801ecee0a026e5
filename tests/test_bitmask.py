"""The bitmask writer: format, overlap order, sizes, validation, atomicity."""
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bdd100k_ins_seg.formats import bitmask as bm


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_overlap_resolves_to_higher_score(tmp_path):
    height, width = 40, 60
    masks = np.zeros((2, height, width), bool)
    masks[0, 5:30, 5:40] = True  # car, low score
    masks[1, 10:35, 20:55] = True  # bus, high score, overlaps the car
    path = str(tmp_path / 'a.png')
    labels = bm.write_bitmask(path, masks, [3, 5], [0.3, 0.8])

    categories, instances = bm.read_bitmask(path)
    overlap = masks[0] & masks[1]
    assert overlap.any()
    high = [lab for lab in labels if lab['score'] == pytest.approx(0.8)][0]
    low = [lab for lab in labels if lab['score'] == pytest.approx(0.3)][0]
    assert (instances[overlap] == high['index']).all()
    assert (categories[overlap] == 5).all()
    assert (instances[masks[0] & ~masks[1]] == low['index']).all()
    assert (categories[masks[0] & ~masks[1]] == 3).all()
    assert (instances[~masks[0] & ~masks[1]] == 0).all()
    assert high['category'] == 'bus' and low['category'] == 'car'
    # G is always 0; the file is RGBA at the masks' size.
    with Image.open(path) as image:
        assert image.mode == 'RGBA' and image.size == (width, height)
        assert np.asarray(image)[..., 1].max() == 0


def test_same_result_whatever_the_input_order(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((6, 30, 50)) > 0.5
    labels, scores = rng.integers(1, 9, 6), rng.random(6)
    first, _ = bm.encode_bitmask(masks, labels, scores)
    order = rng.permutation(6)
    second, _ = bm.encode_bitmask(masks[order], labels[order], scores[order])
    assert (first == second).all()


def test_more_than_255_instances_keep_distinct_indices(tmp_path):
    height, width = 40, 80
    masks = np.zeros((300, height, width), bool)
    for i in range(300):  # 300 disjoint 2x5 blocks
        y, x = divmod(i, 16)
        masks[i, 2 * y:2 * y + 2, 5 * x:5 * x + 5] = True
    scores = np.linspace(0.99, 0.01, 300)
    path = str(tmp_path / 'many.png')
    labels = bm.write_bitmask(path, masks, np.full(300, 3), scores)

    _, instances = bm.read_bitmask(path)
    found = np.unique(instances[instances > 0])
    assert len(found) == 300 and found.max() == 300
    by_index = {lab['index']: lab for lab in labels}
    for i in (0, 254, 255, 256, 299):
        index = np.unique(instances[masks[i]])
        assert len(index) == 1
        assert by_index[int(index[0])]['score'] == pytest.approx(scores[i])


def test_no_detections_give_empty_png_and_no_labels(tmp_path):
    path = str(tmp_path / 'empty.png')
    labels = bm.write_bitmask(path, np.zeros((0, 37, 53), bool),
                              np.zeros(0), np.zeros(0),
                              bboxes=np.zeros((0, 4)), image_size=(37, 53))
    assert labels == []
    with Image.open(path) as image:
        assert image.mode == 'RGBA' and image.size == (53, 37)
        assert not np.asarray(image).any()


def test_boxes_limit_painting_to_the_box(tmp_path):
    """Given mmdet-like boxes (mask inside its box +- 1 px), painting only
    inside the boxes gives the same bitmask as scanning the full masks."""
    rng = np.random.default_rng(1)
    height, width = 72, 128
    masks = np.zeros((20, height, width), bool)
    boxes = np.zeros((20, 4), np.float32)
    for i in range(20):
        x1, y1 = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
        x2, y2 = x1 + rng.uniform(4, 40), y1 + rng.uniform(4, 40)
        boxes[i] = x1, y1, x2, y2
        # A blob touching the box's pixel border (floor/ceil) +- 1.
        xa, ya = max(int(x1) - 1, 0), max(int(y1) - 1, 0)
        xb, yb = min(int(np.ceil(x2)) + 1, width), min(
            int(np.ceil(y2)) + 1, height)
        masks[i, ya:yb, xa:xb] = rng.random((yb - ya, xb - xa)) > 0.3
    labels, scores = rng.integers(1, 9, 20), rng.random(20)
    with_boxes, _ = bm.encode_bitmask(torch.from_numpy(masks), labels,
                                      scores, torch.from_numpy(boxes))
    full, _ = bm.encode_bitmask(masks, labels, scores)
    assert (with_boxes == full).all()
    # A mask outside its (wrong) box is not painted there.
    wrong = boxes.copy()
    wrong[0] = (0, 0, 2, 2)
    clipped, _ = bm.encode_bitmask(masks[:1], labels[:1], scores[:1],
                                   wrong[:1])
    unclipped, _ = bm.encode_bitmask(masks[:1], labels[:1], scores[:1])
    assert unclipped[4:, 4:].any() and not clipped[4:, 4:].any()


@pytest.mark.parametrize('labels', [[0], [9]])
def test_unknown_class_is_an_error(tmp_path, labels):
    path = tmp_path / 'x.png'
    with pytest.raises(ValueError, match=f'unknown category id {labels[0]}'):
        bm.write_bitmask(str(path), np.ones((1, 4, 4), bool), labels, [0.5])
    assert not path.exists()


def test_wrong_mask_size_is_an_error(tmp_path):
    path = tmp_path / 'x.png'
    with pytest.raises(ValueError, match='masks are 720x1280'):
        bm.write_bitmask(str(path), np.ones((1, 720, 1280), bool), [3],
                         [0.5], image_size=(96, 160))
    with pytest.raises(ValueError, match=r'\(N, H, W\)'):
        bm.write_bitmask(str(path), np.ones((4, 4), bool), [3], [0.5])
    with pytest.raises(ValueError, match='2 masks but 1 labels'):
        bm.write_bitmask(str(path), np.ones((2, 4, 4), bool), [3], [0.5])
    assert not path.exists()


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / 'out.png'

    def fail(src, dst):
        raise KeyboardInterrupt  # killed between writing and renaming

    monkeypatch.setattr(os, 'replace', fail)
    with pytest.raises(KeyboardInterrupt):
        bm.write_bitmask(str(path), np.ones((1, 8, 8), bool), [1], [0.5])
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    bm.write_bitmask(str(path), np.ones((1, 8, 8), bool), [1], [0.5])
    assert os.listdir(tmp_path) == ['out.png']
    # The usual file mode, not the temporary file's private 0600.
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_score_file_ids_unique_across_frames(tmp_path):
    path = str(tmp_path / 'score.json')
    frames = [
        dict(name='a.jpg', labels=[dict(index=1, score=0.9, category='car'),
                                   dict(index=2, score=0.4, category='bus')]),
        dict(name='b.jpg', labels=[]),
        dict(name='c.jpg', labels=[dict(index=1, score=0.7,
                                        category='rider')]),
    ]
    bm.write_score_file(path, frames)
    with open(path) as f:
        written = json.load(f)
    assert [f['name'] for f in written] == ['a.jpg', 'b.jpg', 'c.jpg']
    ids = [lab['id'] for f in written for lab in f['labels']]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert written[0]['labels'][1] == dict(id=ids[1], index=2, score=0.4,
                                           category='bus')
    assert bm.load_score_file(path)['c.png'][1]['category'] == 'rider'


def test_names_follow_the_evaluator():
    assert bm.frame_name('/x/abc-123.png') == 'abc-123.jpg'
    assert bm.bitmask_name('/x/abc-123.jpg') == 'abc-123.png'


def test_read_bitmask_rejects_non_rgba(tmp_path):
    path = str(tmp_path / 'rgb.png')
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match='not an RGBA bitmask'):
        bm.read_bitmask(path)


def test_boxes_that_hold_nothing_fall_back_to_the_mask(tmp_path):
    """Heads without real boxes (mmdet's SOLO returns zeros) must not have
    their masks cut to the empty box."""
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:30, 10:50] = True
    masks[1, 20:35, 30:55] = True
    zero_boxes = np.zeros((2, 4), np.float32)
    with_zero_boxes, _ = bm.encode_bitmask(masks, [3, 1], [0.9, 0.8],
                                           zero_boxes)
    without_boxes, _ = bm.encode_bitmask(masks, [3, 1], [0.9, 0.8])
    assert (with_zero_boxes == without_boxes).all()
    assert (with_zero_boxes[..., 0] == 3).sum() == masks[0].sum()


@pytest.mark.parametrize('deflate', ['zlib-ng', 'zlib'])
def test_png_bytes_decodes_to_the_array(monkeypatch, deflate):
    """The encoder's PNGs read back as the same array with PIL (what the
    official evaluator uses), OpenCV and libspng, with either deflate."""
    import cv2
    import pyspng
    import zlib_ng  # noqa: F401 a runtime requirement: present
    if deflate == 'zlib':
        monkeypatch.setitem(sys.modules, 'zlib_ng', None)
    rng = np.random.default_rng(1)
    for height, width in [(1, 1), (7, 300), (72, 128)]:
        bitmask = rng.integers(0, 4, (height, width, 4),
                               dtype=np.uint8) * 60
        bitmask[:height // 2] = 0
        data = bm.png_bytes(bitmask)
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == 'RGBA'
            assert np.array_equal(np.asarray(image), bitmask)
        bgra = cv2.imdecode(np.frombuffer(data, np.uint8),
                            cv2.IMREAD_UNCHANGED)
        assert np.array_equal(cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA),
                              bitmask)
        assert np.array_equal(pyspng.load(data), bitmask)
    for bad in [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 4)),
                np.zeros((0, 4, 4), np.uint8)]:
        with pytest.raises(ValueError, match='bitmask: expected'):
            bm.png_bytes(bad)
