"""The environment report and the pinned stack."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins():
    pins = {}
    for line in (ROOT / 'requirements' / 'runtime.txt').read_text().splitlines():
        m = re.match(r'^([A-Za-z0-9_.-]+)==([^\s#]+)', line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


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
    assert report['PyTorch'].split('+')[0] == pins['torch']
    assert report['mmcv ops backend'].startswith('torchvision')
    assert int(report['pydantic'].split('.')[0]) < 2  # the evaluator needs 1.x
    assert 'pkg_resources' not in out.stderr
