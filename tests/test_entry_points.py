"""Every command-line entry point, found by listing the repository (root
*.py, tools/*.py, tools/*.sh), so that a new script is covered at once:

- ``--help``: exit 0, the usage on stdout, nothing on stderr (no warning);
- no arguments (when the usage requires some) and an unknown option: exit
  2, one usage line and one ``<script>: error: ...`` line on stderr, no
  traceback, no shell error or trace.

Plus the shared error format and warning filter of bdd100k_ins_seg.cli.
"""
import os
import os.path as osp
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from scripts import load_script

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
WRONG = '--no-such-option'


def entry_points():
    """Paths (relative to the repository) of every script a user runs."""
    found = [n for n in os.listdir(REPO)
             if n.endswith('.py') and n not in ('setup.py', 'conftest.py')
             and not n.startswith('_')]  # _bdd100k_ins_seg_hook: a module
    found += [osp.join('tools', n) for n in os.listdir(osp.join(REPO, 'tools'))
              if n.endswith(('.py', '.sh')) and not n.startswith('_')]
    return sorted(found)


SCRIPTS = entry_points()


def command(script, *args):
    if script.endswith('.sh'):
        return [osp.join(REPO, script), *args]  # through its shebang
    return [sys.executable, osp.join(REPO, script), *args]


def run(cmd):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    env.pop('PYTHONWARNINGS', None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope='module')
def helps():
    """``--help`` of every script, run in parallel."""
    with ThreadPoolExecutor(4) as pool:
        procs = pool.map(lambda s: run(command(s, '--help')), SCRIPTS)
        return dict(zip(SCRIPTS, procs))


def needs_arguments(help_text):
    """Whether the usage names a required argument (not all in [...])."""
    match = re.search(r'usage: (\S+)(.*?)(\n\n|\Z)', help_text, re.S)
    assert match, help_text
    rest = match.group(2)
    while re.search(r'\[[^\[\]]*\]', rest):
        rest = re.sub(r'\[[^\[\]]*\]', ' ', rest)
    return bool(rest.replace('...', ' ').split())


@pytest.fixture(scope='module')
def wrong_calls(helps):
    """Each script without arguments (if it needs some; otherwise that is
    a real run) and with an unknown option, in parallel."""
    calls = [(s, ()) for s in SCRIPTS if needs_arguments(helps[s].stdout)]
    calls += [(s, (WRONG, )) for s in SCRIPTS]
    with ThreadPoolExecutor(4) as pool:
        procs = pool.map(lambda c: run(command(c[0], *c[1])), calls)
        return dict(zip(calls, procs))


def test_discovery_finds_the_scripts():
    for script in ('train.py', 'test.py', 'vis.py', 'tools/to_coco.py',
                   'tools/dist_test.sh', 'tools/slurm_train.sh'):
        assert script in SCRIPTS
    for script in SCRIPTS:
        if script.endswith('.sh'):
            assert os.access(osp.join(REPO, script), os.X_OK), script


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(helps, script):
    proc = helps[script]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''
    name = osp.basename(script)
    assert re.match(rf'usage: \S*{re.escape(name)}\b', proc.stdout), \
        proc.stdout[:500]
    assert len(proc.stdout.splitlines()) >= 3  # more than the usage line


def check_usage_error(proc, script):
    name = osp.basename(script)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1000:])
    assert proc.stdout == ''
    lines = proc.stderr.splitlines()
    assert sum(line.startswith('usage: ') for line in lines) == 1, lines
    assert lines[0].startswith('usage: ')
    assert lines[-1].startswith(f'{name}: error: '), lines
    for bad in ('Traceback', 'unbound variable', 'command not found'):
        assert bad not in proc.stderr
    assert not any(line.startswith('+') for line in lines)  # set -x trace


@pytest.mark.parametrize('script', SCRIPTS)
def test_wrong_option_is_a_usage_error(wrong_calls, script):
    check_usage_error(wrong_calls[(script, (WRONG, ))], script)


@pytest.mark.parametrize('script', SCRIPTS)
def test_no_arguments(helps, wrong_calls, script):
    if (script, ()) not in wrong_calls:
        # Its usage has only optional arguments: running it bare is a real
        # run (the demo, the environment report), checked elsewhere.
        assert not needs_arguments(helps[script].stdout)
        assert script in ('tools/demo.py', 'tools/collect_env.py',
                          'tools/benchmark_startup.py',
                          'tools/benchmark_eval_cli.py'), (
            f'{script} runs without arguments: add it here if intended')
        return
    check_usage_error(wrong_calls[(script, ())], script)


def test_usage_parsing():
    assert not needs_arguments('usage: demo.py [-h] [--data DATA]\n'
                               '               [--retrain]\n\nx')
    assert needs_arguments('usage: vis.py [-h] -i IMAGES [-n NUM]\n')
    assert needs_arguments('usage: m.py [-h] {list,download} ...\n')
    assert needs_arguments('usage: test.py [-h] [--eval] config '
                           '[checkpoint]\n')
    assert needs_arguments('usage: dist_test.sh CONFIG CHECKPOINT GPUS '
                           '[test.py options]\n')


def test_sample_counts_in_help_are_the_packages():
    from bdd100k_ins_seg.formats.sample_data import (DEFAULT_COUNTS,
                                                     SCENE_MIXES)
    tool = load_script('tools/make_sample_data.py', 'make_sample_data')
    assert tool.DEFAULT_COUNTS == DEFAULT_COUNTS
    assert tool.SCENE_MIXES == tuple(SCENE_MIXES)


def test_error_format(monkeypatch, capsys):
    from bdd100k_ins_seg import cli
    monkeypatch.setattr(sys, 'argv', ['/somewhere/tools/x.py', 'a'])
    with pytest.raises(SystemExit) as exit_:
        cli.fail('config a.py', 'not\nfound ')
    assert exit_.value.code == 1
    assert capsys.readouterr().err == 'x.py: error: config a.py: not found\n'
    assert cli.error_line('f.json', KeyError('name')) == \
        'x.py: error: f.json: name'
    missing = FileNotFoundError(2, 'No such file or directory', 'd/a.json')
    assert cli.error_line('data', missing) == \
        'x.py: error: data: d/a.json: No such file or directory'
    assert cli.reason(EOFError()) == 'EOFError'
    with pytest.raises(SystemExit) as exit_:
        cli.fail('download', 'unknown model', code=2)
    assert exit_.value.code == 2


# Each known warning raised by its own source, then the same texts (and
# others) from the script itself.
KNOWN_SOURCES = r"""
import logging, tempfile, warnings
import torch
import torch.distributed as dist
from mmengine.logging import print_log
import bdd100k_ins_seg.plugin  # after mmengine, as in a notebook
from mmengine.utils import get_installed_path, is_installed
is_installed('mmdet'); get_installed_path('mmdet')
dist.init_process_group('gloo', init_method='file://' + tempfile.mktemp(),
                        rank=0, world_size=1)
from mmengine.model import MMDistributedDataParallel
MMDistributedDataParallel(module=torch.nn.Linear(1, 1),
                          broadcast_buffers=False)
from mmengine.visualization import Visualizer
Visualizer(name='v', vis_backends=[dict(type='LocalVisBackend')])
from mmengine.fileio import FileClient
FileClient.infer_client(None, tempfile.gettempdir())
from mmengine.registry import FUNCTIONS, DefaultScope, init_default_scope
init_default_scope('mmdet')
DefaultScope.get_instance('other', scope_name='mmengine')
init_default_scope('mmdet')  # DetInferencer after another scope
with FUNCTIONS.switch_scope_and_registry('mmdet'):
    pass
print('FROM HERE', flush=True)
for text in {texts!r}:
    warnings.warn(text + ' (here)')
for text in {logs!r}:
    print_log(text + ' (here)', logger='current', level=logging.WARNING)
"""


def test_known_warnings_are_silenced_and_others_are_not():
    """The warnings of mmengine and torch that a user cannot act on (DDP's
    broadcast_buffers, the LocalVisBackend of a visualizer without a
    folder, pkg_resources) and mmengine's logger warnings of the same kind
    (FileClient, the registry scope of DetInferencer) are silenced when
    they come from their source; the same texts from elsewhere, and other
    warnings, still show."""
    texts = ['pkg_resources is deprecated as an API',
             '`broadcast_buffers` is deprecated',
             "Failed to add <class 'mmengine.visualization.vis_backend."
             "LocalVisBackend'>, please provide the `save_dir` argument",
             'another warning']
    logs = ['"FileClient" will be deprecated in future',
            '"HardDiskBackend" is the alias of "LocalBackend"',
            'The current default scope "x" is not "mmdet", '
            '`init_default_scope` will force',
            'Failed to search registry with scope "mmdet" in the '
            '"function" registry tree',
            'another log warning']
    proc = run([sys.executable, '-c',
                KNOWN_SOURCES.format(texts=texts, logs=logs)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'FROM HERE' in proc.stdout
    shown = [line for line in (proc.stdout + proc.stderr).splitlines()
             if 'Warning: ' in line or ' - WARNING - ' in line]
    # Only the script's own: one line each, none from the sources.
    assert all(line.endswith(' (here)') for line in shown), shown
    for text in texts + logs:
        assert sum(text + ' (here)' in line for line in shown) == 1, text
    assert len(shown) == len(texts) + len(logs), shown


def test_config_options_read_as_mmengine_does():
    from bdd100k_ins_seg.cli import config_options
    assert config_options(['a.b=1', 'c=[1,2]', 'd=x', 'e=None', 'f=(1,a)']) \
        == {'a.b': 1, 'c': [1, 2], 'd': 'x', 'e': None, 'f': (1, 'a')}
    with pytest.raises(ValueError, match="'oops' is not KEY=VALUE"):
        config_options(['a=1', 'oops'])


@pytest.mark.parametrize('script', ['train.py', 'test.py'])
def test_cfg_options_without_value_is_a_usage_error(script):
    proc = run(command(script, 'configs/sample/mask_rcnn_r18_fpn_sample.py',
                       '--cfg-options', 'a=1', '--cfg-options', 'oops'))
    check_usage_error(proc, script)
    assert proc.stderr.splitlines()[-1] == \
        f"{script}: error: --cfg-options: 'oops' is not KEY=VALUE"
