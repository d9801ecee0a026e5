"""tools/benchmark.py on CPU at a tiny size: it runs, writes its rows, and
checks the evaluators agree (no timing assertions)."""
import json
import math
import os.path as osp
import re

import pytest

import bdd100k_ins_seg.benchmark as benchmark
from scripts import load_script

SAMPLE = 'configs/sample/mask_rcnn_r18_fpn_sample.py'
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool():
    """tools/benchmark.py as a module."""
    return load_script('tools/benchmark.py', 'benchmark_tool')


def check_rows(rows):
    """Every row has the row keys, a finite positive time and images/s to
    match, and a speedup of baseline over ours where it has a baseline."""
    for row in rows:
        assert set(benchmark.ROW_KEYS) <= set(row)
        assert math.isfinite(row['ms_per_image']) and row['ms_per_image'] > 0
        assert row['images_per_s'] == pytest.approx(1000 /
                                                    row['ms_per_image'])
        if row['baseline']:
            assert row['baseline_ms_per_image'] > 0
            assert row['speedup'] == pytest.approx(
                row['baseline_ms_per_image'] / row['ms_per_image'])
        else:
            assert math.isnan(row['speedup'])


def check_forward_rows(rows, device):
    """Stages a and e: a's two rows (the plain forward; the optimized one
    against it), then e's one (the optimized forward against
    torchvision's), on ``device``."""
    assert [r['stage'] for r in rows] == ['a', 'a', 'e']
    check_rows(rows)
    plain, optimized, against = rows
    assert not plain['baseline'] and 'optimized' not in plain['what']
    assert 'optimized' in optimized['what'] and 'BN folded' in against['what']
    assert optimized['baseline'] == 'the plain forward'
    assert optimized['baseline_ms_per_image'] == plain['ms_per_image']
    assert against['baseline'].startswith('torchvision maskrcnn_resnet50')
    assert against['ms_per_image'] == optimized['ms_per_image']
    assert all(f', {device}, ' in r['what'] for r in rows)


def run_forward_stages(tmp_path, device, size, repeats=1):
    """``tools/benchmark.py --stages a,e`` on ``device`` (tests/test_cuda.py
    runs it on CUDA), checked by :func:`check_forward_rows`; the json."""
    out = tmp_path / 'forward.json'
    load_tool().main([SAMPLE, '--device', device, '--json', str(out),
                      '--repeats', str(repeats), '--stages', 'a,e',
                      '--size', size])
    result = json.loads(out.read_text())
    check_forward_rows(result['rows'], device)
    return result


def test_forward_stages_rows(tmp_path):
    result = run_forward_stages(tmp_path, 'cpu', '96x64')
    assert result['size'] == [96, 64] and result['machine']['device'] == 'cpu'


def test_benchmark_cli_tiny(tmp_path, capsys):
    out = tmp_path / 'out' / 'bench.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                    '--repeats', '1', '--stages', 'a,d,e', '--size', '96x64',
                    '--images', '1', '--threads', '1'])
    result = json.loads(out.read_text())
    rows = result['rows']
    assert [r['stage'] for r in rows] == ['a', 'a', 'e', 'd']
    check_forward_rows(rows[:3], 'cpu')
    check_rows(rows[3:])
    assert 'identical' in rows[3]['what']
    assert result['machine']['threads'] == 1
    pace = result['machine']['pace_probe_ms']
    assert len(pace) == 2 and all(ms > 0 for ms in pace)
    table = capsys.readouterr().out
    assert '| d | evaluator' in table and 'torchvision' in table
    # each stage module's elapsed time, as it ends
    assert re.search(r'^stage a, e \(model\): \d+\.\d s$', table, re.M)
    assert re.search(r'^stage d \(evaluator\): \d+\.\d s$', table, re.M)
    assert (f'pace probe (a fixed 3x3 convolution on one thread): '
            f'{pace[0]:.1f} ms before the stages, {pace[1]:.1f} ms after'
            in table)


def test_pace_probe_keeps_the_thread_count():
    import torch
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert benchmark.pace_probe_ms(repeats=2) > 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


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
            (['--repeats', '0'], '--repeats: must be at least 1'),
            (['--test-runs', '0'], '--test-runs: must be at least 1')):
        with pytest.raises(SystemExit) as info:
            tool.main([SAMPLE, '--json', str(tmp_path / 'x.json')] + argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        tool.main(['nope.py', '--json', str(tmp_path / 'x.json')])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().endswith(
        'error: config nope.py: not found, nor a model name; '
        '`python tools/model_zoo.py list` shows the names')
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
    from bdd100k_ins_seg.inference import optimize
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


def test_forward_agreement_is_checked_without_tf32(monkeypatch, tmp_path):
    """On a GPU with PyTorch's default TF32, each forward's convolutions
    round by ~1e-3 on their own: the two forwards of stage a then differ
    by ~7e-4 (emulated), close to what its check of the fold allows
    (1e-3). Emulated here, convolutions rounded to TF32 whenever the
    settings ask cuDNN for it, against a tolerance of 2e-4 (still 100x
    float32's difference): the check runs with TF32 off and passes, and
    the timed forwards keep the setting."""
    import bdd100k_ins_seg.benchmark.model as stage
    from bdd100k_ins_seg.engine import tf32
    monkeypatch.setitem(benchmark.SETTINGS, 'size', (96, 64))
    monkeypatch.setattr(stage, 'FEATURE_TOLERANCE', 2e-4)
    with tf32.emulate_tf32('nearest', when_enabled=True) as emulation:
        rows = stage.run(SAMPLE, 'cpu', 1, str(tmp_path))
    check_forward_rows(rows, 'cpu')
    assert emulation.calls > 0 and tf32.tf32_enabled()['conv']


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


def test_dcn_stage_rows(tmp_path):
    """Stage g at a tiny size: DCN and DCNv2, each a forward + backward of
    mmcv's module against torchvision's deform_conv2d, checked to agree
    first."""
    out = tmp_path / 'dcn.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                      '--repeats', '1', '--stages', 'g', '--size', '96x64',
                      '--threads', '1'])
    rows = json.loads(out.read_text())['rows']
    assert [r['stage'] for r in rows] == ['g', 'g']
    check_rows(rows)
    assert rows[0]['what'].startswith('DCN: mmcv DeformConv2d forward + '
                                      'backward (2x64x16x24, 3x3, 64 out')
    assert rows[1]['what'].startswith('DCNv2: mmcv ModulatedDeformConv2d')
    assert rows[0]['baseline'] == 'torchvision deform_conv2d, same tensors'
    assert 'with mask and bias' in rows[1]['baseline']
    for row in rows:
        assert float(re.search(r'within (\S+);', row['what'])[1]) <= 1e-4


@pytest.mark.parametrize('wrong', ['weight', 'mask'])
def test_a_wrong_dcn_gradient_is_refused(monkeypatch, tmp_path, wrong):
    """Stage g compares the gradients before timing."""
    import bdd100k_ins_seg.benchmark.dcn as stage
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    real = torchvision_ext._deform_backward

    def off(*args):
        grads = list(real(*args))
        grads[1 if wrong == 'weight' else 3] = grads[
            1 if wrong == 'weight' else 3] * 1.01
        return tuple(grads)

    monkeypatch.setattr(torchvision_ext, '_deform_backward', off)
    monkeypatch.setitem(benchmark.SETTINGS, 'size', (64, 64))
    name = 'DCN:' if wrong == 'weight' else 'DCNv2:'
    with pytest.raises(RuntimeError, match=f'{name} mmcv .* computes other '
                       'outputs or gradients'):
        stage.run(SAMPLE, 'cpu', 1, str(tmp_path))


@pytest.mark.parametrize('native_bf16', [True, False])
def test_train_step_stage_rows(tmp_path, monkeypatch, capsys, native_bf16):
    """Stage t at a tiny size: channels_last against NCHW and the RoIAlign
    size rule against the separable forward everywhere, each a row, and
    bfloat16 autocast against float32 where the CPU has native bfloat16
    (both cases, whatever this CPU has); the rule is back in place
    afterwards."""
    from bdd100k_ins_seg.plugin import optim
    from bdd100k_ins_seg.plugin.ops import torchvision_ext
    monkeypatch.setattr(optim, 'native_bf16', lambda device: native_bf16)
    out = tmp_path / 'train.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                      '--repeats', '1', '--stages', 't', '--size', '96x64',
                      '--threads', '1'])
    rows = json.loads(out.read_text())['rows']
    said = 'no bfloat16 autocast row: this CPU has no native bfloat16'
    assert (said in capsys.readouterr().out) != native_bf16
    assert [r['stage'] for r in rows] == ['t'] * (3 if native_bf16 else 2)
    if native_bf16:
        assert rows[2]['what'].endswith(
            'bfloat16 autocast (BF16OptimWrapper)')
        assert rows[2]['baseline'] == 'the same, float32'
        assert rows[2]['baseline_ms_per_image'] == rows[0]['ms_per_image']
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


SAMPLE_ON = '''
_base_ = {sample!r}
data_root = {data_root!r}
train_dataloader = dict(dataset=dict(data_root=data_root))
'''


@pytest.fixture(scope='module')
def sample_on_tiny_data(tmp_path_factory):
    """The sample config over 3 generated 96x64 training images, and a
    checkpoint of its model with non-default weights."""
    import torch
    from mmdet.apis import init_detector
    from mmengine.config import Config

    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    root = tmp_path_factory.mktemp('bench_t')
    data_root = str(root / 'sample') + '/'
    generate_sample_dataset(data_root, seed=2, counts=dict(train=3),
                            size=(96, 64), nproc=1, progress=False)
    config = root / 'sample_on_tiny.py'
    config.write_text(SAMPLE_ON.format(sample=osp.join(REPO, SAMPLE),
                                       data_root=data_root))
    model = init_detector(Config.fromfile(str(config)), checkpoint=None,
                          device='cpu')
    state = {k: v + 0.5 if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    checkpoint = root / 'trained.pth'
    torch.save({'state_dict': state, 'meta': {}}, checkpoint)
    return str(config), str(checkpoint), data_root, state


def test_build_model_loads_the_checkpoint(sample_on_tiny_data):
    """--checkpoint's weights are the model's in stages a, c, e and t."""
    import torch

    from bdd100k_ins_seg.benchmark.model import build_model
    config, checkpoint, _, state = sample_on_tiny_data
    model, _ = build_model(config, 'cpu', checkpoint)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    untrained, _ = build_model(config, 'cpu')
    conv = 'backbone.conv1.weight'
    assert not torch.equal(untrained.state_dict()[conv], state[conv])


def test_dataset_batches_are_the_training_images(sample_on_tiny_data):
    """--train-batches: batches of 2 images of the config's training set,
    through its train pipeline (resized by it) and the data preprocessor,
    with the images' labeled instances; more batches than the set has
    images start it again."""
    import json

    from mmdet.apis import init_detector
    from mmengine.config import Config

    from bdd100k_ins_seg.benchmark.train_step import dataset_batches
    config, _, data_root, _ = sample_on_tiny_data
    cfg = Config.fromfile(config)
    model = init_detector(cfg, checkpoint=None, device='cpu')
    batches = dataset_batches(model, cfg, 3)
    assert len(batches) == 3
    with open(osp.join(data_root, 'jsons',
                       'ins_seg_train_cocofmt.json')) as f:
        coco = json.load(f)
    files = {im['file_name']: im['id'] for im in coco['images']}
    per_image = {i: 0 for i in files.values()}
    for ann in coco['annotations']:
        if not ann.get('iscrowd', 0) and not ann.get('ignore', 0):
            per_image[ann['image_id']] += 1
    seen = []
    for batch in batches:
        inputs, samples = batch['inputs'], batch['data_samples']
        assert inputs.shape[:2] == (2, 3) and inputs.dtype.is_floating_point
        for sample in samples:
            name = osp.basename(sample.img_path)
            seen.append(name)
            # 96x64 resized into the sample's 320x192 keeping the ratio
            assert sample.img_shape == (192, 288)
            assert len(sample.gt_instances) == per_image[files[name]]
            assert sample.gt_instances.masks.masks.shape[1:] == (192, 288)
    assert set(seen) == set(files) and len(seen) == 6


def test_train_step_stage_with_checkpoint_and_dataset(sample_on_tiny_data,
                                                      tmp_path):
    config, checkpoint, _, _ = sample_on_tiny_data
    out = tmp_path / 'train.json'
    load_tool().main([config, '--device', 'cpu', '--json', str(out),
                      '--repeats', '1', '--stages', 't', '--threads', '1',
                      '--checkpoint', checkpoint, '--train-batches', '2'])
    result = json.loads(out.read_text())
    assert result['checkpoint'] == checkpoint
    rows = result['rows']
    assert [r['stage'] for r in rows][:2] == ['t', 't']
    assert '2 batches of the training set' in rows[0]['what']
    assert 'padded to 288x192' in rows[0]['what']
    assert 'weights of trained.pth' in rows[0]['what']
    for row in rows:
        assert row['ms_per_image'] > 0 and row['baseline_ms_per_image'] > 0


def test_bad_checkpoint_or_training_set_is_named(sample_on_tiny_data,
                                                 tmp_path, capsys):
    """A missing or foreign checkpoint and an absent training set stop the
    tool with one line naming them, before any stage, and no json."""
    import torch
    config, _, _, _ = sample_on_tiny_data
    out = tmp_path / 'x.json'
    foreign = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {'head.weight': torch.zeros(2)}}, foreign)
    missing_data = tmp_path / 'no_data.py'
    missing_data.write_text(SAMPLE_ON.format(
        sample=osp.join(REPO, SAMPLE), data_root=str(tmp_path / 'none/')))
    for argv, message in (
            ([config, '--checkpoint', str(tmp_path / 'nope.pth')],
             'nope.pth'),
            ([config, '--checkpoint', str(foreign)],
             f'checkpoint {foreign}: does not fit the model of the config'),
            ([str(missing_data), '--stages', 't', '--train-batches', '1'],
             f'--train-batches: the training set of {missing_data} is not '
             'there')):
        with pytest.raises(SystemExit) as info:
            load_tool().main(argv + ['--json', str(out), '--threads', '1'])
        assert info.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err
        assert not out.exists()
    with pytest.raises(SystemExit) as info:
        load_tool().main([config, '--json', str(out), '--train-batches',
                          '-1'])
    assert info.value.code == 2
    assert '--train-batches: must be at least 0' in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        load_tool().main([config, '--json', str(out), '--stages', 'a',
                          '--train-batches', '2'])
    assert info.value.code == 2
    assert 'which --stages leaves out' in capsys.readouterr().err


def test_stage_b_alone_starts_no_test_py(monkeypatch, tmp_path):
    """Stages b and c share a module: asked for b, it leaves c (test.py
    processes, the longest part of a run) out."""
    from bdd100k_ins_seg.benchmark import postprocess

    def stage_c(*args):
        raise AssertionError('stage c ran')

    monkeypatch.setattr(postprocess, 'stage_c', stage_c)
    out = tmp_path / 'b.json'
    load_tool().main([SAMPLE, '--device', 'cpu', '--json', str(out),
                      '--repeats', '1', '--stages', 'b', '--size', '96x64',
                      '--threads', '1'])
    rows = json.loads(out.read_text())['rows']
    assert [r['stage'] for r in rows] == ['b', 'b', 'b']
    check_rows(rows)


def test_postprocess_and_test_py_stages_rows(sample_on_tiny_data, tmp_path,
                                            monkeypatch):
    """Stages b and c at a tiny size, c with --checkpoint's weights (test.py
    runs on them) and --test-runs 1 (one test.py process; half the
    repeats, at least 2, without it). No timing assertions."""
    from bdd100k_ins_seg.benchmark import postprocess
    runs = []
    real = postprocess._test_py_ms_per_image
    monkeypatch.setattr(postprocess, '_test_py_ms_per_image',
                        lambda *args: runs.append(1) or real(*args))
    config, checkpoint, _, _ = sample_on_tiny_data
    out = tmp_path / 'bc.json'
    load_tool().main([config, '--device', 'cpu', '--json', str(out),
                      '--repeats', '4', '--stages', 'b,c', '--size', '96x64',
                      '--threads', '1', '--checkpoint', checkpoint,
                      '--work-dir', str(tmp_path / 'wd'), '--test-runs', '1'])
    assert len(runs) == 1
    rows = json.loads(out.read_text())['rows']
    assert [r['stage'] for r in rows] == ['b', 'b', 'b', 'c']
    # test.py ran on the given file: no untrained stand-in was written
    assert osp.isdir(tmp_path / 'wd' / 'postprocess' / 'images')
    assert not osp.exists(tmp_path / 'wd' / 'postprocess' / 'untrained.pth')
    assert 'weights of trained.pth' in rows[3]['what']
    assert rows[3]['baseline'] == 'model forward alone (same images)'
    for row in rows:
        assert row['ms_per_image'] > 0 and row['baseline_ms_per_image'] > 0
        assert row['speedup'] == pytest.approx(
            row['baseline_ms_per_image'] / row['ms_per_image'])
