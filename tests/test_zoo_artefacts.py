"""Every published file kind: download (local HTTP server and mirror
folder), checks, bad files, verify, and published predictions as input of
vis.py and the official evaluator."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bdd100k_ins_seg import zoo
from test_evaluation import make_scenes
from zoo_host import (NAME, REPO, Host, build_host, leftovers, load_tool,
                      official_cli, script_name,  # noqa: F401
                      write_predictions, zip_folder)

# errors name the script as sys.argv[0] does
pytestmark = pytest.mark.usefixtures('script_name')

OTHER_KINDS = ('scores-val', 'scores-test', 'preds', 'visuals')


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    """3 synthetic scenes and the official evaluator's result of perfect
    predictions on them (what a published scores file holds)."""
    root = tmp_path_factory.mktemp('scenes')
    make_scenes(str(root), num_images=3, size=(120, 72), seed=5)
    preds = write_predictions(str(root / 'gt'), str(root / 'preds'))
    scores = official_cli(root / 'gt', preds, root / 'scores.json')
    return root, scores


@pytest.fixture
def host(scenes, tmp_path, monkeypatch):
    root, scores = scenes
    srv_root = tmp_path / 'srv'
    published = build_host(srv_root, root, scores)
    srv = Host(srv_root)
    monkeypatch.setenv(zoo.MIRROR_ENV, srv.url)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
    yield srv, published
    srv.close()


def cached(tmp_path, kind):
    return zoo.artefact_path(zoo.get_entry(NAME), kind)


@pytest.mark.parametrize('kind', zoo.KINDS)
def test_each_kind_downloads_once_through_http(host, tmp_path, kind):
    srv, published = host
    path = zoo.fetch(NAME, kind, progress=False)
    folder, ext, _ = zoo.ARTEFACTS[kind]
    expected = (tmp_path / 'cache' / f'{NAME}{ext}' if kind == 'weights'
                else tmp_path / 'cache' / folder / f'{NAME}{ext}')
    assert path == expected and path.read_bytes() == published[kind]
    requests = list(srv.requests)
    assert requests.count(f'{NAME}{ext}') == 1
    srv.close()  # checked files are not fetched again
    assert zoo.fetch(NAME, kind, progress=False) == path
    assert srv.requests == requests
    assert zoo.verify(NAME, kind)[0] == 'ok'
    assert leftovers(tmp_path / 'cache') == []


@pytest.mark.parametrize('kind', zoo.KINDS)
def test_each_kind_from_a_mirror_folder(host, tmp_path, monkeypatch, kind):
    srv, published = host
    monkeypatch.setenv(zoo.MIRROR_ENV, str(tmp_path / 'srv'))
    srv.close()
    path = zoo.fetch(NAME, kind, progress=False)
    assert path.read_bytes() == published[kind]
    assert srv.requests == []


def test_flat_mirror_folder_and_models_suffix(host, tmp_path, monkeypatch):
    """A local folder may hold every file flat; a mirror URL ending in
    /models (the weights folder) stands for the host's root."""
    srv, published = host
    flat = tmp_path / 'flat'
    flat.mkdir()
    (flat / f'{NAME}.json').write_bytes(published['scores-val'])
    monkeypatch.setenv(zoo.MIRROR_ENV, str(flat))
    assert zoo.fetch(NAME, 'scores-val', progress=False).read_bytes() == \
        published['scores-val']
    monkeypatch.setenv(zoo.MIRROR_ENV, srv.url + '/models/')
    assert zoo.fetch(NAME, 'visuals', progress=False).read_bytes() == \
        published['visuals']
    assert srv.requests == [f'{NAME}.zip']


def _one_line_refusal(kind, tmp_path, match):
    with pytest.raises(zoo.ZooError) as error:
        zoo.fetch(NAME, kind, progress=False)
    message = str(error.value)
    assert '\n' not in message and zoo.ARTEFACTS[kind][0] in message
    assert match in message, message
    assert not cached(tmp_path, kind).exists()
    assert leftovers(tmp_path / 'cache') == []
    return message


@pytest.mark.parametrize('content,match', [
    (b'{"AP": [{"car": 1.0}, {"OVERALL"', 'not valid json'),
    (b'[1, 2, 3]', 'not an official evaluator result'),
    (b'{"AP": [{"car": 1.0}, {"OVERALL": 1.0}]}', 'no AP50'),
    (b'{"AP": [{"car": "high"}, {"OVERALL": 1.0}], "AP50": [{}, '
     b'{"OVERALL": 1}], "AP75": [{}, {"OVERALL": 1}], '
     b'"AR100": [{}, {"OVERALL": 1}]}', "AP/car is 'high'"),
])
def test_corrupt_scores_json_is_refused(host, tmp_path, content, match):
    srv, _ = host
    (tmp_path / 'srv' / 'scores-test' / f'{NAME}.json').write_bytes(content)
    message = _one_line_refusal('scores-test', tmp_path, match)
    assert 'deleted' in message


@pytest.mark.parametrize('kind', ['preds', 'visuals'])
def test_truncated_zip_is_refused(host, tmp_path, kind):
    srv, published = host
    (tmp_path / 'srv' / kind / f'{NAME}.zip').write_bytes(
        published[kind][:len(published[kind]) * 2 // 3])
    _one_line_refusal(kind, tmp_path, 'not a readable zip')
    assert not zoo.predictions_dir(zoo.get_entry(NAME)).exists()


def test_zip_without_predictions_or_images_is_refused(host, tmp_path):
    srv, published = host
    empty = tmp_path / 'srv' / 'nothing'
    empty.mkdir()
    (empty / 'README.txt').write_text('no predictions here')
    zip_folder(empty, tmp_path / 'srv' / 'preds' / f'{NAME}.zip')
    _one_line_refusal('preds', tmp_path, 'no bitmasks/*.png with a score')
    zip_folder(empty, tmp_path / 'srv' / 'visuals' / f'{NAME}.zip')
    _one_line_refusal('visuals', tmp_path, 'lists no images')


def test_zip_member_outside_its_folder_is_refused(host, tmp_path):
    srv, published = host
    target = tmp_path / 'srv' / 'preds' / f'{NAME}.zip'
    with zipfile.ZipFile(target, 'a') as archive:
        archive.writestr('../escaped.png', b'x')
    _one_line_refusal('preds', tmp_path, 'points outside')
    assert not (tmp_path / 'cache' / 'escaped.png').exists()


@pytest.mark.parametrize('kind', zoo.KINDS)
@pytest.mark.parametrize('how', ['cut', 'silent'])
def test_dropped_connection_leaves_nothing(host, tmp_path, kind, how):
    srv, _ = host
    folder, ext, _ = zoo.ARTEFACTS[kind]
    srv.behaviour[f'{NAME}{ext}'] = how
    message = _one_line_refusal(kind, tmp_path, f'{NAME}{ext}')
    assert message.startswith('cannot download')


def test_cli_downloads_all_kinds_and_verify_covers_them(host, tmp_path,
                                                       capsys):
    srv, published = host
    tool = load_tool()
    assert tool.main(['download', 'mask_rcnn_r50_fpn_1x', '--what', 'all',
                      '--quiet']) == 0
    out = capsys.readouterr().out.splitlines()
    paths = [Path(line) for line in out if not line.startswith(' ')]
    assert [p.read_bytes() for p in paths] == [published[k]
                                               for k in zoo.KINDS]
    extracted = zoo.predictions_dir(zoo.get_entry(NAME))
    assert out[-2] == (f'  3 bitmasks in {extracted / "bitmasks"}, scores '
                       f'in {extracted / "score.json"}')
    assert tool.main(['verify']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(': ok (' in line for line in lines)
    # A damaged file of any kind is named.
    cached(tmp_path, 'scores-val').write_text('{"AP": ')
    cached(tmp_path, 'visuals').write_bytes(published['visuals'][:100])
    assert tool.main(['verify', NAME]) == 1
    lines = capsys.readouterr().out.splitlines()
    bad = [line for line in lines if ': ok (' not in line]
    assert len(bad) == 2
    assert 'scores-val' in bad[0] and 'not valid json' in bad[0]
    assert 'visuals' in bad[1] and 'not a readable zip' in bad[1]
    # Asked for explicitly, a missing kind is an error too.
    cached(tmp_path, 'scores-test').unlink()
    assert tool.main(['verify', NAME, '--what', 'scores-test']) == 1
    assert 'not downloaded' in capsys.readouterr().out


def test_cli_bad_download_is_one_line(host, tmp_path, capsys):
    srv, published = host
    (tmp_path / 'srv' / 'scores-val' / f'{NAME}.json').write_text('oops')
    tool = load_tool()
    assert tool.main(['download', NAME, '--what', 'scores-val,weights',
                      '--quiet']) == 2
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.splitlines() == [
        f'model_zoo.py: error: download: {srv.url}/scores-val/{NAME}.json: '
        'not valid '
        'json (Expecting value: line 1 column 1 (char 0)); the download was '
        'deleted (corrupt file or wrong mirror)']
    assert load_tool().main(['download', NAME, '--what', 'weights,scores'
                             ]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "model_zoo.py: error: download: unknown file kind 'scores': one of "
        'weights, scores-val, scores-test, preds, visuals or all']
    assert leftovers(tmp_path / 'cache') == []
    assert not cached(tmp_path, 'weights').exists()


def test_published_predictions_feed_vis_and_the_evaluator(
        host, scenes, tmp_path):
    """From the zip to overlays and to a score table, each one command on
    the extracted folder."""
    root, _ = scenes
    srv, _ = host
    tool = load_tool()
    assert tool.main(['download', NAME, '--what', 'preds', '--quiet']) == 0
    extracted = zoo.predictions_dir(zoo.get_entry(NAME))
    assert sorted(p.name for p in extracted.iterdir()) == [
        'bitmasks', 'score.json']
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, str(REPO / 'vis.py'), '-i', str(root / 'images'),
         '-c', str(extracted / 'bitmasks'), '--score-file',
         str(extracted / 'score.json'), '-o', str(tmp_path / 'vis'),
         '--nproc', '1'], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stems = sorted(p.stem for p in (root / 'images').iterdir())
    assert sorted(p.stem for p in (tmp_path / 'vis').iterdir()) == stems
    result = official_cli(root / 'gt', extracted, tmp_path / 'r.json')
    with open(result) as f:
        scores = json.load(f)
    assert scores['AP'][1]['OVERALL'] == pytest.approx(100.0)


def test_predictions_are_found_under_any_prefix():
    names = ['val/score.json', 'val/bitmasks/a.png', 'val/bitmasks/b.png',
             'test/score.json', 'test/c.png', 'test/d.png', 'test/e.png',
             'other/score.json', 'README']
    assert zoo.prediction_sets(names) == [
        ('test/score.json', 'test', 3), ('val/score.json', 'val/bitmasks', 2)]
    assert zoo.prediction_sets(['score.json', 'bitmasks/',
                                'bitmasks/a.png']) == [
        ('score.json', 'bitmasks', 1)]


def test_killed_extraction_is_redone(host, tmp_path):
    """A zip in the cache without its extracted folder (a run killed while
    extracting) is extracted on the next call, without a new transfer."""
    srv, _ = host
    zoo.fetch(NAME, 'preds', progress=False)
    extracted = zoo.predictions_dir(zoo.get_entry(NAME))
    import shutil
    shutil.rmtree(extracted)
    (extracted.parent / f'.{NAME}xyz.part').mkdir()  # the killed one's
    zoo.fetch(NAME, 'preds', progress=False)
    assert (extracted / 'score.json').is_file()
    assert srv.requests.count(f'{NAME}.zip') == 1
    assert leftovers(tmp_path / 'cache') == []
