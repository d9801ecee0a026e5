"""``make gpu-check``: the one-line CUDA check it starts with (CUDA stubbed:
a driver older than the wheel's CUDA, none, a CPU-only build, no device
visible, a working H100) and the shape of the target (nothing runs)."""
import ctypes
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from bdd100k_ins_seg import env
from scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cuda_stub(monkeypatch):
    """``set(available, driver=(release, cuda), wheel='13.0')``: torch's
    CUDA answers stubbed; an unavailable CUDA warns as torch does."""
    def set_cuda(available, driver=(None, None), wheel='13.0'):
        def is_available():
            if not available:
                warnings.warn('CUDA initialization: The NVIDIA driver on '
                              'your system is too old (found version '
                              '12020).\nPlease update your GPU driver.')
            return available
        monkeypatch.setattr(torch.cuda, 'is_available', is_available)
        monkeypatch.setattr(torch.version, 'cuda', wheel)
        monkeypatch.setattr(torch, '__version__', '2.14.1+cu130')
        monkeypatch.setattr(env, 'nvidia_driver', lambda: driver)
        monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
        if available:
            monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
            monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
            monkeypatch.setattr(torch.cuda, 'get_device_name',
                                lambda device=None: 'NVIDIA H100 80GB HBM3')
            monkeypatch.setattr(torch.cuda, 'get_device_capability',
                                lambda device=None: (9, 0))
    return set_cuda


def test_a_driver_older_than_the_wheels_cuda_is_named(cuda_stub):
    cuda_stub(False, ('535.104.05', (12, 2)))
    ok, line = env.cuda_status()
    assert not ok and '\n' not in line
    assert line == (
        'the NVIDIA driver 535.104.05 runs CUDA up to 12.2, but torch '
        '2.14.1+cu130 is built for CUDA 13.0: install a driver for CUDA '
        '13.0 or newer, or a PyTorch built for CUDA 12.x')


@pytest.mark.parametrize('driver,said', [
    ((None, None), 'no NVIDIA driver found (/proc/driver/nvidia/version and '
     'libcuda.so.1 missing); torch 2.14.1+cu130 is built for CUDA 13.0'),
    (('580.65.06', (13, 0)), 'the NVIDIA driver 580.65.06 runs CUDA up to '
     '13.0 and torch 2.14.1+cu130 is built for CUDA 13.0, but '
     'torch.cuda.is_available() is False: CUDA initialization: The NVIDIA '
     'driver on your system is too old (found version 12020).'),
])
def test_other_reasons_are_named(cuda_stub, driver, said):
    cuda_stub(False, driver)
    assert env.cuda_status() == (False, said)


def test_hidden_devices_and_a_cpu_build_are_named(cuda_stub, monkeypatch):
    cuda_stub(False, ('580.65.06', (13, 0)))
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    assert "(CUDA_VISIBLE_DEVICES='')" in env.cuda_status()[1]
    cuda_stub(False, wheel=None)
    assert env.cuda_status() == (False, 'torch 2.14.1+cu130 is built '
                                 'without CUDA: install a CUDA build of '
                                 'PyTorch')


def test_a_working_device_is_described(cuda_stub):
    cuda_stub(True, ('580.65.06', (13, 0)))
    ok, line = env.cuda_status()
    assert ok and line == (
        'CUDA: 1 device(s), NVIDIA H100 80GB HBM3 (compute capability 9.0),'
        ' driver 580.65.06 (CUDA 13.0), torch 2.14.1+cu130 built for CUDA '
        '13.0; TF32 on for cuDNN convolutions, off for cuBLAS matrix '
        'products')


@pytest.mark.parametrize('text,release', [
    ('NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug '
     '19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n',
     '535.104.05'),
    ('NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  '
     'Release Build  (dvs-builder@U16-I3-B03-4-3)\n', '580.65.06'),
    ('something else\n', None),
])
def test_driver_release_and_cuda_version(tmp_path, monkeypatch, text,
                                         release):
    version_file = tmp_path / 'version'
    version_file.write_text(text)

    class LibCuda:
        @staticmethod
        def cuDriverGetVersion(ref):
            ref._obj.value = 12040
            return 0

    monkeypatch.setattr(ctypes, 'CDLL', lambda name: LibCuda)
    assert env.nvidia_driver(str(version_file)) == (release, (12, 4))
    monkeypatch.undo()
    assert env.nvidia_driver(str(tmp_path / 'none'),
                             str(tmp_path / 'libcuda.so.1')) == (None, None)


def test_collect_env_cuda_says_it_in_one_line(monkeypatch, capsys):
    tool = load_script('tools/collect_env.py', 'collect_env_tool')
    monkeypatch.setattr(env, 'cuda_status', lambda: (False, 'why'))
    with pytest.raises(SystemExit) as info:
        tool.main(['--cuda'])
    assert info.value.code == 1
    out = capsys.readouterr()
    assert out.err == 'collect_env.py: error: CUDA: why\n' and not out.out
    monkeypatch.setattr(env, 'cuda_status', lambda: (True, 'CUDA: fine'))
    with pytest.raises(SystemExit) as info:
        tool.main(['--cuda'])
    assert info.value.code == 0
    assert capsys.readouterr().out == 'CUDA: fine\n'


def test_gpu_check_target_checks_cuda_first_and_times_its_parts():
    """``make -n gpu-check``: the CUDA check is a recipe line of its own
    (its failure stops make before anything else), then the tests and the
    benchmark (stage c with 2 test.py runs, the DCN stage), each part's
    elapsed time echoed."""
    # --no-print-directory: under `make test` this make is a sub-make,
    # which would frame its output with Entering/Leaving directory lines
    out = subprocess.run(
        ['make', '-n', '--no-print-directory', 'gpu-check',
         'ENV_PYTHON=python3'], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout
    commands = out.split('collect_env.py --check', 1)[1]
    check, rest = commands.split('\nstatus=0;', 1)
    assert 'python3 tools/collect_env.py --cuda' in check
    assert 'gpu-check: CUDA set-up checked in' in check
    assert 'pytest -m cuda tests' not in check
    tests, bench = rest.split('tools/benchmark.py', 1)
    assert 'python3 -m pytest -m cuda tests' in tests
    assert 'echo "gpu-check: CUDA tests $((SECONDS - start)) s"' in tests
    assert '--device cuda --repeats 10 --test-runs 2' in bench
    assert '--stages a,b,c,d,e,g' in bench
    assert 'echo "gpu-check: benchmark $((SECONDS - start)) s"' in bench
    assert bench.rstrip().endswith('exit $status')
