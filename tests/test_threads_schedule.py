"""Thread planning (bdd100k_ins_seg.engine.threads) and schedule scaling
(bdd100k_ins_seg.engine.schedule, what the sample config uses)."""
import types

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.optim.scheduler import LinearLR, MultiStepLR

import bdd100k_ins_seg.plugin  # noqa: F401
from bdd100k_ins_seg.plugin.config_lookup import install_base_config_lookup
from bdd100k_ins_seg.engine.schedule import ScaleScheduleHook, nominal_iters_of
from bdd100k_ins_seg.engine import threads
from bdd100k_ins_seg.engine.threads import configure_threads, plan_threads

SAMPLE = 'configs/sample/mask_rcnn_r18_fpn_sample.py'


def test_processes_times_threads_fit_the_cores():
    assert plan_threads(0, cores=8, processes=1, env='') == 8
    assert plan_threads(2, cores=8, processes=1, env='') == 6
    assert plan_threads(0, cores=8, processes=4, env='') == 2
    assert plan_threads(1, cores=8, processes=4, env='') == 1
    # Never 0, even with more workers than cores.
    assert plan_threads(4, cores=2, processes=1, env='') == 1
    for workers in range(4):
        for procs in (1, 2, 3, 8):
            threads = plan_threads(workers, cores=16, processes=procs,
                                   env='')
            assert procs * (threads + workers) <= 16 or threads == 1
    # The environment wins.
    assert plan_threads(2, cores=8, processes=4, env='3') == 3
    with pytest.raises(ValueError, match='OMP_NUM_THREADS'):
        plan_threads(env='two')
    with pytest.raises(ValueError, match='at least 1'):
        plan_threads(env='0')


def test_cpu_times_read_proc_stat(tmp_path):
    stat = tmp_path / 'stat'
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text('cpu  100 5 20 800 30 1 2 4 50 0\n'
                    'cpu0 50 2 10 400 15 0 1 2 25 0\nintr 1 2 3\n')
    # Idle and iowait are not busy, steal is; guest is inside user.
    assert threads._cpu_times(str(stat)) == (132, 962)
    stat.write_text('intr 1 2 3\n')
    assert threads._cpu_times(str(stat)) is None
    stat.write_text('cpu  1 2 x\n')
    assert threads._cpu_times(str(stat)) is None
    assert threads._cpu_times(str(tmp_path / 'missing')) is None


def test_busy_cores_is_the_busy_share_of_a_window(monkeypatch):
    import os
    readings = iter([(100, 1000), (250, 1200)])
    monkeypatch.setattr(threads, '_cpu_times', lambda stat: next(readings))
    busy = threads.busy_cores(window=0)
    assert busy == pytest.approx(0.75 * os.cpu_count())
    # Unreadable, or a clock that did not move: no reading.
    for pair in ([None], [(1, 10), None], [(1, 10), (1, 10)]):
        readings = iter(pair)
        assert threads.busy_cores(window=0) is None


def test_busy_cores_sees_a_busy_process():
    import subprocess
    import sys
    spin = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        busy = threads.busy_cores(window=0.5)
    finally:
        spin.kill()
        spin.wait()
    # One process spinning on one core: at least half a core in use.
    assert busy is not None and busy >= 0.5


def test_configure_threads_reads_the_workers(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '1')
    monkeypatch.setattr('bdd100k_ins_seg.engine.threads.available_cores', lambda: 4)
    cfg = Config(dict(train_dataloader=dict(num_workers=2),
                      val_dataloader=dict(num_workers=1)))
    try:
        assert configure_threads(cfg) == 2
        assert torch.get_num_threads() == 2
        monkeypatch.setenv('OMP_NUM_THREADS', '1')
        assert configure_threads(cfg) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def fake_runner(cfg, max_iters):
    """What ScaleScheduleHook reads of a runner, built from ``cfg``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedulers = []
    for item in cfg.param_scheduler:
        item = dict(item)
        kind = {'LinearLR': LinearLR, 'MultiStepLR': MultiStepLR}[
            item.pop('type')]
        schedulers.append(kind(optimizer, **item))
    checkpoint = CheckpointHook(**{k: v for k, v in
                                   cfg.default_hooks.checkpoint.items()
                                   if k != 'type'})
    loop = types.SimpleNamespace(val_interval=cfg.train_cfg.val_interval,
                                 val_begin=1)
    logger = types.SimpleNamespace(info=lambda msg: None)
    return types.SimpleNamespace(
        max_iters=max_iters, param_schedulers=schedulers,
        hooks=[checkpoint], train_loop=loop, logger=logger), optimizer


def lr_after(runner, optimizer, iters):
    lrs = []
    for _ in range(iters):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for scheduler in runner.param_schedulers:
            scheduler.step()
    return lrs


def test_sample_config_keeps_its_shape_with_other_max_iters():
    install_base_config_lookup()
    cfg = Config.fromfile(SAMPLE)
    nominal = cfg.train_cfg.max_iters
    assert nominal_iters_of(cfg) == nominal
    hook = ScaleScheduleHook(nominal)
    decays = sorted(cfg.param_scheduler[1].milestones)
    assert decays and all(0 < m < nominal for m in decays)

    # The nominal length: nothing changes.
    runner, optimizer = fake_runner(cfg, nominal)
    hook.before_train(runner)
    assert runner.hooks[0].interval == nominal
    reference = lr_after(runner, optimizer, nominal)

    # 5: the warm-up scales to less than 2 iterations
    for max_iters in (5, 20, 2 * nominal):
        runner, optimizer = fake_runner(cfg, max_iters)
        hook.before_train(runner)
        # A checkpoint and a validation at the end, not past it.
        assert runner.hooks[0].interval == max_iters
        assert runner.train_loop.val_interval == max_iters
        lrs = lr_after(runner, optimizer, max_iters)
        # Warm-up, then the decays, at the same fractions.
        assert lrs[0] == pytest.approx(0.01) == reference[0]
        points = [(0.5, 1.0), (0.99, 0.1**len(decays))]
        for i, milestone in enumerate(decays):
            frac = milestone / nominal
            points += [(frac - 2 / max_iters, 0.1**i), (frac, 0.1**(i + 1))]
        for frac, lr in points:
            assert lrs[int(frac * max_iters)] == pytest.approx(lr)
            assert reference[int(frac * nominal)] == pytest.approx(lr)
        # Scaling again (a resumed run) changes nothing.
        milestones = dict(runner.param_schedulers[1].milestones)
        hook.before_train(runner)
        assert dict(runner.param_schedulers[1].milestones) == milestones
