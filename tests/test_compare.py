"""`model_zoo.py compare` and `test.py --compare-published` on result files
of the official evaluator (synthetic bitmasks), against published scores
served by a local HTTP server."""
import json
import math
import shutil
import sys
from pathlib import Path
import pytest

from bdd100k_ins_seg import zoo
from bdd100k_ins_seg.zoo import compare
from test_evaluation import make_scenes
from test_test_script import run, setup  # noqa: F401  (module fixture)
from zoo_host import (NAME, REPO, Host, load_tool, official_cli,
                      script_name, write_predictions)  # noqa: F401
from scripts import load_script

# errors name the script as sys.argv[0] does
pytestmark = pytest.mark.usefixtures('script_name')


def _official_in_process(gt_dir, pred_dir, out_file):
    """What test.py --eval --out-file writes: dict(result) of the official
    evaluator's function, as json."""
    from bdd100k.common.utils import list_files, load_bdd100k_config
    from bdd100k.eval.ins_seg import evaluate_ins_seg
    gts = list_files(str(gt_dir), '.png', with_prefix=True)
    preds = [str(pred_dir / 'bitmasks' / p.rsplit('/', 1)[-1]) for p in gts]
    result = evaluate_ins_seg(gts, preds, str(pred_dir / 'score.json'),
                              load_bdd100k_config('ins_seg').scalabel,
                              nproc=1)
    with open(out_file, 'w') as f:
        json.dump(dict(result), f)
    return out_file


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    """published: the CLI's scores of predictions with class A moved 2 px;
    equal: the same predictions through the evaluator's function;
    shifted: class A moved 2 px and class B 4 px (A, B the two most
    frequent classes). All three by the official evaluator."""
    root = tmp_path_factory.mktemp('compare')
    scenes = make_scenes(str(root), num_images=3, size=(160, 96), seed=11,
                         per_image=4)
    labels = [int(c) for s in scenes for c in s['labels']]
    a, b = sorted(set(labels), key=lambda c: (-labels.count(c), c))[:2]
    gt = root / 'gt'
    base = write_predictions(str(gt), str(root / 'p_a'), shift=(a, 2))
    published = official_cli(gt, base, root / 'published.json')
    equal = _official_in_process(gt, root / 'p_a', root / 'equal.json')
    # shifted: class A as published, class B moved too
    write_predictions(str(gt), str(root / 'p_ab0'), shift=(a, 2))
    shifted_dir = write_predictions(str(root / 'p_ab0' / 'bitmasks'),
                                    str(root / 'p_ab'), shift=(b, 4))
    shifted = _official_in_process(gt, Path(shifted_dir),
                                   root / 'shifted.json')
    return dict(published=published, equal=equal, shifted=shifted,
                classes=(zoo_class(a), zoo_class(b)))


def zoo_class(category):
    from zoo_host import CLASSES
    return CLASSES[category - 1]


@pytest.fixture
def host(results, tmp_path, monkeypatch):
    for split in ('val', 'test'):
        folder = tmp_path / 'srv' / f'scores-{split}'
        folder.mkdir(parents=True)
        shutil.copy(results['published'], folder / f'{NAME}.json')
    srv = Host(tmp_path / 'srv')
    monkeypatch.setenv(zoo.MIRROR_ENV, srv.url)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
    yield srv
    srv.close()


def raw(path):
    with open(path) as f:
        return json.load(f)


def ap_rows(data):
    """class/OVERALL -> AP, straight from an evaluator json."""
    rows = dict(data['AP'][0])
    rows['OVERALL'] = data['AP'][1]['OVERALL']
    return rows


def table_rows(text):
    """name -> the 12 cells (ours, pub, delta x AP/AP50/AP75/AR100) and
    whether the row is flagged, parsed from the printed table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 16 and parts[2] != 'pub' and parts[4] == '|':
            flagged = parts[-1] == '!'
            cells = [p for p in parts[1:len(parts) - flagged] if p != '|']
            rows[parts[0]] = (cells, flagged)
    return rows


def cell(value):
    return '-' if value is None or math.isnan(value) else f'{value:.2f}'


def test_fixture_has_what_the_tests_need(results):
    published, shifted = ap_rows(raw(results['published'])), ap_rows(
        raw(results['shifted']))
    a, b = results['classes']
    assert any(math.isnan(v) for v in published.values())  # absent class
    assert abs(shifted[b] - published[b]) > 0.5
    assert shifted[a] == published[a]


def test_equal_results_give_zero_deltas(host, results, capsys):
    tool = load_tool()
    assert tool.main(['compare', NAME, str(results['equal']), '--quiet',
                      '--fail-above', '0']) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    published = raw(results['published'])
    assert list(rows) == list(published['AP'][0]) + ['OVERALL']
    for name, (cells, flagged) in rows.items():
        assert not flagged
        for i, metric in enumerate(compare.METRICS):
            value = (published[metric][1]['OVERALL'] if name == 'OVERALL'
                     else published[metric][0][name])
            ours, pub, delta = cells[3 * i:3 * i + 3]
            assert ours == pub == cell(value)
            assert delta == ('-' if math.isnan(value) else '+0.00')
    assert out.rstrip().endswith('every |delta AP| <= 0.5')


def test_shifted_results_flag_the_right_rows(host, results, capsys):
    ours, published = ap_rows(raw(results['shifted'])), ap_rows(
        raw(results['published']))
    expected = {name for name in published
                if not math.isnan(ours[name] - published[name])
                and abs(ours[name] - published[name]) > 0.5}
    assert expected == {results['classes'][1], 'OVERALL'}
    tool = load_tool()
    assert tool.main(['compare', NAME, str(results['shifted']),
                      '--quiet']) == 0
    rows = table_rows(capsys.readouterr().out)
    assert {name for name, (_, flagged) in rows.items() if flagged} == \
        expected
    for name, (cells, _) in rows.items():
        assert cells[2] == ('-' if math.isnan(ours[name] - published[name])
                            else f'{ours[name] - published[name]:+.2f}')
    largest = max(abs(ours[n] - published[n]) for n in expected)
    assert tool.main(['compare', NAME, str(results['shifted']), '--quiet',
                      '--fail-above', f'{largest - 0.01:.2f}']) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith('1 rows differ by more than') or \
        out[-1].startswith('2 rows differ by more than')
    assert tool.main(['compare', NAME, str(results['shifted']), '--quiet',
                      '--fail-above', f'{largest + 0.01:.2f}']) == 0


def test_absent_classes_print_a_dash_and_are_not_flagged(host, results,
                                                         tmp_path, capsys):
    """A class scored in the published file but absent from ours (NaN),
    and one absent from both."""
    data = raw(results['shifted'])
    gone = results['classes'][1]  # flagged above; NaN here
    for metric in data:
        data[metric][0][gone] = float('nan')
    path = tmp_path / 'ours.json'
    path.write_text(json.dumps(data))
    tool = load_tool()
    assert tool.main(['compare', NAME, str(path), '--quiet',
                      '--fail-above', '0.01']) == 1  # OVERALL still moved
    rows = table_rows(capsys.readouterr().out)
    cells, flagged = rows[gone]
    assert not flagged and cells[0] == '-' and cells[2] == '-'
    assert cells[1] != '-'
    absent = [n for n, v in ap_rows(raw(results['published'])).items()
              if math.isnan(v)]
    for name in absent:
        assert rows[name][0][:3] == ['-', '-', '-'] and not rows[name][1]


def test_without_a_result_the_published_table_is_printed(host, results,
                                                         capsys):
    tool = load_tool()
    assert tool.main(['compare', NAME, '--split', 'test', '--quiet']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f'{NAME}: published test scores '
                      f'({zoo.cache_dir() / "scores-test" / (NAME + ".json")}'
                      ')')
    header = out[1].split()
    assert header[:5] == ['class', 'AP', 'AP50', 'AP75', 'APs']
    published = raw(results['published'])
    lines = {line.split()[0]: line.split()[1:] for line in out[2:]
             if not line.startswith('-')}
    for name in list(published['AP'][0]) + ['OVERALL']:
        for metric, text in zip(header[1:], lines[name]):
            value = (published[metric][1]['OVERALL'] if name == 'OVERALL'
                     else published[metric][0][name])
            assert text == cell(value)


def test_bad_result_file_is_a_one_line_error(host, tmp_path, capsys):
    tool = load_tool()
    bad = tmp_path / 'bad.json'
    bad.write_text('{"AP": [{"car": 1}, {"OVERALL": 1}]}')
    assert tool.main(['compare', NAME, str(bad), '--quiet']) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'model_zoo.py: error: compare: {bad}: not an official evaluator '
        'result: no AP50, AP75, AR100 (has AP)']
    assert tool.main(['compare', NAME, str(tmp_path / 'none.json'),
                      '--quiet']) == 2
    assert 'cannot read it' in capsys.readouterr().err


# --- test.py --compare-published --------------------------------------------

def test_test_script_compares_after_scoring(host, results, setup, tmp_path):
    """A zoo model (the tiny model's config saved under a zoo name) is
    scored, then compared with the published scores in the same run."""
    root, data, config, checkpoint = setup
    zoo_config = tmp_path / f'{NAME}.py'
    shutil.copy(config, zoo_config)
    proc = run([str(zoo_config), checkpoint, '--eval', '--out-file',
                'ours.json', '--compare-published', '--work-dir', 'wd'],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = ap_rows(raw(tmp_path / 'ours.json'))
    published = ap_rows(raw(results['published']))
    title = (f'{NAME} val: ours (ours.json) vs published '
             f'({tmp_path / "cache" / "scores-val" / (NAME + ".json")})')
    assert title in proc.stdout.splitlines()
    rows = table_rows(proc.stdout[proc.stdout.index(title):])
    assert list(rows) == list(published)
    for name, (cells, _) in rows.items():
        assert cells[:2] == [cell(ours[name]), cell(published[name])]


def test_test_script_refuses_a_non_zoo_config_up_front(
        host, tmp_path, monkeypatch, capsys):
    """Refused before the model is built (test.py's main, in-process)."""
    config = str(REPO / 'configs' / 'sample' / 'mask_rcnn_r18_fpn_sample.py')
    checkpoint = tmp_path / 'any.pth'
    checkpoint.write_bytes(b'never read')
    script = load_script('test.py', 'test_script')
    monkeypatch.setattr(sys, 'argv', [
        'test.py', config, str(checkpoint), '--eval', '--compare-published',
        '--work-dir', str(tmp_path / 'wd')])
    with pytest.raises(SystemExit) as error:
        script.main()
    assert error.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f'test.py: error: --compare-published: {config} is not a zoo model '
        f'({zoo.METAFILE_NAME}), so there are no published scores to '
        'compare with']
    assert not (tmp_path / 'wd').exists()
    monkeypatch.setattr(sys, 'argv', [
        'test.py', config, '--format-only', '--format-dir', 'o',
        '--compare-published'])
    with pytest.raises(SystemExit) as error:
        script.main()
    assert error.value.code == 2  # argparse: needs --eval
