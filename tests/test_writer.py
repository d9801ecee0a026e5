"""The background prediction writer: files, journals, bounded queue, errors,
and the metric that drives it."""
import json
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from bdd100k_ins_seg.inference import writer as wr
from bdd100k_ins_seg.formats.bitmask import encode_bitmask, read_bitmask
from bdd100k_ins_seg.inference.paste import BoxMasks


def box_masks(n, height=40, width=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand((n, 1, 28, 28), generator=gen)
    xy = torch.rand((n, 2), generator=gen) * torch.tensor([width, height])
    wh = 4 + torch.rand((n, 2), generator=gen) * 20
    return BoxMasks(probs, torch.cat([xy, xy + wh], 1), (height, width), 0.5)


def test_writer_writes_pngs_and_journal_then_score_file(tmp_path):
    masks = box_masks(5)
    labels, scores = np.array([1, 3, 3, 8, 2]), np.linspace(0.9, 0.1, 5)
    writer = wr.PredictionWriter(str(tmp_path), workers=2)
    for k in range(4):  # frame names out of order: score.json sorts them
        writer.put(f'{3 - k}.jpg', masks, torch.from_numpy(labels), scores)
    writer.put('empty.jpg', masks[:0], labels[:0], scores[:0])
    writer.close()
    assert writer.written == 5
    expected, expected_labels = encode_bitmask(
        masks.full(), labels, scores, masks.boxes.numpy())
    with Image.open(tmp_path / 'bitmasks' / '2.png') as image:
        assert image.mode == 'RGBA'
        np.testing.assert_array_equal(np.asarray(image), expected)
    categories, instances = read_bitmask(str(tmp_path / 'bitmasks' /
                                             'empty.png'))
    assert instances.shape == (40, 60) and not instances.any()
    records = wr.read_journals(str(tmp_path))
    assert records['0.jpg'] == expected_labels and records['empty.jpg'] == []
    wr.finish(str(tmp_path), records)
    with open(tmp_path / 'score.json') as f:
        frames = json.load(f)
    assert [f['name'] for f in frames] == ['0.jpg', '1.jpg', '2.jpg', '3.jpg',
                                           'empty.jpg']
    ids = [lab['id'] for f in frames for lab in f['labels']]
    assert ids == [str(i) for i in range(1, 21)]
    assert not (tmp_path / wr.PARTS_DIR).exists()


def test_cut_journal_line_and_png_without_line_are_not_complete(tmp_path):
    writer = wr.PredictionWriter(str(tmp_path), workers=1)
    writer.put('a.jpg', box_masks(2), [1, 2], [0.5, 0.4])
    writer.put('b.jpg', box_masks(2), [1, 2], [0.5, 0.4])
    writer.close()
    with open(writer.journal) as f:
        lines = f.readlines()
    assert len(lines) == 2
    with open(writer.journal, 'w') as f:  # killed while writing line 2
        f.write(lines[0] + lines[1][:10])
    (tmp_path / 'bitmasks' / 'c.png').write_bytes(b'')  # PNG, no line
    assert set(wr.read_journals(str(tmp_path))) == {'a.jpg'}
    os.remove(tmp_path / 'bitmasks' / 'a.png')  # line, no PNG
    assert wr.read_journals(str(tmp_path)) == {}


def test_queue_is_bounded_and_errors_reach_the_caller(tmp_path, monkeypatch):
    release = threading.Event()
    real = wr.encode_png
    started = []

    def held(bitmask):
        started.append(1)
        release.wait(30)
        return real(bitmask)

    monkeypatch.setattr(wr, 'encode_png', held)
    writer = wr.PredictionWriter(str(tmp_path), workers=1, queue_size=1)
    masks = box_masks(1)
    writer.put('a.jpg', masks, [1], [0.5])  # taken by the worker
    while not started:
        pass
    writer.put('b.jpg', masks, [1], [0.5])  # fills the queue
    third = threading.Thread(target=writer.put,
                             args=('c.jpg', masks, [1], [0.5]))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # waits: at most 1 image queued
    release.set()
    third.join(30)
    writer.close()
    assert writer.written == 3

    def broken(bitmask):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(wr, 'encode_png', broken)
    writer = wr.PredictionWriter(str(tmp_path / 'full'), workers=2)
    writer.put('a.jpg', masks, [1], [0.5])
    with pytest.raises(OSError, match='No space left'):
        writer.close()
    assert wr.read_journals(str(tmp_path / 'full')) == {}


def check_writer_zero_size_boxes(out_dir, device='cpu'):
    """The writer's files for boxes of zero width or height (on ``device``:
    a CUDA paste runs on the caller's thread): no pixel of theirs in the
    PNG, their score labels in score.json."""
    from test_paste import zero_size_case, zero_size_reference
    masks, labels, scores = zero_size_case(device)
    writer = wr.PredictionWriter(str(out_dir), workers=2)
    writer.put('zero.jpg', masks, torch.from_numpy(labels).to(device),
               torch.from_numpy(scores).to(device))
    writer.close()
    expected, expected_labels = zero_size_reference(masks, labels, scores)
    with Image.open(out_dir / 'bitmasks' / 'zero.png') as image:
        np.testing.assert_array_equal(np.asarray(image), expected)
    wr.finish(str(out_dir), wr.read_journals(str(out_dir)))
    with open(out_dir / 'score.json') as f:
        [frame] = json.load(f)
    assert [lab['index'] for lab in frame['labels']] == [1, 2, 3, 4, 5, 6]
    assert [lab['score'] for lab in frame['labels']] == sorted(
        scores.tolist(), reverse=True)
    assert [lab['category'] for lab in frame['labels']][:4] == [
        wr.CATEGORY_NAMES[k - 1] for k in (1, 2, 3, 4)]


def test_writer_paints_nothing_for_zero_size_boxes(tmp_path):
    check_writer_zero_size_boxes(tmp_path)


def test_bad_predictions_are_reported_with_their_reason(tmp_path):
    writer = wr.PredictionWriter(str(tmp_path), workers=1)
    writer.put('a.jpg', box_masks(2), [1, 9], [0.5, 0.4])
    with pytest.raises(ValueError, match='unknown category id 9'):
        writer.close()


def test_metric_writes_box_masks_like_full_masks(tmp_path):
    """The metric takes the model's BoxMasks or full masks alike; with
    score_thr the same predictions are dropped."""
    from bdd100k_ins_seg.plugin.metric import BDD100KInsSegMetric
    masks = box_masks(6, seed=3)
    scores = torch.linspace(0.9, 0.05, 6)
    outputs = {}
    for kind, value in (('box', masks), ('full', masks.full())):
        metric = BDD100KInsSegMetric(outfile_prefix=str(tmp_path / kind),
                                     format_only=True, score_thr=0.3)
        metric.process({}, [dict(
            img_path=f'x/{kind}0.jpg', ori_shape=(40, 60),
            pred_instances=dict(masks=value, labels=torch.arange(6) % 8,
                                scores=scores, bboxes=masks.boxes))])
        assert metric.evaluate(1) == {}
        outputs[kind] = read_bitmask(str(tmp_path / kind / 'bitmasks' /
                                         f'{kind}0.png'))
        with open(tmp_path / kind / 'score.json') as f:
            assert len(json.load(f)[0]['labels']) == 4
    for a, b in zip(outputs['box'], outputs['full']):
        np.testing.assert_array_equal(a, b)
    assert outputs['box'][1].any()
