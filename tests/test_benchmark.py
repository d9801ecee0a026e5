"""tools/benchmark.py on CPU at a tiny size: it runs, writes its rows, and
checks the evaluators agree (no timing assertions)."""
import json
import math
import os.path as osp
import pytest

import bdd100k_ins_seg.benchmark as benchmark
from scripts import load_script

SAMPLE = 'configs/sample/mask_rcnn_r18_fpn_sample.py'
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool():
    """tools/benchmark.py as a module."""
    return load_script('tools/benchmark.py', 'benchmark_tool')


def test_benchmark_cli_tiny(tmp_path, capsys):
    out = tmp_path / 'out' / 'bench.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                    '--repeats', '1', '--stages', 'a,d,e', '--size', '96x64',
                    '--images', '1', '--threads', '1'])
    result = json.loads(out.read_text())
    rows = result['rows']
    assert [r['stage'] for r in rows] == ['a', 'a', 'e', 'd']
    for row in rows:
        assert set(benchmark.ROW_KEYS) <= set(row)
        assert row['ms_per_image'] > 0
        assert row['images_per_s'] == pytest.approx(1000 /
                                                    row['ms_per_image'])
    for row in rows[1:]:
        assert row['speedup'] == pytest.approx(
            row['baseline_ms_per_image'] / row['ms_per_image'])
    assert math.isnan(rows[0]['speedup'])
    assert 'identical' in rows[3]['what']
    assert 'optimized' in rows[1]['what'] and 'BN folded' in rows[2]['what']
    assert rows[1]['baseline_ms_per_image'] == rows[0]['ms_per_image']
    assert result['machine']['threads'] == 1
    table = capsys.readouterr().out
    assert '| d | evaluator' in table and 'torchvision' in table


def test_missing_stage_module_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark, 'STAGES', ['model', 'nope'])
    monkeypatch.setattr(benchmark, 'STAGE_MODULES', {'x': 'nope'})
    with pytest.raises(RuntimeError,
                       match=r'bdd100k_ins_seg\.benchmark\.nope is missing'):
        benchmark.run_stages(SAMPLE, 'cpu', 1, str(tmp_path), ['x'])


def test_bad_arguments(tmp_path, capsys):
    tool = load_tool()
    assert set(tool.STAGE_LETTERS) == set(benchmark.STAGE_MODULES)
    for argv, message in (
            (['--stages', 'a,z'], "--stages: unknown stage 'z'"),
            (['--size', '12x'], '--size: expected WIDTHxHEIGHT'),
            (['--repeats', '0'], '--repeats: must be at least 1')):
        with pytest.raises(SystemExit) as info:
            tool.main([SAMPLE, '--json', str(tmp_path / 'x.json')] + argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        tool.main(['nope.py', '--json', str(tmp_path / 'x.json')])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().endswith(
        'error: nope.py: config file not found')
    assert not (tmp_path / 'x.json').exists()


def test_largest_difference_between_predictions():
    import torch
    from mmengine.structures import InstanceData

    from bdd100k_ins_seg.benchmark.model import largest_difference

    def pred(boxes, scores, labels):
        return InstanceData(bboxes=torch.tensor(boxes), scores=torch.tensor(
            scores), labels=torch.tensor(labels))

    a = pred([[0., 0., 100., 50.], [10., 10., 20., 20.]], [0.9, 0.5], [1, 2])
    assert largest_difference(a, a) == 0.0
    b = pred([[0., 0., 100., 50.], [10., 10., 20., 20.01]], [0.9, 0.5], [1, 2])
    assert largest_difference(a, b) == pytest.approx(0.01 / 100, rel=1e-3)
    c = pred([[0., 0., 100., 50.], [10., 10., 20., 20.]], [0.9, 0.502], [1, 2])
    assert largest_difference(a, c) == pytest.approx(0.002, rel=1e-3)
    d = pred([[0., 0., 100., 50.], [10., 10., 20., 20.]], [0.9, 0.5], [1, 3])
    assert largest_difference(a, d) == float('inf')
    assert largest_difference(a, pred([[0., 0., 100., 50.]], [0.9], [1])) \
        == float('inf')


def test_a_wrong_optimized_forward_is_refused(monkeypatch, tmp_path):
    """Stage a compares the two forwards' feature pyramids before timing."""
    import torch

    import bdd100k_ins_seg.benchmark.model as stage
    from bdd100k_ins_seg import optimize
    optimize_for_inference = optimize.optimize_for_inference

    def wrong(model):
        done = optimize_for_inference(model)
        with torch.no_grad():
            model.neck.fpn_convs[0].conv.bias.add_(1.0)
        return done

    monkeypatch.setattr(optimize, 'optimize_for_inference', wrong)
    monkeypatch.setitem(benchmark.SETTINGS, 'size', (96, 64))
    with pytest.raises(RuntimeError, match='computes other features'):
        stage.run(SAMPLE, 'cpu', 1, str(tmp_path))


def test_conv_stage_rows(tmp_path):
    """Stage f at a tiny size: one row per layer, Winograd within 1e-4
    (relative) of the direct convolution, the gate's verdict named."""
    import re
    out = tmp_path / 'conv.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                      '--repeats', '1', '--stages', 'f', '--size', '256x128',
                      '--threads', '1'])
    rows = json.loads(out.read_text())['rows']
    assert [r['stage'] for r in rows] == ['f'] * 6
    for row in rows:
        error = float(re.search(r'within (\S+) of direct', row['what'])[1])
        assert error < 1e-4
        assert row['speedup'] == pytest.approx(
            row['baseline_ms_per_image'] / row['ms_per_image'])
    used = ['not used' not in r['what'] for r in rows]
    # 256 channels at 32x64 and 100 RoIs: Winograd; 64 channels and the
    # smallest map: direct.
    assert used == [True, False, False, True, False, False]


def test_train_step_stage_rows(tmp_path):
    """Stage t at a tiny size: channels_last against NCHW and the RoIAlign
    size rule against the separable forward everywhere, each a row; the
    rule is back in place afterwards."""
    from bdd100k_ins_seg.ops import torchvision_ext
    out = tmp_path / 'train.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                      '--repeats', '1', '--stages', 't', '--size', '96x64',
                      '--threads', '1'])
    rows = json.loads(out.read_text())['rows']
    assert [r['stage'] for r in rows] == ['t', 't']
    assert 'AdamW' in rows[0]['what'] and '96x64' in rows[0]['what']
    assert rows[0]['baseline'] == 'the same, NCHW weights'
    assert rows[1]['baseline'] == 'separable RoIAlign forward on every map'
    assert rows[0]['ms_per_image'] == rows[1]['ms_per_image']
    for row in rows:
        assert row['ms_per_image'] > 0 and row['baseline_ms_per_image'] > 0
        assert row['speedup'] == pytest.approx(
            row['baseline_ms_per_image'] / row['ms_per_image'])
    assert torchvision_ext.CL_FORWARD_MIN_ELEMENTS == 1 << 19


def test_train_step_batch_has_the_boxes_and_masks():
    """The stage's synthetic batch: 2 padded images, 15 instances each,
    every mask filling its box."""
    from mmdet.apis import init_detector
    from mmengine.config import Config

    from bdd100k_ins_seg.benchmark.train_step import synthetic_batch
    model = init_detector(Config.fromfile(SAMPLE), checkpoint=None,
                          device='cpu')
    data = synthetic_batch(model, 8, 96, 64)
    assert data['inputs'].shape[:2] == (2, 3)
    for sample in data['data_samples']:
        gt = sample.gt_instances
        assert len(gt) == 15 and int(gt.labels.max()) < 8
        masks = gt.masks.to_ndarray()
        for mask, (x1, y1, x2, y2) in zip(masks, gt.bboxes.int().tolist()):
            ys, xs = mask.nonzero()
            assert (xs.min(), ys.min()) == (x1, y1)
            assert (xs.max() + 1, ys.max() + 1) == (x2, y2)
