"""Safe checkpoint loading: zoo (mmdet 2.x) files, resume files, refusals."""
import collections
import os.path as osp

import numpy as np
import pytest
import torch
from torch import nn

import bdd100k_ins_seg  # noqa: F401  (installs the loader into mmengine)
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from bdd100k_ins_seg.checkpoint import UNSAFE_ENV, CheckpointError, safe_load


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
