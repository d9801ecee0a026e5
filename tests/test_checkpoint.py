"""Safe checkpoint loading: zoo (mmdet 2.x) files, resume files, refusals."""
import collections
import os
import os.path as osp

import numpy as np
import pytest
import torch
from torch import nn

import bdd100k_ins_seg.plugin  # noqa: F401  (installs the loader into mmengine)
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from bdd100k_ins_seg.plugin.checkpoint import (
    UNSAFE_ENV,
    CheckpointError,
    safe_load)


class Payload:
    """A class a safe loader must not instantiate from a pickle."""

    def __init__(self, value):
        self.value = value


def _mmdet2_checkpoint():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    meta = dict(mmdet_version='2.28.2', mmcv_version='1.7.1',
                CLASSES=('pedestrian', 'rider'), config='model = dict()',
                epoch=12, iter=5000, time='Tue Jan  3 10:00:00 2023',
                hook_msgs=dict(last_ckpt='work_dirs/x/epoch_12.pth'))
    return model, {'state_dict': collections.OrderedDict(
        (k, v.clone()) for k, v in model.state_dict().items()),
                   'meta': meta}


def test_mmdet2_layout_loads_weights_only(tmp_path):
    model, ckpt = _mmdet2_checkpoint()
    path = tmp_path / 'zoo.pth'
    torch.save(ckpt, path)
    loaded = safe_load(path)
    assert loaded['meta']['CLASSES'] == ('pedestrian', 'rider')
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    fresh.load_state_dict(loaded['state_dict'], strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_numpy_values_are_allowed(tmp_path):
    path = tmp_path / 'np.pth'
    torch.save({'a': np.arange(3, dtype=np.float64), 'b': np.float32(2.5),
                'c': np.int64(7)}, path)
    loaded = safe_load(path)
    assert loaded['a'].tolist() == [0.0, 1.0, 2.0]
    assert float(loaded['b']) == 2.5 and int(loaded['c']) == 7


def test_unknown_type_is_refused_with_its_name(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': Payload(3)}, path)
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    message = str(err.value)
    assert 'Payload' in message and str(path) in message
    assert '--unsafe-load' in message and '\n' not in message


def test_unsafe_opt_in_loads_trusted_pickle(tmp_path, monkeypatch):
    path = tmp_path / 'trusted.pth'
    torch.save({'payload': Payload(3)}, path)
    assert safe_load(path, allow_unsafe=True)['payload'].value == 3
    monkeypatch.setenv(UNSAFE_ENV, '1')
    assert safe_load(path)['payload'].value == 3


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        safe_load(tmp_path / 'missing.pth')
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'this is not a checkpoint')
    with pytest.raises(CheckpointError, match='bad.pth'):
        safe_load(bad)
    good = tmp_path / 'good.pth'
    torch.save({'w': torch.ones(1000)}, good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match='truncated.pth'):
        safe_load(truncated)


def test_mmengine_load_checkpoint_uses_safe_loader(tmp_path):
    from mmengine.runner import load_checkpoint
    model, ckpt = _mmdet2_checkpoint()
    path = tmp_path / 'zoo.pth'
    torch.save(ckpt, path)
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_checkpoint(fresh, str(path), map_location='cpu', strict=True)
    assert torch.equal(fresh[0].weight, model[0].weight)
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': model.state_dict(), 'x': Payload(1)}, evil)
    with pytest.raises(CheckpointError, match='Payload'):
        load_checkpoint(fresh, str(evil), map_location='cpu')


class _ToyModel(BaseModel):
    """An mmengine model: returns losses in 'loss' mode."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.loss_calls = 0

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            self.loss_calls += 1
            return {'loss': ((out.squeeze(1) - targets)**2).mean()}
        return out


class _ToyData(torch.utils.data.Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.tensor([float(i), 1.0])
        return dict(inputs=x, targets=x.sum())


class _StartState(Hook):
    """Records the iteration and optimizer state when training starts."""

    def before_train(self, runner):
        self.iter = runner.iter
        state = runner.optim_wrapper.optimizer.state_dict()['state']
        self.momentum = state[0]['momentum_buffer'].clone() if state else None


def _runner(work_dir, max_iters, resume=False, hooks=()):
    from mmengine.runner import Runner
    return Runner(
        custom_hooks=list(hooks),
        model=_ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyData(), sampler=dict(type='DefaultSampler',
                                              shuffle=False),
            collate_fn=dict(type='default_collate'), batch_size=2,
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01,
                                          momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        resume=resume, default_scope='mmengine')


def test_resume_from_own_checkpoint_with_weights_only(tmp_path):
    """A resume file (message hub with HistoryBuffer + numpy, optimizer,
    schedulers) loads through the allowlist and restores the iteration."""
    runner = _runner(tmp_path, max_iters=2)
    runner.train()
    ckpt_path = osp.join(tmp_path, 'iter_2.pth')
    ckpt = safe_load(ckpt_path)  # the whole file passes the allowlist
    assert 'message_hub' in ckpt and 'optimizer' in ckpt
    momentum = ckpt['optimizer']['state'][0]['momentum_buffer']

    start = _StartState()
    resumed = _runner(tmp_path, max_iters=4, resume=True, hooks=[start])
    resumed.train()
    assert start.iter == 2 and resumed.iter == 4
    assert resumed.model.loss_calls == 2  # only the remaining iterations
    assert torch.equal(start.momentum, momentum)


def test_getattr_only_for_history_buffer(tmp_path):
    """Bound methods pickle as getattr(obj, name): only mmengine's
    HistoryBuffer statistics may be looked up that way."""
    path = tmp_path / 'method.pth'
    torch.save({'m': 'abc'.upper}, path)
    with pytest.raises(CheckpointError, match='method.pth'):
        safe_load(path)


# ------------------------------------------- strict weights, pre-flight
def test_compare_state_dicts_and_one_line_description():
    from bdd100k_ins_seg.plugin.checkpoint import (
        compare_state_dicts,
        describe_mismatch)
    model = collections.OrderedDict(
        [('a.weight', torch.zeros(2, 3)), ('a.bias', torch.zeros(2)),
         ('bn.num_batches_tracked', torch.zeros(())),
         ('b.weight', torch.zeros(4)), ('c.weight', torch.zeros(1))])
    loaded = {'a.weight': torch.zeros(3, 3), 'a.bias': torch.zeros(2),
              'x.weight': torch.zeros(1), 'y': torch.zeros(1),
              'c.weight': torch.zeros(1)}
    mismatch = compare_state_dicts(model, loaded)
    # a missing BatchNorm counter is not a mismatch (torch fills it in)
    assert mismatch == (['b.weight'], ['x.weight', 'y'],
                        [('a.weight', (3, 3), (2, 3))])
    assert describe_mismatch(*mismatch) == (
        '1 missing, 2 unexpected, 1 mis-shaped keys; first missing: '
        'b.weight; first unexpected: x.weight; first mis-shaped: a.weight '
        '[3, 3] in the checkpoint, [2, 3] in the model')
    assert compare_state_dicts(model, dict(model)) == ([], [], [])


# Makes the tiny test config trainable: 1 iteration on its 2 images.
TRAIN_DIFF = '''
train_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=False),
    dataset=dict(data_root=data_root, ann_file='coco.json',
                 data_prefix=dict(img='images/'), filter_cfg=None,
                 pipeline=[dict(type='LoadImageFromFile'),
                           dict(type='LoadAnnotations', with_bbox=True,
                                with_mask=True),
                           dict(type='Resize', scale=(160, 96),
                                keep_ratio=True),
                           dict(type='PackDetInputs')]))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1)
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=1e-3))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1))
'''


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A tiny Mask R-CNN config with data, its own weights, and weights of
    the same model with 2 keys removed, 3 added and 1 reshaped."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    from bdd100k_ins_seg.formats.labels import bitmasks_to_coco, write_json
    from test_evaluation import make_scenes
    from test_test_script import BASES, TINY_CONFIG
    root = tmp_path_factory.mktemp('strict')
    data = root / 'data'
    make_scenes(str(data), num_images=2, size=(160, 96), seed=4)
    write_json(bitmasks_to_coco(str(data / 'gt'), 1), str(data / 'coco.json'))
    config = root / 'tiny.py'
    config.write_text(TINY_CONFIG.format(bases=BASES, data=data) +
                      TRAIN_DIFF)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    state = MODELS.build(Config.fromfile(str(config)).model).state_dict()
    good = root / 'good.pth'
    torch.save({'state_dict': state, 'meta': {}}, good)
    keys = list(state)
    foreign = collections.OrderedDict(state)
    del foreign[keys[3]], foreign[keys[10]]
    for name in ('extra.a', 'extra.b', 'extra.c'):
        foreign[name] = torch.zeros(2)
    foreign[keys[20]] = torch.zeros(7, 7)
    bad = root / 'foreign.pth'
    torch.save({'state_dict': foreign, 'meta': {}}, bad)
    expected = (f'2 missing, 3 unexpected, 1 mis-shaped keys; first missing: '
                f'{keys[3]}; first unexpected: extra.a; first mis-shaped: '
                f'{keys[20]} [7, 7] in the checkpoint, '
                f'{list(state[keys[20]].shape)} in the model')
    return root, str(config), str(good), str(bad), expected


def test_check_checkpoint_in_process(tiny):
    from mmengine.config import Config
    from mmengine.runner.checkpoint import CheckpointLoader

    from bdd100k_ins_seg.plugin.checkpoint import check_checkpoint
    root, config, good, bad, expected = tiny
    cfg = Config.fromfile(config)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(cfg, bad)
    assert str(err.value) == (f'does not fit the model of the config: '
                              f'{expected} (--non-strict loads the matching '
                              'part)')
    check_checkpoint(cfg, bad, strict=False)  # readable: accepted
    check_checkpoint(cfg, good)
    # the runner's load that follows gets the checked object, not a re-read
    from bdd100k_ins_seg.plugin import checkpoint as module
    [checked] = module._PRELOADED.values()
    assert CheckpointLoader.load_checkpoint(good, 'cpu') is checked
    assert not module._PRELOADED
    assert CheckpointLoader.load_checkpoint(good, 'cpu') is not checked
    text = root / 'notes.pth'
    text.write_text('not a checkpoint\n')
    with pytest.raises(CheckpointError, match='notes.pth'):
        check_checkpoint(cfg, str(text))


def test_scripts_fail_in_one_line(tiny, capsys, monkeypatch):
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.checkpoint import check_checkpoint_or_fail
    root, config, good, bad, expected = tiny
    monkeypatch.setattr('sys.argv', ['test.py'])
    cfg = Config.fromfile(config)
    text = root / 'notes.pth'
    text.write_text('not a checkpoint\n')
    for path, line in (
            (str(text), f'test.py: error: cannot load checkpoint: '
             f'checkpoint {text} is not a torch checkpoint (a text file)'),
            (bad, f'test.py: error: checkpoint {bad}: does not fit the model '
             f'of the config: {expected} (--non-strict loads the matching '
             'part)')):
        with pytest.raises(SystemExit) as exit_info:
            check_checkpoint_or_fail(cfg, path)
        assert exit_info.value.code == 1
        assert capsys.readouterr().err == line + '\n'


def _script(name, args, cwd):
    import subprocess
    import sys
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=repo)
    return subprocess.run([sys.executable, osp.join(repo, name)] + args,
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line_error(proc, script, *fragments):
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # (after library warnings)
    assert last.startswith(f'{script}: error: '), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last
    # stopped before the runner: no environment dump, no log
    assert 'System environment' not in proc.stdout + proc.stderr


def test_test_py_refuses_foreign_weights_before_the_runner(tiny, tmp_path):
    # (an unreadable file: test_check_checkpoint_in_process)
    root, config, good, bad, expected = tiny
    args = ['--format-only', '--format-dir', 'out', '--work-dir', 'wd']
    _one_line_error(_script('test.py', [config, bad] + args, tmp_path),
                    'test.py', f'checkpoint {bad}: does not fit the model',
                    expected, '--non-strict')
    assert os.listdir(tmp_path) == []  # nothing written
    proc = _script('test.py', [config, bad, '--non-strict'] + args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(os.listdir(tmp_path / 'out' / 'bitmasks')) == 2


def test_train_py_load_from_is_strict(tiny, tmp_path):
    root, config, good, bad, expected = tiny
    options = ['--work-dir', 'wd', '--cfg-options', f'load_from={bad}']
    _one_line_error(_script('train.py', [config] + options, tmp_path),
                    'train.py', expected)
    assert os.listdir(tmp_path) == []
    proc = _script('train.py', [config, '--non-strict'] + options, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert osp.isfile(tmp_path / 'wd' / 'iter_1.pth')


@pytest.mark.parametrize('name', ['mask_rcnn_r50_fpn_dconv_1x',
                                  'mask_rcnn_hrnetv2p_w18_1x'])
def test_pre_flight_model_matches_the_built_model(name):
    """The check builds the model on torch's 'meta' device (no weights
    allocated); its keys and shapes are those of the model the runner
    builds, whose layout the published weights have (test_configs.py)."""
    from mmengine.config import Config
    from mmdet.registry import MODELS

    from bdd100k_ins_seg.plugin.checkpoint import (
        compare_state_dicts,
        model_state_shapes)
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(repo, 'configs', 'ins_seg',
                                   f'{name}_ins_seg_bdd100k.py'))
    cfg.model.backbone.init_cfg = None
    expected = model_state_shapes(cfg.model)
    assert any(t.is_meta for t in expected.values())
    built = MODELS.build(cfg.model).state_dict()
    assert list(expected) == list(built)
    assert compare_state_dicts(expected, built) == ([], [], [])


@pytest.mark.parametrize('content, why', [
    (b'hello world\n', 'is not a torch checkpoint (a text file)'),  # was: 101
    (b'e\n', 'is not a torch checkpoint (a text file)'),  # pop from empty
    (b'', 'is empty (0 bytes)'),
    (bytes([0x00, 0xff, 0xfe, 0x13] * 64),
     'is not a torch checkpoint (neither a zip archive nor a pickle)'),
])
def test_not_a_checkpoint_says_what_the_file_is(tmp_path, content, why):
    path = tmp_path / 'weights.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    # The whole message: no stray unpickler internals after it.
    assert str(err.value) == f'checkpoint {path} {why}'


def test_truncated_checkpoint_names_the_damage(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'w': torch.ones(1000)}, good)
    for name, legacy in (('zip.pth', False), ('legacy.pth', True)):
        torch.save({'w': torch.ones(1000)}, good,
                   _use_new_zipfile_serialization=not legacy)
        cut = tmp_path / name
        cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
        with pytest.raises(CheckpointError) as err:
            safe_load(cut)
        message = str(err.value)
        assert message.startswith(f'checkpoint {cut} is not a valid torch '
                                  'checkpoint (corrupt or truncated?)')
        assert '\n' not in message and len(message) < 250, message
