"""Training faults: SIGTERM/SIGINT stop with a resumable checkpoint and a
resume continues exactly (equal weights to an uninterrupted run), failed
checkpoint writes leave the previous one valid, truncated or missing resume
checkpoints are refused in one line, a non-finite loss stops training."""
import os
import os.path as osp
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train import TINY_CONFIG, ZOO_CONFIG, _load_train_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MAX_ITERS = 6

# Shuffled infinite sampler, a random flip and 2 dataloader workers: the
# sampler position, the augmentation and the worker RNG all matter.
FAULT_CONFIG = '''
_base_ = {tiny!r}
custom_imports = dict(imports=['bdd100k_ins_seg', 'fault_hooks'],
                      allow_failed_imports=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    num_workers=2,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
train_cfg = dict(max_iters={max_iters})
custom_hooks = [dict(type='HoldAtIterHook', folder={folder!r})]
'''

FAULT_HOOKS = '''
import os
import os.path as osp
import time

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class HoldAtIterHook(Hook):
    """While FOLDER/hold_at_N exists, wait after iteration N (first of all
    hooks) and say so in FOLDER/ready: the test then sends a signal."""
    priority = 'HIGHEST'

    def __init__(self, folder):
        self.folder = folder

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        hold = osp.join(self.folder, f'hold_at_{runner.iter + 1}')
        if not osp.exists(hold):
            return
        open(osp.join(self.folder, 'ready'), 'w').close()
        deadline = time.time() + 120
        while osp.exists(hold) and time.time() < deadline:
            time.sleep(0.02)


@HOOKS.register_module()
class NaNAtIterHook(Hook):
    """The mask head outputs NaN in iteration AT (1-based)."""

    def __init__(self, at):
        self.at = at
        self.handle = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if runner.iter + 1 == self.at:
            model = getattr(runner.model, 'module', runner.model)
            self.handle = model.roi_head.mask_head.register_forward_hook(
                lambda module, args, out: out * float('nan'))


@HOOKS.register_module()
class PadCheckpointHook(Hook):
    """Adds NBYTES of zeros to the checkpoint of iteration AT."""

    def __init__(self, at, nbytes):
        self.at = at
        self.nbytes = nbytes

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] == self.at:
            checkpoint['pad'] = torch.zeros(self.nbytes // 4)
'''


@pytest.fixture(scope='module')
def fault_config(tmp_path_factory):
    from bdd100k_ins_seg.formats.sample_data import generate_sample_dataset
    root = tmp_path_factory.mktemp('faults')
    data_root = str(root / 'sample') + '/'
    generate_sample_dataset(data_root, seed=1, counts=dict(train=4),
                            size=(160, 96), nproc=1, progress=False)
    tiny = root / 'tiny_mask_rcnn.py'
    tiny.write_text(TINY_CONFIG.format(zoo=ZOO_CONFIG, data_root=data_root))
    (root / 'fault_hooks.py').write_text(FAULT_HOOKS)
    path = root / 'fault_mask_rcnn.py'
    path.write_text(FAULT_CONFIG.format(tiny=str(tiny), folder=str(root),
                                        max_iters=MAX_ITERS))
    return path


def _env(config):
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [str(config.parent), ROOT, os.environ.get('PYTHONPATH', '')]))


def _cmd(config, work_dir, *args):
    return [sys.executable, osp.join(ROOT, 'train.py'), str(config),
            '--work-dir', str(work_dir), *args]


def _train(config, work_dir, *args, **kwargs):
    return subprocess.run(_cmd(config, work_dir, *args),
                          cwd=str(work_dir.parent), env=_env(config),
                          capture_output=True, text=True, timeout=300,
                          **kwargs)


def _interrupt(config, work_dir, at, signum, *args):
    """train.py, sent ``signum`` while it waits after iteration ``at``."""
    folder = config.parent
    ready = folder / 'ready'
    hold = folder / f'hold_at_{at}'
    ready.unlink(missing_ok=True)
    hold.write_text('')
    proc = subprocess.Popen(_cmd(config, work_dir, *args),
                            cwd=str(work_dir.parent), env=_env(config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 240
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, 'training did not start'
            time.sleep(0.05)
        proc.send_signal(signum)
        time.sleep(0.2)  # the handler runs while the hook waits
        hold.unlink()
        out, err = proc.communicate(timeout=240)
    finally:
        hold.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def _iterations_run(output):
    return [int(i) for i in re.findall(r'Iter\(train\) \[\s*(\d+)/', output)]


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def _assert_same_training_state(a, b):
    """Same weights/buffers and optimizer state, tensor for tensor."""
    ca, cb = _load(a), _load(b)
    assert ca['meta']['iter'] == cb['meta']['iter']
    assert sorted(ca['state_dict']) == sorted(cb['state_dict'])
    for name, value in ca['state_dict'].items():
        assert torch.equal(value, cb['state_dict'][name]), name
    sa, sb = ca['optimizer']['state'], cb['optimizer']['state']
    assert sorted(sa) == sorted(sb)
    for key in sa:
        for field, value in sa[key].items():
            assert torch.equal(value, sb[key][field]), (key, field)


def _last_checkpoint(work_dir):
    return (work_dir / 'last_checkpoint').read_text().strip()


def test_sigterm_then_resume_equals_uninterrupted_run(fault_config,
                                                      tmp_path):
    reference = tmp_path / 'reference'
    proc = _train(fault_config, reference)
    assert proc.returncode == 0, proc.stderr[-3000:]

    work_dir = tmp_path / 'preempted'
    code, out, err = _interrupt(fault_config, work_dir, 3, signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert 'Traceback' not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith('train.py: stopped by SIGTERM after iteration 3')
    # It finished iteration 3, saved it and stopped.
    assert _last_checkpoint(work_dir) == str(work_dir / 'iter_3.pth')
    assert not (work_dir / 'iter_4.pth').exists()
    _assert_same_training_state(work_dir / 'iter_3.pth',
                                reference / 'iter_3.pth')

    proc = _train(fault_config, work_dir, '--resume')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _iterations_run(proc.stdout + proc.stderr) == [4, 5, 6]
    for i in (4, MAX_ITERS):
        _assert_same_training_state(work_dir / f'iter_{i}.pth',
                                    reference / f'iter_{i}.pth')


def test_ctrl_c_saves_and_exits_without_traceback(fault_config, tmp_path):
    work_dir = tmp_path / 'ctrl_c'
    code, out, err = _interrupt(fault_config, work_dir, 2, signal.SIGINT)
    assert code == 130, err[-3000:]
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
    assert err.strip().splitlines()[-1].startswith(
        'train.py: stopped by SIGINT after iteration 2')
    assert _last_checkpoint(work_dir) == str(work_dir / 'iter_2.pth')
    assert _load(work_dir / 'iter_2.pth')['meta']['iter'] == 2


def test_failed_checkpoint_write_keeps_the_previous_one(fault_config,
                                                        tmp_path):
    # A file-size limit makes the write of iter_2.pth fail half-way (as a
    # full disk would); max_keep_ckpts=1 would delete iter_1.pth first.
    limit = 64 << 20
    config = fault_config.parent / 'pad_at_2.py'
    config.write_text(
        f'_base_ = {str(fault_config)!r}\n'
        "custom_hooks = [dict(type='PadCheckpointHook', at=2, "
        f'nbytes={2 * limit})]\n'
        'default_hooks = dict(checkpoint=dict(max_keep_ckpts=1))\n')
    work_dir = tmp_path / 'full'

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _train(config, work_dir, preexec_fn=limit_file_size)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: ') and 'iter_2.pth' in last
    # No iter_2.pth, no temporary file left (the config dump aside).
    assert sorted(p.name for p in work_dir.iterdir()
                  if p.is_file() and p.suffix != '.py') == [
                      'iter_1.pth', 'last_checkpoint']
    assert _last_checkpoint(work_dir) == str(work_dir / 'iter_1.pth')
    assert _load(work_dir / 'iter_1.pth')['meta']['iter'] == 1


def test_atomic_write_failing_midway_leaves_old_file(tmp_path, monkeypatch):
    import mmengine.runner.checkpoint as mmengine_checkpoint

    from bdd100k_ins_seg.engine import training
    training.install_atomic_checkpoints()
    # What Runner.save_checkpoint and CheckpointHook call.
    save_checkpoint = mmengine_checkpoint.save_checkpoint
    path = tmp_path / 'epoch_1.pth'
    save_checkpoint({'w': torch.arange(10)}, str(path))
    good = path.read_bytes()

    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        import io
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', save_half_then_fail)
    with pytest.raises(training.CheckpointWriteError, match='epoch_1.pth'):
        save_checkpoint({'w': torch.arange(1000)}, str(path))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ['epoch_1.pth']


def _main_error(argv, capsys):
    """train.py's last stderr line, run in this process (exit status 1)."""
    capsys.readouterr()
    saved, sys.argv = sys.argv, [osp.join(ROOT, 'train.py')]
    try:
        with pytest.raises(SystemExit) as e:
            _load_train_script().main([str(a) for a in argv])
    finally:
        sys.argv = saved
    err = capsys.readouterr().err
    assert e.value.code == 1, err
    assert 'Traceback' not in err
    return err.strip().splitlines()[-1]


def test_truncated_checkpoint_is_refused(fault_config, tmp_path,
                                         monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(fault_config.parent))
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(10000)}, 'meta': {}}, good)
    data = good.read_bytes()
    bad = tmp_path / 'iter_5.pth'
    bad.write_bytes(data[:len(data) // 2])
    message = _main_error([fault_config, '--work-dir', tmp_path / 'w',
                           '--resume', bad], capsys)
    assert message.startswith(f'train.py: error: {bad}: truncated')

    # Found through last_checkpoint: refused the same way.
    work_dir = tmp_path / 'auto'
    work_dir.mkdir()
    (work_dir / 'last_checkpoint').write_text(str(bad))
    message = _main_error([fault_config, '--work-dir', work_dir, '--resume'],
                          capsys)
    assert message.startswith(f'train.py: error: {bad}: truncated')
    assert sorted(p.name for p in work_dir.iterdir()) == ['last_checkpoint']


def test_resume_with_nothing_to_resume_is_an_error(fault_config, tmp_path,
                                                   monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(fault_config.parent))
    work_dir = tmp_path / 'empty'
    message = _main_error([fault_config, '--work-dir', work_dir, '--resume',
                           '--cfg-options', 'train_cfg.max_iters=1'], capsys)
    assert message == (f'train.py: error: {work_dir}: nothing to resume '
                       'from, no last_checkpoint in the work folder')
    assert not work_dir.exists() or not any(work_dir.iterdir())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(fault_config,
                                                              tmp_path):
    config = fault_config.parent / 'nan_at_3.py'
    config.write_text(f'_base_ = {str(fault_config)!r}\n'
                      "custom_hooks = [dict(type='NaNAtIterHook', at=3)]\n")
    work_dir = tmp_path / 'nan'
    proc = _train(config, work_dir)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: non-finite loss at iteration 3: '
                           'loss='), last
    assert 'loss_mask=nan' in last
    assert f'the last checkpoint {work_dir / "iter_2.pth"} is kept' in last
    assert _last_checkpoint(work_dir) == str(work_dir / 'iter_2.pth')
    assert not (work_dir / 'iter_3.pth').exists()
    weights = _load(work_dir / 'iter_2.pth')['state_dict']
    assert all(torch.isfinite(v).all() for v in weights.values()
               if v.is_floating_point())


def test_forked_children_keep_the_usual_signal_handlers():
    """The in-loop evaluator forks a multiprocessing pool during training:
    its workers must not inherit the finish-the-iteration handler, or they
    survive ``Pool.terminate()``'s SIGTERM and the pool's exit waits for
    them forever (a hang at the end of a validation)."""
    import multiprocessing

    from bdd100k_ins_seg.engine import signals as training
    pool = multiprocessing.get_context('fork').Pool(1)
    try:
        outside = pool.apply(signal.getsignal, (signal.SIGTERM, ))
    finally:
        pool.close()
        pool.join()
    with training.stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is training._on_signal
        pool = multiprocessing.get_context('fork').Pool(1)
        try:
            inside = pool.apply(signal.getsignal, (signal.SIGTERM, ))
        finally:
            pool.close()  # sentinels, no SIGTERM: cannot hang
            pool.join()
    assert inside == outside == signal.SIG_DFL
    # The evaluator's own pattern, `with Pool(...)` (terminate on exit),
    # during training: it returns.
    script = (
        'import multiprocessing, signal\n'
        'from bdd100k_ins_seg.engine import training\n'
        'with training.stop_on_signals():\n'
        "    with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        '        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]\n'
        "print('pool closed')\n")
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and 'pool closed' in proc.stdout, \
        proc.stderr[-2000:]
