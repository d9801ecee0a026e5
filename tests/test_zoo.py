"""The zoo catalogue, verified weight downloads and tools/model_zoo.py.

Downloads are served by a local HTTP server (127.0.0.1) from files the tests
write; nothing leaves the machine.
"""
import functools
import hashlib
import http.server
import os
import os.path as osp
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from bdd100k_ins_seg import zoo
from scripts import load_script

REPO = Path(__file__).resolve().parent.parent
NAME = 'mask_rcnn_r50_fpn_1x_ins_seg_bdd100k'
CONFIG = REPO / 'configs' / 'ins_seg' / f'{NAME}.py'

# The original zoo's table: mask AP val, box AP val, mask AP test, box AP test,
# batch size, schedule, MS-train as the table marks it.
PUBLISHED = {
    'mask_rcnn_r50_fpn_1x': (16.24, 22.34, 14.86, 19.59, 16, '1x', False),
    'mask_rcnn_r50_fpn_3x': (19.88, 25.93, 17.46, 22.32, 16, '3x', True),
    'mask_rcnn_r101_fpn_3x': (20.51, 26.08, 17.88, 22.01, 16, '3x', True),
    'mask_rcnn_r50_fpn_1x_32bs': (16.15, 21.54, 14.90, 19.24, 32, '1x', False),
    'mask_rcnn_r50_fpn_3x_32bs': (20.20, 26.14, 17.60, 22.03, 32, '3x', True),
    'mask_rcnn_r101_fpn_3x_32bs': (20.48, 25.70, 17.71, 21.94, 32, '3x', True),
    'cascade_mask_rcnn_r50_fpn_1x': (18.63, 25.97, 15.89, 21.55, 16, '1x',
                                     False),
    'cascade_mask_rcnn_r50_fpn_3x': (19.43, 25.26, 16.18, 20.46, 16, '3x',
                                     True),
    'cascade_mask_rcnn_r101_fpn_3x': (19.79, 24.79, 16.65, 20.63, 16, '3x',
                                      True),
    'cascade_mask_rcnn_r50_fpn_1x_32bs': (17.67, 25.67, 15.73, 21.40, 32,
                                          '1x', False),
    'cascade_mask_rcnn_r50_fpn_3x_32bs': (18.58, 24.63, 16.34, 20.75, 32,
                                          '3x', True),
    'mask_rcnn_r50_fpn_dconv_1x': (17.72, 23.37, 15.80, 20.73, 16, '1x',
                                   False),
    'mask_rcnn_r50_fpn_dconv_3x': (20.89, 27.17, 18.29, 22.88, 16, '3x', True),
    'mask_rcnn_r101_fpn_dconv_3x': (20.98, 25.99, 18.74, 22.73, 16, '3x',
                                    True),
    'mask_rcnn_r50_fpn_dconv_1x_32bs': (17.50, 23.16, 15.53, 20.66, 32, '1x',
                                        False),
    'mask_rcnn_r50_fpn_dconv_3x_32bs': (20.72, 27.51, 18.40, 22.80, 32, '3x',
                                        True),
    'mask_rcnn_r101_fpn_dconv_3x_32bs': (20.91, 25.87, 18.60, 22.83, 32, '3x',
                                         True),
    'gcnet_mask_rcnn_r50_fpn_1x': (16.12, 22.41, 14.96, 19.43, 16, '1x',
                                   False),
    'gcnet_mask_rcnn_r50_fpn_3x': (20.07, 26.34, 17.82, 22.26, 16, '3x', True),
    'gcnet_mask_rcnn_r101_fpn_3x': (20.77, 26.27, 17.76, 22.21, 16, '3x',
                                    True),
    'mask_rcnn_hrnetv2p_w18_1x': (16.54, 22.97, 14.62, 19.81, 16, '1x', False),
    'mask_rcnn_hrnetv2p_w18_3x': (21.28, 27.53, 17.74, 22.98, 16, '3x', True),
    'mask_rcnn_hrnetv2p_w32_1x': (18.69, 24.75, 16.35, 21.52, 16, '1x', False),
    'mask_rcnn_hrnetv2p_w32_3x': (22.45, 28.16, 18.76, 23.48, 16, '3x', True),
    'mask_rcnn_hrnetv2p_w40_1x': (19.65, 25.46, 16.64, 21.98, 16, '1x', False),
    'mask_rcnn_hrnetv2p_w40_3x': (22.57, 28.17, 19.38, 24.37, 16, '3x', True),
}
HOST = 'https://dl.cv.ethz.ch/bdd100k/ins_seg/models/'


def load_tool():
    """tools/model_zoo.py as a module (its main() returns the exit code)."""
    return load_script('tools/model_zoo.py', 'model_zoo_tool')


# --- catalogue ---------------------------------------------------------------

def test_catalogue_holds_the_published_table():
    catalogue = zoo.load_catalogue()
    assert list(catalogue) == [n + '_ins_seg_bdd100k' for n in PUBLISHED]
    for short, (mask_val, box_val, mask_test, box_test, batch, schedule,
                ms_in_table) in PUBLISHED.items():
        entry = catalogue[short + '_ins_seg_bdd100k']
        assert entry.results == {('val', 'mask'): mask_val,
                                 ('val', 'box'): box_val,
                                 ('test', 'mask'): mask_test,
                                 ('test', 'box'): box_test}, short
        assert (entry.batch_size, entry.lr_schedule, entry.epochs) == \
            (batch, schedule, 12 if schedule == '1x' else 36)
        assert entry.weights_url == HOST + entry.name + '.pth'
        assert entry.md5_url == HOST + entry.name + '.md5'
        assert entry.config == f'configs/ins_seg/{entry.name}.py'
        assert entry.metadata['Training Data'] == 'BDD100K'
        # Cascade 3x: trained single-scale although the table says MS.
        cascade_3x = short.startswith('cascade') and schedule == '3x'
        assert entry.ms_train == (ms_in_table and not cascade_3x)
        assert entry.metadata.get('MS-train in original table',
                                  entry.ms_train) == ms_in_table


# --- the published links, against the original table -----------------------

# The original table (shared/reference/original-model-zoo.md beside the
# checkout, or beside a folder above it, as for a git worktree) and a
# verbatim copy of its 26 result rows kept with the tests, so that a checkout
# without it still checks every link; the copy is compared with the original
# wherever the original is present.
_REFERENCE = Path('shared', 'reference', 'original-model-zoo.md')
SHARED_TABLE = next((folder / _REFERENCE for folder in REPO.parents
                     if (folder / _REFERENCE).is_file()),
                    REPO.parent / _REFERENCE)
ROWS_COPY = REPO / 'tests' / 'data' / 'original_zoo_rows.md'
# The original zoo's README, as published.
ORIGINAL_COPY = REPO / 'tests' / 'data' / 'original-model-zoo.md'
_ROW_CONFIG = re.compile(r'\(\./configs/ins_seg/(\w+)\.py\)')
_LINK = re.compile(
    r'\[(scores|model|MD5|preds|visuals)\]\((https?://[^)\s]+)\)')
# Link texts of a row in table order -> artefact kinds (the first "scores"
# is val, the second test).
_ROW_KINDS = ('scores-val', 'scores-test', 'weights', 'md5', 'preds',
              'visuals')


def _result_rows(text, config_prefix='./'):
    return [line for line in text.splitlines() if line.startswith('| ')
            and f']({config_prefix}configs/ins_seg/' in line]


def _row_links(row):
    texts, urls = zip(*_LINK.findall(row))
    assert texts == ('scores', 'scores', 'model', 'MD5', 'preds',
                     'visuals'), row
    return dict(zip(_ROW_KINDS, urls))


def _original_links():
    rows = _result_rows(ROWS_COPY.read_text(encoding='utf-8'))
    assert len(rows) == 26
    return {_ROW_CONFIG.search(row).group(1): _row_links(row)
            for row in rows}


def test_committed_rows_are_the_original_table_verbatim():
    """The rows the link tests read are the original README's, verbatim:
    checked against the committed copy of that README, and against the
    reference beside the checkout too where there is one."""
    original = _result_rows(ORIGINAL_COPY.read_text(encoding='utf-8'))
    assert original == _result_rows(ROWS_COPY.read_text(encoding='utf-8'))
    if SHARED_TABLE.is_file():
        assert SHARED_TABLE.read_text(encoding='utf-8') == \
            ORIGINAL_COPY.read_text(encoding='utf-8')


def test_every_published_link_equals_the_original_table():
    """26 models x 6 links, in the metafile (as written) and in the README
    tables (as linked), equal the original table's."""
    original = _original_links()
    with open(zoo.METAFILE, encoding='utf-8') as f:
        models = yaml.safe_load(f)['Models']
    assert [m['Name'] for m in models] == list(original)
    for model in models:
        for kind, url in original[model['Name']].items():
            assert model[zoo.ARTEFACTS[kind][2]] == url, (model['Name'], kind)
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    rows = _result_rows(readme, config_prefix='')
    linked = {_ROW_CONFIG.search('(./' + row.split('](', 1)[1].split(
        ')', 1)[0] + ')').group(1): _row_links(row) for row in rows}
    assert linked == original
    # And the layout the code derives them from agrees.
    for name, links in original.items():
        assert links == {k: zoo.published_url(k, name) for k in _ROW_KINDS}


def test_metafile_url_off_the_layout_is_refused(tmp_path):
    text = zoo.METAFILE.read_text(encoding='utf-8')
    bad = tmp_path / 'metafile.yml'
    bad.write_text(text.replace('/scores-test/mask_rcnn_r50_fpn_3x_',
                                '/scores_test/mask_rcnn_r50_fpn_3x_', 1))
    with pytest.raises(zoo.ZooError) as error:
        zoo.load_catalogue(bad)
    message = str(error.value)
    assert "'mask_rcnn_r50_fpn_3x_ins_seg_bdd100k': Scores test is " \
        'https://dl.cv.ethz.ch/bdd100k/ins_seg/scores_test/' in message
    assert '\n' not in message


def test_model_index_imports_the_metafile():
    with open(REPO / 'model-index.yml') as f:
        index = yaml.safe_load(f)
    assert index == {'Import': ['configs/ins_seg/metafile.yml']}
    with open(REPO / index['Import'][0]) as f:
        metafile = yaml.safe_load(f)
    collections = {c['Name'] for c in metafile['Collections']}
    assert {m['In Collection'] for m in metafile['Models']} == collections


def test_readme_table_is_generated_from_the_metafile():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    tables = zoo.render_tables()
    assert zoo.replace_table(readme, tables) == readme, (
        'README model table out of date: python tools/model_zoo.py readme')
    # Every model appears with its numbers, config and weight links.
    for entry in zoo.load_catalogue().values():
        row = next(line for line in tables.splitlines()
                   if f']({entry.config})' in line)
        for value in entry.results.values():
            assert f' {value:.2f} ' in row
        assert entry.weights_url in row and entry.md5_url in row


def test_readme_check_fails_on_a_changed_number(tmp_path, monkeypatch,
                                                capsys):
    readme = tmp_path / 'README.md'
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    readme.write_text(text.replace('| 16.24 |', '| 16.42 |', 1))
    monkeypatch.setattr(zoo, 'REPO_ROOT', tmp_path)
    tool = load_tool()
    assert tool.main(['readme', '--check']) == 1
    assert 'differs from' in capsys.readouterr().err
    assert tool.main(['readme']) == 0
    assert readme.read_text() == text
    assert tool.main(['readme', '--check']) == 0


def test_names_resolve_with_or_without_suffix():
    assert zoo.get_entry('mask_rcnn_r50_fpn_1x').name == NAME
    assert zoo.get_entry(NAME + '.pth').name == NAME
    assert zoo.entry_for_config(str(CONFIG)).name == NAME


def test_unknown_name_and_foreign_config_are_refused():
    with pytest.raises(zoo.UnknownModelError) as error:
        zoo.get_entry('mask_rcnn_r152_fpn_1x')
    message = str(error.value)
    assert "'mask_rcnn_r152_fpn_1x'" in message and 'model_zoo.py list' in \
        message and '\n' not in message
    with pytest.raises(zoo.UnknownModelError, match='not in the model zoo'):
        zoo.checkpoint_for_config('configs/sample/my_model.py')


def test_model_names_stand_for_their_configs(tmp_path, monkeypatch):
    """Wherever a config path is taken, a zoo name (full or short, with or
    without .py) or the demo's sample model name stands for its config; a
    relative path of the repository works from another folder."""
    monkeypatch.chdir(tmp_path)
    assert zoo.resolve_config('mask_rcnn_r50_fpn_1x') == str(CONFIG)
    assert zoo.resolve_config('mask_rcnn_r50_fpn_1x.py') == str(CONFIG)
    assert zoo.resolve_config(NAME) == str(CONFIG)
    assert zoo.resolve_config(f'configs/ins_seg/{NAME}.py') == str(CONFIG)
    sample = REPO / 'configs' / 'sample' / 'mask_rcnn_r18_fpn_sample.py'
    assert zoo.resolve_config('mask_rcnn_r18_fpn_sample') == str(sample)
    own = tmp_path / 'mask_rcnn_r50_fpn_1x.py'  # a file wins over a name
    own.write_text('x = 1\n')
    assert zoo.resolve_config('mask_rcnn_r50_fpn_1x.py') == \
        'mask_rcnn_r50_fpn_1x.py'
    assert zoo.entry_for_config('mask_rcnn_r50_fpn_3x').name == \
        'mask_rcnn_r50_fpn_3x_ins_seg_bdd100k'


def test_unknown_config_names_the_closest_models():
    with pytest.raises(zoo.UnknownModelError) as error:
        zoo.resolve_config('mask_rcnn_r50_fpn_4x')
    message = str(error.value)
    assert message.startswith('not found, nor a model name (closest: '
                              'mask_rcnn_r50_fpn_3x, mask_rcnn_r50_fpn_1x')
    assert 'model_zoo.py list' in message and '\n' not in message
    with pytest.raises(zoo.UnknownModelError) as error:
        zoo.resolve_config('configs/ins_seg/mask_rcnn_r50_fpn_3x.py')
    assert str(error.value).startswith(
        'not found; the closest model names, which stand for their '
        'configs: mask_rcnn_r50_fpn_3x, ')
    with pytest.raises(zoo.UnknownModelError) as error:
        zoo.get_entry('mask_rcnn_r18_sample')
    assert '(closest: mask_rcnn_r18_fpn_sample' in str(error.value)
    with pytest.raises(zoo.UnknownModelError, match='^not found$'):
        zoo.resolve_config('/no/such/folder/nope.py')


def test_sample_model_is_local_not_published(tmp_path, monkeypatch):
    """The sample model resolves to the checkpoint `make demo` trains
    (where tools/demo.py writes it), is no published model (26 of them,
    no README row) and has no published files to download."""
    from mmengine.config import Config
    local = zoo.LOCAL_MODELS['mask_rcnn_r18_fpn_sample']
    demo = load_script('tools/demo.py', 'demo_tool')
    max_iters = Config.fromfile(local.config_path).train_cfg.max_iters
    assert local.checkpoint == osp.join(
        demo.parse_args([]).work_dir, f'iter_{max_iters}.pth')
    assert local.config == demo.CONFIG
    catalogue = zoo.load_catalogue()
    assert len(catalogue) == 26 and local.name not in catalogue
    assert local.name not in zoo.render_tables()
    with pytest.raises(zoo.UnknownModelError, match='make demo'):
        zoo.get_entry(local.name)
    # Before the demo ran: say which command makes the checkpoint; after:
    # the checkpoint.
    checkpoint = tmp_path / 'iter_650.pth'
    monkeypatch.setitem(zoo.LOCAL_MODELS, local.name, zoo.LocalModel(
        local.name, local.config, str(checkpoint), local.made_by))
    with pytest.raises(zoo.ZooError, match='run `make demo` first'):
        zoo.checkpoint_for_config(local.config_path)
    checkpoint.write_bytes(b'weights')
    for spec in (local.name, local.config_path):
        assert zoo.checkpoint_for_config(spec) == str(checkpoint)
    # A copy of the config elsewhere is another model: no local weights.
    copy = tmp_path / 'mask_rcnn_r18_fpn_sample.py'
    copy.write_text('x = 1\n')
    assert zoo.local_checkpoint(str(copy)) is None


def test_metafile_with_a_missing_field_is_reported(tmp_path):
    bad = tmp_path / 'metafile.yml'
    bad.write_text('Models:\n  - Name: broken\n    Config: x.py\n')
    with pytest.raises(zoo.ZooError, match="'broken'.*Metadata"):
        zoo.load_catalogue(bad)


# --- downloads ---------------------------------------------------------------

class _Server:
    """A local HTTP server for a folder, counting requests per file."""

    def __init__(self, root):
        self.root = root
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path.rsplit('/', 1)[-1])
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ('127.0.0.1', 0), functools.partial(Handler, directory=root))
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/models'
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights(tmp_path):
    """Fake published weights in <tmp>/srv/models, their MD5 beside them."""
    folder = tmp_path / 'srv' / 'models'
    folder.mkdir(parents=True)
    payload = os.urandom(300_000)
    (folder / f'{NAME}.pth').write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    (folder / f'{NAME}.md5').write_text(f'{md5}  {NAME}.pth\n')
    return folder, payload


@pytest.fixture
def server(weights, tmp_path, monkeypatch):
    srv = _Server(tmp_path / 'srv')
    monkeypatch.setenv(zoo.MIRROR_ENV, srv.url)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
    yield srv
    srv.close()


def _cache_files(tmp_path):
    cache = tmp_path / 'cache'
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_through_mirror_verifies_and_is_not_repeated(
        server, weights, tmp_path):
    _, payload = weights
    path = zoo.checkpoint_for_config(str(CONFIG), progress=False)
    assert Path(path) == tmp_path / 'cache' / f'{NAME}.pth'
    assert Path(path).read_bytes() == payload
    assert server.requests == [f'{NAME}.md5', f'{NAME}.pth']
    assert _cache_files(tmp_path) == [f'{NAME}.md5', f'{NAME}.pth']

    # Verified: neither file is fetched again, even with the host gone.
    server.close()
    assert zoo.checkpoint_for_config(str(CONFIG), progress=False) == path
    assert server.requests == [f'{NAME}.md5', f'{NAME}.pth']
    assert zoo.verify(NAME)[0] == 'ok'


def test_checksum_mismatch_is_refused_and_leaves_nothing(
        server, weights, tmp_path):
    folder, _ = weights
    (folder / f'{NAME}.md5').write_text('0' * 32 + f'  {NAME}.pth\n')
    with pytest.raises(zoo.ChecksumError) as error:
        zoo.download(NAME, progress=False)
    assert NAME in str(error.value) and '0' * 32 in str(error.value)
    assert _cache_files(tmp_path) == []  # no partial, no cached bad MD5


def test_damaged_cached_file_is_fetched_again(server, weights, tmp_path):
    _, payload = weights
    path = Path(zoo.download(NAME, progress=False))
    path.write_bytes(payload[:1000])  # truncated on disk
    assert zoo.verify(NAME)[0] == 'mismatch'
    assert Path(zoo.download(NAME, progress=False)).read_bytes() == payload
    assert server.requests.count(f'{NAME}.pth') == 2


def test_missing_file_on_the_host_is_a_clean_error(server, weights, tmp_path):
    folder, _ = weights
    (folder / f'{NAME}.pth').unlink()
    with pytest.raises(zoo.ZooError, match='HTTP 404') as error:
        zoo.download(NAME, progress=False)
    assert zoo.MIRROR_ENV in str(error.value)
    assert _cache_files(tmp_path) == []


def test_local_folder_mirror_and_local_file(weights, tmp_path, monkeypatch):
    folder, payload = weights
    monkeypatch.setenv(zoo.MIRROR_ENV, str(folder))  # a plain folder
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
    assert Path(zoo.resolve_weights(NAME, progress=False)).read_bytes() == \
        payload
    # A local file is used as it is, checked against a .md5 beside it.
    local = folder / f'{NAME}.pth'
    assert zoo.resolve_weights(str(local)) == str(local)
    (folder / f'{NAME}.md5').write_text('f' * 32)
    with pytest.raises(zoo.ChecksumError, match='differs'):
        zoo.resolve_weights(str(local))
    with pytest.raises(zoo.ZooError, match='not found'):
        zoo.resolve_weights(str(tmp_path / 'nowhere.pth'))


def test_cli_download_and_verify(server, weights, tmp_path, capsys):
    tool = load_tool()
    assert tool.main(['download', 'mask_rcnn_r50_fpn_1x', '--quiet']) == 0
    assert capsys.readouterr().out.strip() == \
        str(tmp_path / 'cache' / f'{NAME}.pth')
    assert tool.main(['verify']) == 0
    assert f'{NAME}: ok' in capsys.readouterr().out
    (tmp_path / 'cache' / f'{NAME}.pth').write_bytes(b'damaged')
    assert tool.main(['verify', NAME]) == 1
    assert 'differs from the published' in capsys.readouterr().out


def test_cli_unknown_name_exits_with_one_line():
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'model_zoo.py'), 'download',
         'no_such_model'], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines()
              if 'error:' in line]
    assert errors == ["model_zoo.py: error: download: "
                      "unknown model 'no_such_model'; "
                      '`python tools/model_zoo.py list` shows the names']
    assert result.stdout == ''


def test_cli_list(capsys):
    tool = load_tool()
    assert tool.main(['list']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 26
    assert lines[1].split()[:4] == [NAME, '12', '16', 'no']


def test_non_base_mmdet_configs_still_resolve(tmp_path):
    """The fast ``mmdet::_base_`` lookup leaves other mmdet paths alone."""
    from mmengine.config import Config
    leaf = tmp_path / 'leaf.py'
    leaf.write_text("_base_ = 'mmdet::dcn/mask-rcnn_r50-dconv-c3-c5_fpn_1x_"
                    "coco.py'\n")
    cfg = Config.fromfile(str(leaf))
    assert cfg.model.backbone.dcn.type == 'DCN'
    assert cfg.train_dataloader.dataset.type == 'CocoDataset'


def test_dropped_connection_is_a_clean_error_and_leaks_nothing(
        weights, tmp_path, monkeypatch):
    """A host that drops the connection (no answer, or a body shorter than
    its Content-Length) gives a ZooError naming the URL; no partial file and
    no open file descriptor is left behind."""
    folder, payload = weights

    class Dropping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.rsplit('/', 1)[-1]
            body = (folder / name).read_bytes()
            if name.endswith('.pth') and Dropping.silent:
                self.close_connection = True  # hang up without a word
                return
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            # the .md5 arrives whole; the weights are cut short
            self.wfile.write(body if name.endswith('.md5') else body[:5000])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Dropping)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv(zoo.MIRROR_ENV,
                       f'http://127.0.0.1:{httpd.server_address[1]}/models')
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / 'cache'))
    fds_before = len(os.listdir('/proc/self/fd'))
    try:
        for silent in (True, True, True, False):
            Dropping.silent = silent
            with pytest.raises(zoo.ZooError, match=f'{NAME}.pth'):
                zoo.download(NAME, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not any(p.suffix == '.part' for p in (tmp_path / 'cache').iterdir())
    assert not (tmp_path / 'cache' / f'{NAME}.pth').exists()
    assert len(os.listdir('/proc/self/fd')) <= fds_before
