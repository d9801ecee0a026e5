"""train.py on CPU: a shrunken zoo config learns, --resume continues the
run with its optimizer state, 2-process torchrun (gloo) keeps the ranks in
sync, bad input fails with one line."""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

from scripts import load_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ZOO_CONFIG = osp.join(ROOT, 'configs', 'ins_seg',
                      'mask_rcnn_r50_fpn_1x_ins_seg_bdd100k.py')

# The R-50 1x zoo config, shrunk: ResNet-18 at 1/4 width, FPN 32, 160x96
# images, a light mask head, AdamW without a schedule, no validation.
TINY_CONFIG = '''
_base_ = {zoo!r}
data_root = {data_root!r}
model = dict(
    backbone=dict(depth=18, base_channels=16, frozen_stages=-1,
                  norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=1, in_channels=32, conv_out_channels=32)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 96), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=False),
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=20)
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0))
param_scheduler = []
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(by_epoch=False, interval=1, max_keep_ckpts=-1,
                    save_best=None))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
'''

# Saves every parameter before and after training, per rank.
PARAMS_HOOK = '''
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpParamsHook(Hook):
    def _dump(self, runner, when):
        model = getattr(runner.model, 'module', runner.model)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(world_size=get_world_size(), params=params,
                        wrapper=type(runner.model).__name__,
                        bucket_view=getattr(runner.model,
                                            'gradient_as_bucket_view', None)),
                   f'{runner.work_dir}/params_{when}_rank{get_rank()}.pt')

    def before_train(self, runner):
        self._dump(runner, 'before')

    def after_train(self, runner):
        self._dump(runner, 'after')
'''


def _load_train_script():
    return load_script('train.py', 'train_script')


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """The shrunken zoo config over 2 generated training images."""
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    root = tmp_path_factory.mktemp('train')
    data_root = str(root / 'sample') + '/'
    generate_sample_dataset(data_root, seed=1, counts=dict(train=2),
                            size=(160, 96), nproc=1, progress=False)
    path = root / 'tiny_mask_rcnn.py'
    path.write_text(TINY_CONFIG.format(zoo=ZOO_CONFIG, data_root=data_root))
    return str(path)


def _train(config, work_dir, *options, resume=None):
    """train.py in this process (saves the interpreter start-up)."""
    argv = [config, '--work-dir', str(work_dir)]
    if resume is not None:
        argv += ['--resume'] + ([resume] if resume != 'auto' else [])
    # Loggers and visualizers are per-process singletons looked up by name:
    # a fresh name per run, or a run would write into an earlier one's logs.
    _train.runs = getattr(_train, 'runs', 0) + 1
    name = f'{osp.basename(work_dir)}_{_train.runs}'
    argv += ['--cfg-options', f'experiment_name={name}',
             f'visualizer.name={name}', *options]
    _load_train_script().main(argv)


def _logged(work_dir, key='loss'):
    """[(iteration, value)] of a logged scalar, over all runs in work_dir
    (in run order; runs started in the same second share a log folder)."""
    records = []
    for path in sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data',
                                          'scalars.json'))):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    return [(r['iter'], r[key]) for r in records if key in r]


def _state(checkpoint, key):
    return torch.load(checkpoint, map_location='cpu',
                      weights_only=False)[key]


def _adam_steps(checkpoint):
    state = _state(checkpoint, 'optimizer')['state']
    return {int(s['step']) for s in state.values()}


def test_shrunken_zoo_config_learns(tiny_config, tmp_path):
    work_dir = tmp_path / 'learn'
    _train(tiny_config, work_dir, 'train_cfg.max_iters=20',
           'default_hooks.checkpoint.interval=20')
    logged = _logged(work_dir)
    assert [i for i, _ in logged] == list(range(1, 21))
    losses = [v for _, v in logged]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses
    assert osp.isfile(work_dir / 'iter_20.pth')


VAL_CONFIG = """
_base_ = {tiny!r}
val_dataloader = dict(
    _delete_=True, batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='BDD100KInsSegDataset', data_root={data_root!r},
        ann_file='jsons/ins_seg_val_cocofmt.json',
        data_prefix=dict(img='images/10k/val/'), test_mode=True,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(160, 96), keep_ratio=True),
            dict(type='PackDetInputs',
                 meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                            'scale_factor'))]))
val_cfg = dict(_delete_=True, type='ValLoop')
val_evaluator = dict(_delete_=True, type='BDD100KInsSegMetric',
                     gt_dir={data_root!r} + 'labels/ins_seg/bitmasks/val')
train_cfg = dict(max_iters=2, val_interval=2)
"""


def test_validation_paints_masks_in_their_boxes(tiny_config, tmp_path,
                                                monkeypatch):
    """In-loop validation gets the unpasted box masks (no (N, H, W) stack
    per image) and logs the official numbers."""
    from bdd100k_ins_seg.plugin.metric import BDD100KInsSegMetric
    from bdd100k_ins_seg.inference.paste import BoxMasks
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    data_root = str(tmp_path / 'sample') + '/'
    generate_sample_dataset(data_root, seed=2, counts=dict(val=2),
                            size=(160, 96), nproc=1, progress=False)
    config = tmp_path / 'val.py'
    config.write_text(VAL_CONFIG.format(tiny=tiny_config,
                                        data_root=data_root))
    kinds = []
    process = BDD100KInsSegMetric.process

    def spy(self, data_batch, data_samples):
        kinds.extend(type(s['pred_instances']['masks']) for s in
                     data_samples)
        return process(self, data_batch, data_samples)

    monkeypatch.setattr(BDD100KInsSegMetric, 'process', spy)
    work_dir = tmp_path / 'run'
    _train(str(config), work_dir)
    assert kinds == [BoxMasks, BoxMasks]
    records = []
    for path in glob.glob(osp.join(str(work_dir), '*', 'vis_data',
                                   'scalars.json')):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    assert len([r for r in records if 'bdd100k/segm_AP' in r]) == 1


def test_resume_continues_with_optimizer_state(tiny_config, tmp_path):
    work_dir = tmp_path / 'run'
    _train(tiny_config, work_dir, 'train_cfg.max_iters=2')
    assert _adam_steps(work_dir / 'iter_2.pth') == {2}

    # --resume without a path: the latest checkpoint of the work folder.
    _train(tiny_config, work_dir, 'train_cfg.max_iters=3', resume='auto')
    # Only the missing iteration ran.
    assert [i for i, _ in _logged(work_dir)] == [1, 2, 3]
    assert _adam_steps(work_dir / 'iter_3.pth') == {3}  # Adam state kept

    # --resume CKPT into another work folder.
    other = tmp_path / 'other'
    _train(tiny_config, other, 'train_cfg.max_iters=2',
           resume=str(work_dir / 'iter_1.pth'))
    assert [i for i, _ in _logged(other)] == [2]
    assert _adam_steps(other / 'iter_2.pth') == {2}


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_agree(tiny_config, tmp_path):
    (tmp_path / 'dump_params_hook.py').write_text(PARAMS_HOOK)
    config = tmp_path / 'tiny_dist.py'
    config.write_text(
        f'_base_ = {tiny_config!r}\n'
        "custom_imports = dict(imports=['bdd100k_ins_seg', "
        "'dump_params_hook'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='DumpParamsHook')]\n")
    work_dir = tmp_path / 'dist'
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   [str(tmp_path), ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
         '2', '--master_port', str(_free_port()),
         osp.join(ROOT, 'train.py'), str(config), '--launcher', 'pytorch',
         '--work-dir', str(work_dir), '--cfg-options',
         'train_cfg.max_iters=3', 'default_hooks.checkpoint.interval=3'],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dumps = {(when, rank): torch.load(
        work_dir / f'params_{when}_rank{rank}.pt', weights_only=False)
        for when in ('before', 'after') for rank in (0, 1)}
    assert all(d['world_size'] == 2 for d in dumps.values())
    # mmengine's DDP, the gradients in its all-reduce buckets
    assert all(d['wrapper'] == 'MMDistributedDataParallel' and
               d['bucket_view'] is True for d in dumps.values())
    before, after = dumps['before', 0]['params'], dumps['after', 0]['params']
    assert any(not torch.equal(before[k], after[k]) for k in before)
    other = dumps['after', 1]['params']
    assert sorted(other) == sorted(after)
    for name in after:
        assert torch.equal(after[name], other[name]), name
    assert osp.isfile(work_dir / 'iter_3.pth')


def _run_train_cli(*args):
    return subprocess.run([sys.executable, osp.join(ROOT, 'train.py'), *args],
                          cwd=ROOT, capture_output=True, text=True)


def test_missing_config_is_one_line_error(tmp_path):
    proc = _run_train_cli(str(tmp_path / 'nope.py'))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f'train.py: error: config {tmp_path / "nope.py"}: ' \
        'not found'
    assert 'Traceback' not in proc.stderr


def test_missing_training_json_is_the_first_line(tiny_config, tmp_path):
    """Every input is checked before the runner (and its environment
    report): the missing json is what the run prints, at its start."""
    nowhere = tmp_path / 'nowhere'
    proc = _run_train_cli(tiny_config, '--work-dir', str(tmp_path / 'wd'),
                          '--cfg-options',
                          f'train_dataloader.dataset.data_root={nowhere}/')
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines[:1] == [
        f'train.py: error: training json {nowhere}/jsons/'
        'ins_seg_train_cocofmt.json: not found'], lines
    assert len(lines) <= 2, lines
    assert not (tmp_path / 'wd').exists()


def test_unknown_model_is_one_line_error(tiny_config, tmp_path):
    proc = _run_train_cli(tiny_config, '--work-dir', str(tmp_path),
                          '--cfg-options', 'model.type=NoSuchDetector')
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'train.py: error: config {tiny_config}: ')
    assert 'NoSuchDetector' in last
    assert 'Traceback' not in proc.stderr


def test_channels_last_training_is_the_same_training(tiny_config, tmp_path):
    """memory_format='channels_last' on CPU: the weights and the optimizer
    state are trained and saved in NHWC order, and the run computes what
    the NCHW run computes (float32 summation order aside)."""
    # SGD: Adam's first steps (~lr x the gradient's sign) would magnify
    # float32 rounding where a gradient is near 0.
    sgd = ['optim_wrapper.optimizer.type=SGD',
           'optim_wrapper.optimizer.lr=0.01',
           'optim_wrapper.optimizer.momentum=0.9']
    runs = {}
    for name in ('contiguous', 'channels_last'):
        work_dir = tmp_path / name
        _train(tiny_config, work_dir, 'train_cfg.max_iters=3', *sgd,
               f'memory_format={name}')
        runs[name] = work_dir
    weights = _state(runs['channels_last'] / 'iter_3.pth', 'state_dict')
    conv = weights['backbone.conv1.weight']
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    state = _state(runs['channels_last'] / 'iter_3.pth', 'optimizer')['state']
    momentum = [s['momentum_buffer'] for s in state.values()
                if s['momentum_buffer'].dim() == 4]
    assert all(m.is_contiguous(memory_format=torch.channels_last)
               for m in momentum)
    assert any(not m.is_contiguous() for m in momentum)  # 1x1 are both
    nchw = _state(runs['contiguous'] / 'iter_3.pth', 'state_dict')
    assert nchw['backbone.conv1.weight'].is_contiguous()
    # The same initial weights (the initialisers fill them in NCHW order),
    # so the same losses and weights.
    losses = {k: [v for _, v in _logged(w)] for k, w in runs.items()}
    assert len(losses['contiguous']) == 3
    for a, b in zip(losses['contiguous'], losses['channels_last']):
        assert abs(a - b) <= 1e-5 * a, losses
    for key, value in nchw.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-5,
                                   msg=key)


def test_bf16_optim_wrapper_trains_in_bf16_autocast(tiny_config, tmp_path,
                                                   monkeypatch):
    """train.py with optim_wrapper.type=BF16OptimWrapper on a CPU taken to
    have native bfloat16: the run says so, logs finite losses, and saves
    float32 weights and AdamW's state as the plain wrapper does."""
    from bdd100k_ins_seg.plugin import optim
    monkeypatch.setattr(optim, 'native_bf16', lambda device: True)
    work_dir = tmp_path / 'bf16'
    _train(tiny_config, work_dir, 'train_cfg.max_iters=4',
           'optim_wrapper.type=BF16OptimWrapper',
           'memory_format=channels_last')
    logs = glob.glob(str(work_dir / '*' / '*.log'))
    text = ''.join(open(path).read() for path in logs)
    assert 'forward and losses in bfloat16 autocast on cpu' in text
    losses = [v for _, v in _logged(work_dir)]
    assert len(losses) == 4 and all(0 < v < 100 for v in losses), losses
    weights = _state(work_dir / 'iter_4.pth', 'state_dict')
    assert all(v.dtype == torch.float32 for v in weights.values()
               if v.is_floating_point())
    optimizer = _state(work_dir / 'iter_4.pth', 'optimizer')
    assert optimizer['state']  # AdamW's state, saved as the plain wrapper's


def test_channels_last_resume_of_an_nchw_run(tiny_config, tmp_path,
                                            monkeypatch):
    """Resuming an NCHW run's checkpoint in channels_last: the optimizer
    state is copied into the parameters' layout, so fused AdamW (which
    reads a parameter and its state as raw memory in the same order) makes
    the same step as an NCHW resume."""
    # One thread (train.py follows OMP_NUM_THREADS): oneDNN sums NCHW and
    # NHWC convolutions' gradients in different orders, and Adam's step
    # magnifies that rounding where a gradient is near 0. On one thread of
    # an AVX-512 Xeon it stayed under 5e-7 (6e-5 on two); on one thread of
    # an AMD EPYC it reached 6e-5 in a 9e-4 step, in 0.04% of a tensor's
    # elements. So the check below is on how many elements differ, not on
    # the largest difference.
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    threads = torch.get_num_threads()
    try:
        _resume_in_both_layouts(tiny_config, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _resume_in_both_layouts(tiny_config, tmp_path):
    fused = 'optim_wrapper.optimizer.fused=True'
    _train(tiny_config, tmp_path / 'first', 'train_cfg.max_iters=2', fused)
    checkpoint = str(tmp_path / 'first' / 'iter_2.pth')
    for name in ('contiguous', 'channels_last'):
        _train(tiny_config, tmp_path / name, 'train_cfg.max_iters=3', fused,
               f'memory_format={name}', resume=checkpoint)
    resumed = {name: _state(tmp_path / name / 'iter_3.pth', 'state_dict')
               for name in ('contiguous', 'channels_last')}
    before = _state(checkpoint, 'state_dict')
    key = 'backbone.layer1.0.conv1.weight'
    step = (resumed['contiguous'][key] - before[key]).abs().max()
    assert step > 1e-5  # the third step moved the weights
    # Rounding moves a few elements; state paired with the wrong elements
    # moves most of them (without match_optimizer_state: 89-96% of each
    # tensor off by more than 1e-5, the summed difference 47% of the summed
    # step; with it on the EPYC: at most 0.04%, and 0.012%).
    moved = differ = 0.
    for key, value in resumed['contiguous'].items():
        if not value.is_floating_point():
            assert torch.equal(resumed['channels_last'][key], value), key
            continue
        diff = (resumed['channels_last'][key] - value).abs()
        off = (diff > 1e-5).float().mean().item() if value.numel() else 0.
        assert off <= 0.01, f'{key}: {off:.1%} of the elements differ'
        differ += diff.sum().item()
        moved += (value - before[key]).abs().sum().item()
    assert differ <= 0.01 * moved, (differ, moved)


def test_match_optimizer_state_pairs_the_elements():
    """The state of another layout is copied into the parameter's layout;
    without the copy fused AdamW pairs the wrong elements."""
    from mmengine.optim import OptimWrapper

    from bdd100k_ins_seg.engine.runners import match_optimizer_state
    torch.manual_seed(0)
    weight, grad = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)

    def two_steps(param_format, state_format, match):
        param = torch.nn.Parameter(
            weight.clone(memory_format=param_format))
        bias = torch.nn.Parameter(torch.zeros(8))
        optimizer = torch.optim.AdamW([param, bias], lr=0.1, fused=True)
        copied = 0
        for i in range(2):
            param.grad = grad.clone(memory_format=param_format)
            bias.grad = torch.ones(8)
            optimizer.step()
            if i == 0:  # as if the state had been saved in state_format
                state = optimizer.state[param]
                for k in ('exp_avg', 'exp_avg_sq'):
                    state[k] = state[k].contiguous(memory_format=state_format)
                if match:
                    copied = match_optimizer_state(OptimWrapper(optimizer))
        return param.detach().contiguous(), copied

    reference, _ = two_steps(torch.channels_last, torch.channels_last, False)
    torch.testing.assert_close(
        two_steps(torch.contiguous_format, torch.contiguous_format,
                  False)[0], reference, rtol=0, atol=1e-6)
    matched, copied = two_steps(torch.channels_last, torch.contiguous_format,
                                True)
    assert copied == 2  # exp_avg and exp_avg_sq of the 4-d weight
    torch.testing.assert_close(matched, reference, rtol=0, atol=1e-6)
    unmatched, _ = two_steps(torch.channels_last, torch.contiguous_format,
                             False)
    assert (unmatched - reference).abs().max() > 1e-2


def test_unknown_memory_format_is_one_line_error(tiny_config, tmp_path,
                                                 capsys):
    with pytest.raises(SystemExit) as exc:
        _train(tiny_config, tmp_path, 'memory_format=nhwc')
    assert exc.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # (in this process the program name is the interpreter's argv[0])
    assert last.endswith(f': error: config {tiny_config}: cannot build '
                         "the runner: ValueError: memory_format='nhwc': not "
                         'one of contiguous, channels_last')
    assert not list(tmp_path.glob('*.pth'))
