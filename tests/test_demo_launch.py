"""How the demo starts its training: two data-parallel CPU processes with
half the batch each where that is faster, one process otherwise."""
import pytest

from scripts import load_script


def _demo():
    return load_script('tools/demo.py', 'demo_script')


def test_two_processes_on_a_multicore_cpu(capsys):
    demo = _demo()
    env = {'PATH': '/bin'}
    cmd, train_env = demo._train_command('py', 'wd', ['a=1'], 4, 4, False,
                                         env)
    assert cmd[:6] == ['py', '-m', 'torch.distributed.run', '--standalone',
                       '--nproc_per_node', '2']
    assert cmd[6:] == ['train.py', demo.CONFIG, '--launcher', 'pytorch',
                       '--work-dir', 'wd', '--cfg-options', 'a=1',
                       'train_dataloader.batch_size=2']
    # Half the cores each; the caller's environment is not changed.
    assert train_env['OMP_NUM_THREADS'] == '2' == train_env['MKL_NUM_THREADS']
    assert env == {'PATH': '/bin'}
    assert '2 data-parallel processes of 2 images each' in \
        capsys.readouterr().out
    # A thread count the user chose wins.
    _, train_env = demo._train_command('py', 'wd', [], 4, 2, False,
                                       {'OMP_NUM_THREADS': '1'})
    assert train_env['OMP_NUM_THREADS'] == '1'


def test_one_thread_per_process_on_a_busy_machine(monkeypatch, capsys):
    import os

    from bdd100k_ins_seg.engine import threads
    demo = _demo()
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(threads, 'available_cores', lambda: 2)
    monkeypatch.setattr(os, 'getloadavg', lambda: (1.9, 1.9, 1.9))
    # What is in use now decides, not the load average (which still counts
    # the demo's own setup for a minute after it ended).
    monkeypatch.setattr(threads, 'busy_cores', lambda: 0.2)
    assert 'OMP_NUM_THREADS' not in demo._thread_env()
    assert 'threads: 2 (the cores; 0.2 of 2 cores in use' in \
        capsys.readouterr().out
    monkeypatch.setattr(threads, 'busy_cores', lambda: 1.2)
    assert demo._thread_env()['OMP_NUM_THREADS'] == '1'
    assert 'the machine is busy (1.2 of 2 cores in use): 1 thread' in \
        capsys.readouterr().out
    # Without /proc/stat, the load average.
    monkeypatch.setattr(threads, 'busy_cores', lambda: None)
    assert demo._thread_env()['OMP_NUM_THREADS'] == '1'
    assert 'busy (load average 1.9 on 2 cores)' in capsys.readouterr().out
    monkeypatch.setattr(os, 'getloadavg', lambda: (0.4, 0.4, 0.4))
    assert 'OMP_NUM_THREADS' not in demo._thread_env()
    # One core: nothing to share. The user's choice wins.
    monkeypatch.setattr(threads, 'available_cores', lambda: 1)
    monkeypatch.setattr(threads, 'busy_cores', lambda: 1.0)
    assert 'OMP_NUM_THREADS' not in demo._thread_env()
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert demo._thread_env()['OMP_NUM_THREADS'] == '3'
    assert 'OMP_NUM_THREADS=3 (from the environment)' in \
        capsys.readouterr().out


def test_one_process_on_a_gpu_one_core_or_an_odd_batch():
    demo = _demo()
    for batch, cores, cuda in [(4, 2, True), (4, 1, False), (3, 2, False)]:
        cmd, env = demo._train_command('py', 'wd', ['a=1'], batch, cores,
                                       cuda, {})
        assert cmd == ['py', 'train.py', demo.CONFIG, '--work-dir', 'wd',
                       '--cfg-options', 'a=1'] and env == {}


def test_a_checkpoint_is_reused_only_if_it_fits_the_config(tmp_path):
    import copy

    import torch
    from mmengine.config import Config

    from bdd100k_ins_seg.plugin.checkpoint import model_state_shapes
    demo = _demo()
    cfg = Config.fromfile(demo.CONFIG)

    def save(model_cfg, name):
        state = {k: torch.zeros(v.shape) for k, v in
                 model_state_shapes(model_cfg).items()}
        path = tmp_path / name
        torch.save({'state_dict': state, 'meta': {}}, path)
        return str(path)

    assert demo._unfit(cfg, save(cfg.model, 'fits.pth')) is None
    # A checkpoint of an earlier version of the config (2 mask convs) is
    # named with what does not fit, and trained again.
    older = copy.deepcopy(cfg.model)
    older.roi_head.mask_head.num_convs = 2
    why = demo._unfit(cfg, save(older, 'older.pth'))
    assert why.startswith('it does not fit the model of the config: ')
    assert 'first missing: roi_head.mask_head.convs.2.conv.weight' in why
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    assert demo._unfit(cfg, str(tmp_path / 'broken.pth')).startswith(
        'unreadable: ')


def test_scripts_run_in_the_demo_process(tmp_path, capsys):
    """The sample generator and vis.py run in the demo's own process: the
    command line is printed as for a subprocess, the script's output is
    its own, and a failure stops the demo with the script's one-line
    error and the demo's."""
    demo = _demo()
    out = tmp_path / 'sample'
    demo.run_here('tools/make_sample_data.py',
                  ['--out', str(out), '--num-train', '2', '--num-val', '1',
                   '--num-test', '1'], 'generating the sample')
    printed = capsys.readouterr().out
    assert printed.startswith(f'$ {demo.sys.executable} '
                              f'tools/make_sample_data.py --out {out} ')
    assert f'wrote {out}: 2 train images' in printed
    from bdd100k_ins_seg.formats.sample_data import sample_name
    assert [p.name for p in (out / 'images' / '10k' / 'val').iterdir()] == \
        [sample_name(0, 'val', 0) + '.jpg']

    missing = tmp_path / 'missing'
    with pytest.raises(SystemExit) as stop:
        demo.run_here('vis.py', ['-i', str(missing), '-c', str(tmp_path),
                                 '-o', str(tmp_path / 'vis')], 'drawing')
    assert stop.value.code == ('demo.py: error: drawing: failed; see the '
                               'output above')
    assert f'error: image folder {missing}: not found' in \
        capsys.readouterr().err
    assert not (tmp_path / 'vis').exists()
