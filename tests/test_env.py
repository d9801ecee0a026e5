"""The environment report, its readiness check and the pinned stack."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _pins(name='runtime.txt'):
    pins = {}
    for line in (ROOT / 'requirements' / name).read_text().splitlines():
        if line.startswith('-r'):
            pins.update(_pins(line[2:].strip()))
        m = re.match(r'^([A-Za-z0-9_.-]+)==([^\s#]+)', line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def test_runtime_requirements_are_torch_on_top_of_the_stack():
    """runtime.txt = the torch pins + stack.txt; stack.txt holds no torch
    (it keeps the environment's own)."""
    stack = _pins('stack.txt')
    assert 'torch' not in stack and 'torchvision' not in stack
    assert {'mmdet', 'mmengine', 'mmcv-lite', 'bdd100k'} <= set(stack)
    runtime = _pins()
    assert set(runtime) == set(stack) | {'torch', 'torchvision'}


def test_collect_env_reports_pinned_stack_and_backend():
    out = subprocess.run([sys.executable, 'tools/collect_env.py'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = dict(
        line.split(': ', 1) for line in out.stdout.splitlines()
        if ': ' in line)
    pins = _pins()
    assert report['MMDetection'] == pins['mmdet']
    assert report['MMEngine'] == pins['mmengine']
    assert report['MMCV-lite'] == pins['mmcv-lite']
    assert report['bdd100k'] == pins['bdd100k']
    # The environment's own torch (the pin where make installed it).
    assert report['PyTorch'] == torch.__version__
    assert report['mmcv ops backend'].startswith('torchvision')
    assert int(report['pydantic'].split('.')[0]) < 2  # the evaluator needs 1.x
    assert 'pkg_resources' not in out.stderr


def _check(*files, cwd=ROOT, script=ROOT / 'tools' / 'collect_env.py'):
    return subprocess.run(
        [sys.executable, str(script), '--check', *map(str, files)], cwd=cwd,
        capture_output=True, text=True, timeout=300)


def test_check_passes_in_the_environment_that_runs_the_suite():
    out = _check('requirements/stack.txt', 'requirements/tests.txt')
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f'{sys.executable} can run {ROOT}: ')
    assert f'torch {torch.__version__}' in out.stdout


def test_check_names_the_first_unmet_requirement(tmp_path):
    """A missing package and a wrong version each give one line naming the
    package, the file and what it needs; status 1."""
    missing = tmp_path / 'missing.txt'
    missing.write_text('# comment\nmmdet==3.3.0\nno-such-package-bdd==1.0\n')
    out = _check(missing)
    assert out.returncode == 1 and out.stdout == ''
    assert out.stderr == (
        'collect_env.py: error: no-such-package-bdd: not installed '
        f'({missing} needs no-such-package-bdd==1.0): pip install -r '
        f'{missing}\n')
    (tmp_path / 'inner.txt').write_text('mmengine<0.1\n')
    wrong = tmp_path / 'wrong.txt'
    wrong.write_text('-r inner.txt\n')
    out = _check(wrong)
    assert out.returncode == 1
    assert out.stderr.startswith(
        f"collect_env.py: error: mmengine: {_pins()['mmengine']} is installed, ")
    assert 'needs mmengine<0.1' in out.stderr
    assert out.stderr.count('\n') == 1


def test_check_refuses_another_checkout_and_a_missing_hook(tmp_path):
    """The package imported from elsewhere than the script's checkout (an
    old install of another clone), and an install without the start-up
    hook, are each named."""
    (tmp_path / 'tools').mkdir()
    other = tmp_path / 'tools' / 'collect_env.py'
    shutil.copy(ROOT / 'tools' / 'collect_env.py', other)
    out = _check(ROOT / 'requirements' / 'stack.txt', script=other)
    assert out.returncode == 1
    assert out.stderr == (
        f'collect_env.py: error: bdd100k_ins_seg: is imported from {ROOT}, '
        f'not from this checkout {tmp_path}: pip install --no-deps -e . '
        '(README "Install")\n')
    tool = load_script('tools/collect_env.py', 'collect_env_tool')
    stack = str(ROOT / 'requirements' / 'stack.txt')
    assert tool.readiness_problem([stack], hook_at_start=True) is None
    what, why = tool.readiness_problem([stack], hook_at_start=False)
    assert what == 'bdd100k_ins_seg'
    assert why.startswith('installed without its start-up hook')
