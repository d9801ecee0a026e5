"""The light core: what only reads and writes BDD100K files loads neither
torch nor the OpenMMLab stack, and the package has no import circles.

Each entry point runs for real, on files made in ``tmp_path``, in a fresh
interpreter started from a folder outside the checkout; at its exit it
reports which heavy packages were imported.
"""
import ast
import json
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'bdd100k_ins_seg'
HEAVY = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet')

# Runs a script (path) or module (-m name) as __main__, then prints the
# heavy packages imported, whatever the exit status.
RUNNER = r'''
import atexit, runpy, sys
HEAVY = {heavy!r}
def report():
    found = sorted({{m.split('.')[0] for m in sys.modules}} & set(HEAVY))
    sys.stderr.write('\nHEAVY=' + ','.join(found) + '\n')
atexit.register(report)
target, args = sys.argv[1], sys.argv[2:]
if target.startswith('-m'):
    sys.argv = [target[2:]] + args
    runpy.run_module(target[2:], run_name='__main__', alter_sys=True)
else:
    sys.argv = [target] + args
    runpy.run_path(target, run_name='__main__')
'''


def run_light(cwd, target, *args):
    """(returncode, heavy packages imported, stderr) of one entry point."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-c', RUNNER.format(heavy=HEAVY), target, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stderr.splitlines() if x.startswith('HEAVY=')]
    assert line, proc.stderr[-2000:]
    heavy = [x for x in line[-1][len('HEAVY='):].split(',') if x]
    return proc.returncode, heavy, proc.stderr


def write_bitmask(path, instances):
    """instances: [(category id, instance id, (y0, y1, x0, x1))]."""
    bitmask = np.zeros((48, 64, 4), np.uint8)
    bitmask[..., 3] = 0
    for category, index, (y0, y1, x0, x1) in instances:
        bitmask[y0:y1, x0:x1, 0] = category
        bitmask[y0:y1, x0:x1, 3] = index
    Image.fromarray(bitmask, 'RGBA').save(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """GT and prediction bitmasks, a score file and the images of 2
    frames, in a folder outside the checkout."""
    root = tmp_path_factory.mktemp('light')
    for sub in ('gt', 'pred', 'images'):
        (root / sub).mkdir()
    frames = []
    for k, name in enumerate(('a', 'b')):
        write_bitmask(root / 'gt' / f'{name}.png',
                      [(3, 1, (4, 20, 4, 30)), (1, 2, (25, 45, 35, 60))])
        write_bitmask(root / 'pred' / f'{name}.png',
                      [(3, 1, (5, 20, 4, 28)), (1, 2, (26, 44, 35 + k, 58))])
        frames.append(dict(name=f'{name}.jpg', labels=[
            dict(id=str(i), index=i, score=s, category=c)
            for i, s, c in ((1, 0.9, 'car'), (2, 0.6, 'pedestrian'))]))
        Image.new('RGB', (64, 48), (90, 90, 90)).save(
            root / 'images' / f'{name}.jpg')
    (root / 'score.json').write_text(json.dumps(frames))
    return root


def test_package_root_imports_nothing_heavy(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-c', 'import sys, bdd100k_ins_seg; print(sorted('
         '{m.split(".")[0] for m in sys.modules} & set(%r)))' % (HEAVY, )],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stderr


def test_evaluator_cli_is_light(files, tmp_path):
    out = tmp_path / 'result.json'
    code, heavy, err = run_light(
        tmp_path, '-mbdd100k_ins_seg.eval', '-g', str(files / 'gt'), '-r',
        str(files / 'pred'), '--score-file', str(files / 'score.json'),
        '--out-file', str(out), '--nproc', '1')
    assert code == 0, err[-2000:]
    assert 'AP' in json.loads(out.read_text())
    assert heavy == []


def test_vis_on_existing_predictions_is_light(files, tmp_path):
    code, heavy, err = run_light(
        tmp_path, str(REPO / 'vis.py'), '-i', str(files / 'images'), '-c',
        str(files / 'pred'), '--score-file', str(files / 'score.json'), '-o',
        str(tmp_path / 'vis'), '--nproc', '1')
    assert code == 0, err[-2000:]
    assert sorted(os.listdir(tmp_path / 'vis')) == ['a.jpg', 'b.jpg']
    assert heavy == []


def test_colorize_is_light(files, tmp_path):
    code, heavy, err = run_light(
        tmp_path, str(REPO / 'tools' / 'colorize.py'), '-i',
        str(files / 'gt'), '-o', str(tmp_path / 'color'), '--nproc', '1')
    assert code == 0, err[-2000:]
    assert sorted(os.listdir(tmp_path / 'color')) == ['a.png', 'b.png']
    assert heavy == []


def test_analyze_is_light(files, tmp_path):
    out = tmp_path / 'analysis'
    code, heavy, err = run_light(
        tmp_path, str(REPO / 'tools' / 'analyze.py'), '-g',
        str(files / 'gt'), '-r', str(files / 'pred'), '--score-file',
        str(files / 'score.json'), '--images', str(files / 'images'), '-o',
        str(out), '--nproc', '1', '--num', '1')
    assert code == 0, err[-2000:]
    assert (out / 'index.html').is_file() and (out / 'summary.json').is_file()
    assert heavy == []


def test_to_coco_is_light(files, tmp_path):
    out = tmp_path / 'coco.json'
    code, heavy, err = run_light(
        tmp_path, str(REPO / 'tools' / 'to_coco.py'), '-i',
        str(files / 'gt'), '-o', str(out), '--nproc', '1')
    assert code == 0, err[-2000:]
    assert len(json.loads(out.read_text())['annotations']) == 4
    assert heavy == []


def test_model_zoo_list_is_light(tmp_path):
    code, heavy, err = run_light(
        tmp_path, str(REPO / 'tools' / 'model_zoo.py'), 'list')
    assert code == 0, err[-2000:]
    assert heavy == []


def test_compare_with_published_is_light(tmp_path):
    """``model_zoo.py compare`` of a result file against the published
    scores (a local mirror holds them)."""
    sys.path.insert(0, str(REPO))
    from bdd100k_ins_seg import zoo
    name = next(iter(zoo.load_catalogue()))
    result = {m: [{'car': 40.0}, {'OVERALL': 30.0}]
              for m in ('AP', 'AP50', 'AP75', 'AR100')}
    mirror = tmp_path / 'mirror'
    (mirror / 'scores-val').mkdir(parents=True)
    (mirror / 'scores-val' / f'{name}.json').write_text(json.dumps(result))
    (tmp_path / 'ours.json').write_text(json.dumps(result))
    env = {zoo.MIRROR_ENV: str(mirror), zoo.CACHE_ENV: str(tmp_path / 'c')}
    os.environ.update(env)
    try:
        code, heavy, err = run_light(
            tmp_path, str(REPO / 'tools' / 'model_zoo.py'), 'compare', name,
            str(tmp_path / 'ours.json'))
    finally:
        for k in env:
            os.environ.pop(k)
    assert code == 0, err[-2000:]
    assert heavy == []


def _modules():
    """module name -> path of every module of the package."""
    found = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(REPO).with_suffix('').parts
        if parts[-1] == '__init__':
            parts = parts[:-1]
        found['.'.join(parts)] = path
    return found


def _imports(path, name, modules):
    """The package modules that ``path`` imports, anywhere in the file
    (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            names = [base] + [f'{base}.{a.name}' for a in node.names]
        else:
            continue
        for n in names:
            # the longest package module the name denotes
            while n and n not in modules:
                n = n.rpartition('.')[0]
            if n and n != name:
                targets.add(n)
    return targets


def _cycles(graph):
    """Strongly connected components of more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def import_graph():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target in _imports(path, name, modules):
            # importing a.b.c runs a and a.b first: a package's own
            # __init__ is not an edge of its modules
            if not name.startswith(target + '.'):
                graph[name].add(target)
    return graph


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 30
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
        ['a', 'b', 'c']]


#: The light layers: they never import these folders (whose modules load
#: torch or mmdet).
LIGHT = ('bdd100k_ins_seg.formats', 'bdd100k_ins_seg.evaluation',
         'bdd100k_ins_seg.zoo', 'bdd100k_ins_seg.visualization',
         'bdd100k_ins_seg.analysis',
         'bdd100k_ins_seg.cli', 'bdd100k_ins_seg.eval',
         'bdd100k_ins_seg.parallel')
HEAVY_LAYERS = ('bdd100k_ins_seg.inference', 'bdd100k_ins_seg.engine',
                'bdd100k_ins_seg.benchmark')


def test_layers_point_down():
    """Light layers never import the heavy ones, and nothing below the
    plugin imports it (the zoo builds a model through
    :func:`bdd100k_ins_seg.register_all_modules`, the package root)."""
    graph = import_graph()
    wrong = []
    for name, targets in graph.items():
        if name.startswith(LIGHT):
            wrong += [(name, t) for t in targets
                      if t.startswith(HEAVY_LAYERS + (
                          'bdd100k_ins_seg.plugin', ))]
        if name.startswith(('bdd100k_ins_seg.inference',
                            'bdd100k_ins_seg.plugin')):
            wrong += [(name, t) for t in targets
                      if t.startswith('bdd100k_ins_seg.engine')]
    assert wrong == []


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.rglob('__init__.py'):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding='utf-8')))
        assert doc and len(doc) > 60, f'{init} has no docstring'


def test_files_stay_readable():
    """No module over ~500 lines, but the named cohesive ones."""
    cohesive = {
        'sample_data.py',  # the scene generator, one thing
        # mmcv._ext's stand-in: loaded as one file (by path, at interpreter
        # start), so it cannot lean on other modules
        'torchvision_ext.py',
    }
    long = [str(p.relative_to(REPO)) for p in PACKAGE.rglob('*.py')
            if p.name not in cohesive
            and len(p.read_text(encoding='utf-8').splitlines()) > 520]
    assert long == []
