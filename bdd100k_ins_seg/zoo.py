"""The model zoo catalogue and its published weights.

The catalogue is ``configs/ins_seg/metafile.yml`` (OpenMMLab model-index
format): one entry per published model, whose name is both the config stem
and the weight file stem. Weights are fetched on demand:

* from ``https://dl.cv.ethz.ch/bdd100k/ins_seg/models/<name>.pth``, or from
  the base URL (or local folder) in ``$BDD100K_INS_SEG_MIRROR``, because the
  original host is not always reachable;
* into ``~/.cache/bdd100k_ins_seg/checkpoints`` (``$BDD100K_INS_SEG_CACHE``);
* through a temporary file that is renamed into place only after its MD5
  equals the published one (the ``.md5`` file next to the ``.pth``). A file
  that fails the check is deleted and an error raised; a verified file is
  never downloaded again.

The README's model table is generated from the same catalogue
(:func:`render_tables`, ``python tools/model_zoo.py readme``). This module
itself imports neither torch nor mmdet (only :func:`count_parameters` does).
"""
import hashlib
import http.client
import os
import os.path as osp
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
METAFILE_NAME = 'configs/ins_seg/metafile.yml'
METAFILE = REPO_ROOT / METAFILE_NAME
CACHE_ENV = 'BDD100K_INS_SEG_CACHE'
MIRROR_ENV = 'BDD100K_INS_SEG_MIRROR'
DEFAULT_CACHE = '~/.cache/bdd100k_ins_seg/checkpoints'
NAME_SUFFIX = '_ins_seg_bdd100k'  # every published name ends with it
LIST_HINT = '`python tools/model_zoo.py list` shows the names'

_CHUNK = 1 << 20  # bytes per read while downloading / hashing
_TIMEOUT_S = 60


class ZooError(RuntimeError):
    """A model zoo request that cannot be served (message is one line)."""


class UnknownModelError(ZooError):
    """A model name or config that is not in the catalogue."""


class ChecksumError(ZooError):
    """A weight file whose MD5 differs from the published one."""


@dataclass(frozen=True)
class ZooEntry:
    """One published model of the catalogue.

    ``results`` maps ``(split, kind)`` to the published AP (x100), with
    split in ``('val', 'test')`` and kind in ``('mask', 'box')``.
    """
    name: str
    collection: str
    config: str  # path relative to the repository root
    weights_url: str
    md5_url: str
    backbone: str
    lr_schedule: str  # '1x' or '3x'
    epochs: int
    batch_size: int  # total images per iteration over all GPUs
    ms_train: bool
    parameters: int
    results: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # the raw Metadata block

    @property
    def config_path(self):
        """Absolute path of the config file."""
        return str(REPO_ROOT / self.config)

    @property
    def weights_filename(self):
        return self.name + '.pth'


_TASK_KINDS = {'Instance Segmentation': 'mask', 'Object Detection': 'box'}


def _parse_entry(model, metafile):
    name = model.get('Name', '?')
    try:
        meta = model['Metadata']
        results = {}
        for result in model['Results']:
            kind = _TASK_KINDS[result['Task']]
            split = result['Dataset'].split()[-1]
            results[(split, kind)] = float(result['Metrics'][f'{kind} AP'])
        return ZooEntry(
            name=name,
            collection=model['In Collection'],
            config=model['Config'],
            weights_url=model['Weights'],
            md5_url=model['Weights MD5'],
            backbone=str(meta['Backbone']),
            lr_schedule=str(meta['Lr schd']),
            epochs=int(meta['Epochs']),
            batch_size=int(meta['Batch Size']),
            ms_train=bool(meta['MS-train']),
            parameters=int(meta['Parameters']),
            results=results,
            metadata=dict(meta))
    except (KeyError, TypeError, ValueError) as e:
        raise ZooError(f'{metafile}: model {name!r} has a missing or bad '
                       f'field ({type(e).__name__}: {e})') from None


def load_catalogue(metafile=None):
    """Read the catalogue.

    Args:
        metafile (str | Path, optional): defaults to
            ``configs/ins_seg/metafile.yml`` of this repository.

    Returns:
        dict[str, ZooEntry]: entries by model name, in metafile order.
    """
    metafile = Path(metafile or METAFILE)
    try:
        with open(metafile, encoding='utf-8') as f:
            index = yaml.safe_load(f)
    except OSError as e:
        raise ZooError(f'cannot read the model catalogue {metafile}: '
                       f'{e.strerror}') from None
    catalogue = {}
    for model in (index or {}).get('Models') or []:
        entry = _parse_entry(model, metafile)
        if entry.name in catalogue:
            raise ZooError(f'{metafile}: model {entry.name!r} is listed '
                           'twice')
        catalogue[entry.name] = entry
    return catalogue


def collections(metafile=None):
    """The ``Collections`` block of the metafile: {name: dict}."""
    with open(Path(metafile or METAFILE), encoding='utf-8') as f:
        index = yaml.safe_load(f)
    return {c['Name']: c for c in index.get('Collections', [])}


def get_entry(name, catalogue=None):
    """The catalogue entry of a model name.

    Accepts the full name, the name without ``_ins_seg_bdd100k`` (as the
    README table shows it) and ``<name>.py`` / ``<name>.pth``.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue()
    stem = osp.splitext(osp.basename(name))[0] if name.endswith(
        ('.py', '.pth')) else name
    for candidate in (stem, stem + NAME_SUFFIX):
        if candidate in catalogue:
            return catalogue[candidate]
    raise UnknownModelError(f'unknown model {name!r}; {LIST_HINT}')


def entry_for_config(config_path, catalogue=None):
    """The entry whose config has the file name of ``config_path``."""
    catalogue = catalogue if catalogue is not None else load_catalogue()
    stem = osp.splitext(osp.basename(str(config_path)))[0]
    if stem not in catalogue:
        raise UnknownModelError(
            f'config {config_path} is not in the model zoo catalogue '
            f'({METAFILE_NAME}), so it has no published '
            'weights; pass a checkpoint file explicitly')
    return catalogue[stem]


def cache_dir():
    """Folder for downloaded weights (``$BDD100K_INS_SEG_CACHE``)."""
    return Path(osp.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def _mirrored(url):
    """``url`` with its folder replaced by ``$BDD100K_INS_SEG_MIRROR``.

    The mirror is a base URL (``https://...``, ``file://...``) or a local
    folder holding the same file names.
    """
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    if not mirror:
        return url
    filename = url.rsplit('/', 1)[-1]
    if '://' not in mirror:
        return Path(osp.abspath(osp.expanduser(mirror)), filename).as_uri()
    return mirror.rstrip('/') + '/' + filename


def file_md5(path):
    """Hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _open_url(url):
    try:
        return urllib.request.urlopen(url, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        reason = f'HTTP {e.code} {e.reason}'
    except (urllib.error.URLError, OSError) as e:
        reason = str(getattr(e, 'reason', e))
    raise ZooError(f'cannot download {url}: {reason} (set {MIRROR_ENV} to '
                   'a mirror URL or folder, or pass a local file)')


def _parse_md5(text, url):
    match = re.search(r'\b[0-9a-fA-F]{32}\b', text)
    if not match:
        raise ZooError(f'{url} holds no MD5 checksum')
    return match.group(0).lower()


def _md5_cache_path(entry):
    return cache_dir() / (entry.name + '.md5')


def expected_md5(entry, download=True):
    """The published MD5 of an entry's weights.

    Read from ``<cache>/<name>.md5`` once a download has been verified (so
    later checks work offline), else from the ``.md5`` URL. Returns None
    when it is not cached and ``download`` is False.
    """
    cached = _md5_cache_path(entry)
    if cached.is_file():
        return _parse_md5(cached.read_text(errors='replace'), cached)
    if not download:
        return None
    url = _mirrored(entry.md5_url)
    with _open_url(url) as response:
        text = response.read(4096).decode('utf-8', errors='replace')
    return _parse_md5(text, url)


def _remember_md5(entry, md5):
    """Cache the MD5 of a verified file (never one that failed)."""
    cached = _md5_cache_path(entry)
    if not cached.is_file():
        _atomic_write_text(cached, f'{md5}  {entry.weights_filename}\n')


def _atomic_write_text(path, text):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.' + path.name)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _download_verified(url, dest, md5, progress=True):
    """Stream ``url`` to a temporary file, check its MD5, rename to dest."""
    from tqdm import tqdm
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix='.' + dest.name,
                               suffix='.part')
    out = os.fdopen(fd, 'wb')  # owns fd from here on, closed in any case
    digest = hashlib.md5()
    try:
        with out, _open_url(url) as response:
            total = int(response.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True,
                      unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b''):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f'{url}: MD5 {digest.hexdigest()} differs from the published '
                f'{md5}; the download was deleted (corrupt file or wrong '
                'mirror)')
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:
        # Connection reset, timeout, truncated body, full disk, ...
        _remove(tmp)
        if isinstance(e, ZooError):
            raise
        raise ZooError(f'cannot download {url}: {e}') from None
    except BaseException:
        _remove(tmp)
        raise
    return dest


def download(name, progress=True):
    """Local path of a model's verified published weights.

    Downloads them (with a progress bar) unless the cache already holds a
    file whose MD5 equals the published one.

    Args:
        name (str): catalogue name (config stem).
        progress (bool): show a tqdm progress bar.

    Returns:
        Path: ``<cache>/<name>.pth``.

    Raises:
        UnknownModelError: ``name`` is not in the catalogue.
        ChecksumError: the downloaded file does not match the published MD5.
        ZooError: the weights or the MD5 cannot be downloaded.
    """
    entry = get_entry(name)
    md5 = expected_md5(entry)
    dest = cache_dir() / entry.weights_filename
    if not (dest.is_file() and file_md5(dest) == md5):
        # Missing, or a damaged / foreign file where ours belongs.
        _remove(dest)
        _download_verified(_mirrored(entry.weights_url), dest, md5,
                           progress=progress)
    _remember_md5(entry, md5)
    return dest


def verify(name):
    """Check the cached weights of a model against the published MD5.

    Returns:
        tuple[str, str]: status (``'ok'``, ``'mismatch'``, ``'missing'``)
        and a one-line message. Never downloads the weights (only the small
        ``.md5`` file when it is not cached yet).
    """
    entry = get_entry(name)
    dest = cache_dir() / entry.weights_filename
    if not dest.is_file():
        return 'missing', f'{entry.name}: not downloaded ({dest})'
    md5 = expected_md5(entry)
    actual = file_md5(dest)
    if actual != md5:
        return 'mismatch', (f'{entry.name}: MD5 {actual} of {dest} differs '
                            f'from the published {md5}')
    _remember_md5(entry, md5)
    return 'ok', f'{entry.name}: ok ({dest})'


def resolve_weights(name_or_path, progress=True):
    """A local weights file for a model name, a local path or a URL.

    * an existing file is returned as is (checked against a ``<stem>.md5``
      next to it when there is one);
    * a catalogue name (or ``<name>.pth``) is downloaded and verified;
    * an http(s) URL whose file name is a catalogue model is fetched through
      the catalogue (so its MD5 is checked).
    """
    spec = str(name_or_path)
    if osp.isfile(osp.expanduser(spec)):
        path = osp.expanduser(spec)
        sibling = osp.splitext(path)[0] + '.md5'
        if osp.isfile(sibling):
            with open(sibling, errors='replace') as f:
                md5 = _parse_md5(f.read(), sibling)
            if file_md5(path) != md5:
                raise ChecksumError(
                    f'{path}: MD5 differs from the one in {sibling}')
        return path
    if '://' in spec:
        spec = urllib.parse.urlparse(spec).path.rsplit('/', 1)[-1]
    elif os.sep in spec or (spec.endswith('.pth')
                            and spec[:-4] not in load_catalogue()):
        # Looks like a path rather than a model name.
        raise ZooError(f'checkpoint file not found: {spec}')
    return str(download(spec, progress=progress))


def checkpoint_for_config(config_path, progress=True):
    """Local path of the verified published weights of a zoo config.

    Args:
        config_path (str): a config whose file name is a catalogue model
            (``configs/ins_seg/<name>.py``).

    Returns:
        str: path under the cache folder, downloaded if needed.
    """
    entry = entry_for_config(config_path)
    return str(download(entry.name, progress=progress))


def count_parameters(config_path):
    """Number of parameters of the model a config builds (nothing loaded).

    Imports mmdet (and registers this package's modules) on first use.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import bdd100k_ins_seg  # noqa: F401  (ops before mmdet.models)
    from mmdet.registry import MODELS
    cfg = Config.fromfile(config_path)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)  # weights stay uninitialised: no I/O
    return sum(p.numel() for p in model.parameters())


# --- README table ----------------------------------------------------------

TABLE_BEGIN = '<!-- zoo:table -->'
TABLE_END = '<!-- /zoo:table -->'
_CASCADE_MS_NOTE = (
    '† The original table marks this model MS-train, but the config that '
    'produced the published weights trained at a single scale; so does ours.')


def short_name(name):
    """The name without ``_ins_seg_bdd100k``."""
    return name[:-len(NAME_SUFFIX)] if name.endswith(NAME_SUFFIX) else name


def _ms_cell(entry):
    if entry.metadata.get('MS-train in original table', entry.ms_train) \
            != entry.ms_train:
        return ('✓' if entry.ms_train else '–') + ' †'
    return '✓' if entry.ms_train else ''


def render_tables(catalogue=None, metafile=None):
    """The README model tables (markdown), one per collection.

    Returns:
        str: the text that belongs between :data:`TABLE_BEGIN` and
        :data:`TABLE_END`, ending with a newline.
    """
    catalogue = catalogue if catalogue is not None else load_catalogue(
        metafile)
    papers = collections(metafile)
    by_collection = {}
    for entry in catalogue.values():
        by_collection.setdefault(entry.collection, []).append(entry)
    header = ('| Model | Backbone | Batch | Lr schd | MS-train | Mask AP val '
              '| Box AP val | Mask AP test | Box AP test | Params | Weights |')
    out = []
    for coll, entries in by_collection.items():
        paper = papers.get(coll, {}).get('Paper', {})
        title = f'### {coll}'
        if paper.get('URL'):
            title += f' ([paper]({paper["URL"]}))'
        out += [title, '', header, '|' + ' :-: |' * 11]
        notes = set()
        for e in entries:
            ms = _ms_cell(e)
            if '†' in ms:
                notes.add(_CASCADE_MS_NOTE)
            gpus = 8  # every published model: 8 GPUs
            out.append(
                f'| [{short_name(e.name)}]({e.config}) | {e.backbone} '
                f'| {e.batch_size} ({gpus}x{e.batch_size // gpus}) '
                f'| {e.lr_schedule} ({e.epochs} ep) | {ms} '
                f'| {e.results[("val", "mask")]:.2f} '
                f'| {e.results[("val", "box")]:.2f} '
                f'| {e.results[("test", "mask")]:.2f} '
                f'| {e.results[("test", "box")]:.2f} '
                f'| {e.parameters / 1e6:.1f}M '
                f'| [model]({e.weights_url}) \\| [MD5]({e.md5_url}) |')
        out.append('')
        for note in sorted(notes):
            out += [note, '']
    return '\n'.join(out)


def replace_table(readme_text, tables):
    """``readme_text`` with the text between the table markers replaced."""
    begin = readme_text.find(TABLE_BEGIN)
    end = readme_text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ZooError(f'README has no {TABLE_BEGIN} ... {TABLE_END} '
                       'markers for the model table')
    start = begin + len(TABLE_BEGIN)
    return readme_text[:start] + '\n' + tables + readme_text[end:]
