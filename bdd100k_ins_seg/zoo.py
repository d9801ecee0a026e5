"""The model zoo catalogue and its published files.

The catalogue is ``configs/ins_seg/metafile.yml`` (OpenMMLab model-index
format): one entry per published model, whose name is both the config stem
and the stem of every published file. The original host publishes six
files per model, one folder per kind (:data:`ARTEFACTS`)::

    https://dl.cv.ethz.ch/bdd100k/ins_seg/models/<name>.pth       weights
    https://dl.cv.ethz.ch/bdd100k/ins_seg/models/<name>.md5       their MD5
    https://dl.cv.ethz.ch/bdd100k/ins_seg/scores-val/<name>.json  val scores
    https://dl.cv.ethz.ch/bdd100k/ins_seg/scores-test/<name>.json test scores
    https://dl.cv.ethz.ch/bdd100k/ins_seg/preds/<name>.zip        predictions
    https://dl.cv.ethz.ch/bdd100k/ins_seg/visuals/<name>.zip      drawings

The metafile spells the URLs out (as ``mim`` reads them); loading it checks
each one against this layout. Files are fetched on demand:

* from the original host, or from ``$BDD100K_INS_SEG_MIRROR``: a base URL
  or local folder in the host's layout (``<mirror>/models/<name>.pth``,
  ``<mirror>/scores-val/<name>.json``, ...); a mirror ending in ``/models``
  stands for its parent, and a local folder may also hold the files flat;
* into ``~/.cache/bdd100k_ins_seg/checkpoints`` (``$BDD100K_INS_SEG_CACHE``):
  weights at the top, the other kinds in ``scores-val/``, ``scores-test/``,
  ``preds/`` and ``visuals/`` (the host's folders);
* through a temporary file that is renamed into place only after it passed
  its check: the published MD5 for weights; for the kinds without MD5, the
  scores json must have the official evaluator's result layout and a zip
  must be intact (CRCs) and list what it should (:func:`check_file`). A
  file that fails is deleted and an error names it;
* once: concurrent processes (ranks of one job, or two jobs) take a lock
  file next to the destination (:class:`DownloadLock`); one downloads, the
  others wait and reuse its file. A lock whose owner died, or that showed
  no progress for ``$BDD100K_INS_SEG_LOCK_TIMEOUT`` seconds, is broken.

Published predictions are extracted next to their zip, into
``<cache>/preds/<name>/`` (:func:`extract_predictions`).

The README's model tables are generated from the same catalogue
(:func:`render_tables`, ``python tools/model_zoo.py readme``). This module
itself imports neither torch nor mmdet (only :func:`count_parameters` does).
"""
import hashlib
import http.client
import json
import os
import os.path as osp
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
METAFILE_NAME = 'configs/ins_seg/metafile.yml'
METAFILE = REPO_ROOT / METAFILE_NAME
CACHE_ENV = 'BDD100K_INS_SEG_CACHE'
MIRROR_ENV = 'BDD100K_INS_SEG_MIRROR'
LOCK_TIMEOUT_ENV = 'BDD100K_INS_SEG_LOCK_TIMEOUT'
DEFAULT_CACHE = '~/.cache/bdd100k_ins_seg/checkpoints'
NAME_SUFFIX = '_ins_seg_bdd100k'  # every published name ends with it
LIST_HINT = '`python tools/model_zoo.py list` shows the names'

#: The original host; every published URL is ``HOST/<folder>/<name><ext>``.
HOST = 'https://dl.cv.ethz.ch/bdd100k/ins_seg'
#: kind -> (folder on the host, file extension, metafile field).
ARTEFACTS = {
    'weights': ('models', '.pth', 'Weights'),
    'md5': ('models', '.md5', 'Weights MD5'),
    'scores-val': ('scores-val', '.json', 'Scores val'),
    'scores-test': ('scores-test', '.json', 'Scores test'),
    'preds': ('preds', '.zip', 'Predictions'),
    'visuals': ('visuals', '.zip', 'Visuals'),
}
#: The kinds ``download --what`` fetches (the MD5 comes with the weights).
KINDS = ('weights', 'scores-val', 'scores-test', 'preds', 'visuals')

_CHUNK = 1 << 20  # bytes per read while downloading / hashing
_TIMEOUT_S = 60
_LOCK_TIMEOUT_S = 300  # a lock with no progress for this long is stale
_LOCK_POLL_S = 0.2
_IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


class ZooError(RuntimeError):
    """A model zoo request that cannot be served (message is one line)."""


class UnknownModelError(ZooError):
    """A model name or config that is not in the catalogue."""


class ChecksumError(ZooError):
    """A downloaded file that fails its check (MD5, or its content)."""


def published_url(kind, name):
    """The original host's URL of one published file of a model."""
    folder, ext, _ = ARTEFACTS[kind]
    return f'{HOST}/{folder}/{name}{ext}'


@dataclass(frozen=True)
class ZooEntry:
    """One published model of the catalogue.

    ``results`` maps ``(split, kind)`` to the published AP (x100), with
    split in ``('val', 'test')`` and kind in ``('mask', 'box')``. ``urls``
    maps each kind of :data:`ARTEFACTS` to its published URL.
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
    urls: dict = field(default_factory=dict)

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
        urls = {kind: model[key] for kind, (_, _, key) in ARTEFACTS.items()}
        entry = ZooEntry(
            name=name,
            collection=model['In Collection'],
            config=model['Config'],
            weights_url=urls['weights'],
            md5_url=urls['md5'],
            backbone=str(meta['Backbone']),
            lr_schedule=str(meta['Lr schd']),
            epochs=int(meta['Epochs']),
            batch_size=int(meta['Batch Size']),
            ms_train=bool(meta['MS-train']),
            parameters=int(meta['Parameters']),
            results=results,
            metadata=dict(meta),
            urls=urls)
    except (KeyError, TypeError, ValueError) as e:
        raise ZooError(f'{metafile}: model {name!r} has a missing or bad '
                       f'field ({type(e).__name__}: {e})') from None
    for kind, url in urls.items():
        if url != published_url(kind, name):
            raise ZooError(
                f'{metafile}: model {name!r}: {ARTEFACTS[kind][2]} is {url},'
                f' not {published_url(kind, name)} (the host layout of '
                'bdd100k_ins_seg.zoo.ARTEFACTS)')
    return entry


_CATALOGUES = {}  # (path, mtime, size) -> catalogue
_YAML_LOADER = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)


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
        stat = metafile.stat()
        key = (str(metafile), stat.st_mtime_ns, stat.st_size)
        if key in _CATALOGUES:  # parsed once per version of the file
            return dict(_CATALOGUES[key])
        with open(metafile, encoding='utf-8') as f:
            index = yaml.load(f, Loader=_YAML_LOADER)
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
    _CATALOGUES[key] = catalogue
    return dict(catalogue)


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
    """Folder for downloaded files (``$BDD100K_INS_SEG_CACHE``)."""
    return Path(osp.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def artefact_path(entry, kind):
    """Cache path of one published file of an entry.

    Weights (and their ``.md5``) lie at the top of the cache folder, the
    other kinds in the host's folder names: ``<cache>/scores-val/<name>.json``.
    """
    folder, ext, _ = ARTEFACTS[kind]
    if folder == 'models':
        return cache_dir() / (entry.name + ext)
    return cache_dir() / folder / (entry.name + ext)


def predictions_dir(entry):
    """Where the published predictions zip is extracted:
    ``<cache>/preds/<name>/``."""
    return cache_dir() / 'preds' / entry.name


def _mirrored(url):
    """``url`` on ``$BDD100K_INS_SEG_MIRROR`` (unchanged without one).

    The mirror stands for :data:`HOST`: a base URL (``https://...``,
    ``file://...``) or a local folder holding ``models/``, ``scores-val/``,
    ``scores-test/``, ``preds/`` and ``visuals/``. A mirror ending in
    ``/models`` stands for its parent (so a mirror of the weights folder
    still works); a local folder may also hold every file flat.
    """
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    if not mirror or not url.startswith(HOST + '/'):
        return url
    relative = url[len(HOST) + 1:]  # '<folder>/<file>'
    if '://' in mirror:
        root = mirror.rstrip('/')
        if root.endswith('/models'):
            root = root[:-len('/models')]
        return root + '/' + relative
    root = Path(osp.abspath(osp.expanduser(mirror)))
    if root.name == 'models':
        root = root.parent
    layout = root / relative
    flat = Path(osp.abspath(osp.expanduser(mirror))) / relative.split('/')[-1]
    return (flat if not layout.is_file() and flat.is_file()
            else layout).as_uri()


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
    return artefact_path(entry, 'md5')


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


# --- one download at a time per file ---------------------------------------

def _process_alive(pid):
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


class DownloadLock:
    """An exclusive lock file ``<dest>.lock`` while ``dest`` is fetched.

    Created with ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+ file
    systems), it holds ``<pid> <host> <time>`` of its owner, and its mtime
    is the owner's heartbeat (:meth:`beat`, called as bytes arrive). A
    waiter prints one message, polls, and breaks the lock when its owner
    is a process of this host that no longer runs (killed), or when the
    lock showed no progress for ``timeout`` seconds (an owner on another
    host that died or hangs).

    The lock only saves transfers: correctness never depends on it, since
    every file is written to a temporary name and renamed once checked.

    Args:
        dest (Path): the file to fetch.
        timeout (float, optional): seconds without progress after which a
            lock is stale; default ``$BDD100K_INS_SEG_LOCK_TIMEOUT`` or 300.
    """

    def __init__(self, dest, timeout=None, poll=_LOCK_POLL_S):
        self.dest = Path(dest)
        self.path = self.dest.with_name(self.dest.name + '.lock')
        if timeout is None:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV)
                            or _LOCK_TIMEOUT_S)
        self.timeout = timeout
        self.poll = poll
        self._token = None
        self._last_beat = 0.0

    def _owner(self):
        """(text, pid, host, mtime) of the lock file, None if it is gone."""
        try:
            text = self.path.read_text(errors='replace')
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        fields = text.split()
        pid = int(fields[0]) if fields and fields[0].isdigit() else None
        host = fields[1] if len(fields) > 1 else None
        return text, pid, host, mtime

    def _stale_reason(self, owner):
        _, pid, host, mtime = owner
        if (pid is not None and host == socket.gethostname()
                and not _process_alive(pid)):
            return f'its process {pid} is gone'
        idle = time.time() - mtime
        if idle > self.timeout:
            return f'no progress for {idle:.0f} s'
        return None

    def _break(self, owner, reason):
        # Only the lock that was judged stale: it may have changed hands.
        current = self._owner()
        if current is None or current[0] != owner[0]:
            return
        grave = self.path.with_name(f'{self.path.name}.{os.getpid()}.stale')
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        _remove(grave)
        print(f'{self.dest.name}: removed the stale lock {self.path} '
              f'({reason})', file=sys.stderr, flush=True)

    def acquire(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, read-only, ...
            raise ZooError(f'cannot create the cache folder '
                           f'{self.path.parent}: {e.strerror or e}') from None
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                reason = self._stale_reason(owner)
                if reason:
                    self._break(owner, reason)
                    continue
                if not announced:
                    who = (f'process {owner[1]} on {owner[2]}'
                           if owner[1] is not None else 'another process')
                    print(f'{self.dest.name}: waiting for {who}, which is '
                          f'downloading it (lock {self.path})',
                          file=sys.stderr, flush=True)
                    announced = True
                time.sleep(self.poll)
                continue
            except OSError as e:  # read-only cache, no space, ...
                raise ZooError(f'cannot create the download lock '
                               f'{self.path}: {e.strerror or e}') from None
            token = (f'{os.getpid()} {socket.gethostname()} '
                     f'{time.time():.6f}\n')
            with os.fdopen(fd, 'w') as f:
                f.write(token)
            self._token = token
            self._last_beat = time.monotonic()
            return self

    def beat(self):
        """Mark progress (at most once a second)."""
        now = time.monotonic()
        if self._token is not None and now - self._last_beat >= 1.0:
            self._last_beat = now
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass  # broken by a waiter; the rename stays safe

    def release(self):
        if self._token is None:
            return
        owner = self._owner()
        if owner is not None and owner[0] == self._token:
            _remove(self.path)
        self._token = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _remove_leftovers(dest):
    """Temporary files of ``dest`` left by a killed download (only called
    with the lock held, so none of them is being written)."""
    import glob
    pattern = osp.join(glob.escape(str(dest.parent)),
                       '.' + glob.escape(dest.name) + '*.part')
    for path in glob.glob(pattern):
        if osp.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove(path)


# --- checks of the files without MD5 -----------------------------------------

def prediction_sets(paths):
    """The prediction folders among the relative paths of a zip or folder.

    Assumed layout of a published predictions zip (the output of the
    original ``test.py --format-only``): ``[<prefix>/]score.json`` beside
    ``[<prefix>/]bitmasks/*.png`` (or the PNGs beside ``score.json``), once
    per split. Every ``score.json`` with bitmask PNGs counts.

    Args:
        paths (Iterable[str]): '/'-separated relative paths.

    Returns:
        list[tuple[str, str, int]]: (score.json path, bitmask folder,
        number of PNGs), sorted.
    """
    paths = [p for p in paths if not p.endswith('/')]
    sets = []
    for path in sorted(paths):
        if path.rsplit('/', 1)[-1] != 'score.json':
            continue
        prefix = path[:-len('score.json')]
        for folder in (prefix + 'bitmasks/', prefix):
            pngs = [p for p in paths if p.startswith(folder)
                    and p.lower().endswith('.png')
                    and '/' not in p[len(folder):]]
            if pngs:
                sets.append((path, folder.rstrip('/') or '.', len(pngs)))
                break
    return sets


def _zip_names(path):
    """The member names of an intact zip (every CRC checked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ChecksumError(f'not a readable zip ({e})') from None
    if bad is not None:
        raise ChecksumError(f'zip member {bad} is corrupt (CRC mismatch)')
    for name in names:
        if name.startswith('/') or '..' in name.split('/'):
            raise ChecksumError(f'zip member {name!r} points outside the '
                                'folder it is extracted to')
    return names


def check_file(kind, path):
    """Check a published file of a kind that has no MD5.

    * ``scores-val`` / ``scores-test``: json in the official evaluator's
      result layout (metric -> [per-class dict, {"OVERALL": x}]);
    * ``preds``: an intact zip holding bitmask PNGs + a ``score.json`` list
      (:func:`prediction_sets`);
    * ``visuals``: an intact zip holding images.

    Raises:
        ChecksumError: what is wrong, in one line.
    """
    if kind.startswith('scores-'):
        from .compare import ResultFormatError, load_result
        try:
            load_result(path)
        except ResultFormatError as e:
            raise ChecksumError(str(e).replace(f'{path}: ', '')) from None
    elif kind == 'preds':
        names = _zip_names(path)
        sets = prediction_sets(names)
        if not sets:
            raise ChecksumError('the zip lists no bitmasks/*.png with a '
                                'score.json')
        with zipfile.ZipFile(path) as archive:
            for score_file, _, _ in sets:
                try:
                    frames = json.loads(archive.read(score_file))
                except ValueError as e:
                    raise ChecksumError(f'{score_file} in the zip is not '
                                        f'json ({e})') from None
                if not isinstance(frames, list):
                    raise ChecksumError(f'{score_file} in the zip is not a '
                                        'list of frames')
    elif kind == 'visuals':
        names = _zip_names(path)
        if not any(n.lower().endswith(_IMAGE_EXTS) for n in names):
            raise ChecksumError('the zip lists no images')
    else:
        raise ValueError(f'no content check for {kind!r}')


def _cached_ok(kind, dest, md5):
    if not dest.is_file():
        return False
    if kind == 'weights':
        return md5 is not None and file_md5(dest) == md5
    try:
        check_file(kind, dest)
    except ChecksumError:
        return False
    return True


def _download_checked(url, dest, check, progress=True, lock=None):
    """Stream ``url`` to a temporary file beside ``dest``, check it, rename.

    ``check(tmp_path, md5_hex)`` raises :class:`ChecksumError` (with what
    is wrong) for a bad file, which is then deleted.
    """
    from tqdm import tqdm
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix='.' + dest.name,
                               suffix='.part')
    out = os.fdopen(fd, 'wb')  # owns fd from here on, closed in any case
    digest = hashlib.md5()
    received = 0
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
                    received += len(chunk)
                    if lock is not None:
                        lock.beat()
        if total is not None and received != total:
            # http.client ends a body cut short without an error.
            raise ZooError(f'cannot download {url}: the connection closed '
                           f'after {received} of {total} bytes')
        try:
            check(tmp, digest.hexdigest())
        except ChecksumError as e:
            raise ChecksumError(f'{url}: {e}; the download was deleted '
                                '(corrupt file or wrong mirror)') from None
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


def extract_predictions(zip_path, out_dir, lock=None):
    """Extract a predictions zip into ``out_dir`` (complete or absent:
    through a temporary folder renamed at the end). ``lock``: the
    :class:`DownloadLock` held, told of the progress."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir.parent, prefix='.' + out_dir.name,
                           suffix='.part')
    try:
        _zip_names(zip_path)  # refuses members outside the folder
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                archive.extract(member, tmp)
                if lock is not None:
                    lock.beat()
        os.rename(tmp, out_dir)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZooError(f'cannot extract {zip_path}: {e}') from None
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZooError(f'cannot extract {zip_path} to {out_dir}: '
                       f'{e.strerror or e}') from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def local_prediction_sets(folder):
    """:func:`prediction_sets` of an extracted folder, as absolute paths."""
    folder = Path(folder)
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob('*')
             if p.is_file()]
    return [(folder / score, folder / bitmasks if bitmasks != '.' else
             folder, count)
            for score, bitmasks, count in prediction_sets(paths)]


def parse_kinds(what):
    """``'weights,scores-val'`` or ``'all'`` -> a tuple of :data:`KINDS`."""
    kinds = []
    for kind in (k.strip() for k in what.split(',')):
        if kind == 'all':
            kinds += KINDS
        elif kind in KINDS:
            kinds.append(kind)
        else:
            raise ZooError(f'unknown file kind {kind!r}: one of '
                           f'{", ".join(KINDS)} or all')
    return tuple(dict.fromkeys(kinds))


def fetch(name, kind='weights', progress=True):
    """Local path of one checked published file of a model.

    Downloads it (with a progress bar, once across processes: see
    :class:`DownloadLock`) unless the cache holds a file that passes its
    check. A predictions zip is also extracted to :func:`predictions_dir`.

    Args:
        name (str): catalogue name (config stem).
        kind (str): one of :data:`KINDS`.
        progress (bool): show a tqdm progress bar.

    Returns:
        Path: the file in the cache.

    Raises:
        UnknownModelError: ``name`` is not in the catalogue.
        ChecksumError: the download fails its check (and was deleted).
        ZooError: the file (or the MD5) cannot be downloaded.
    """
    entry = get_entry(name)
    if kind not in KINDS:
        raise ZooError(f'unknown file kind {kind!r}: one of '
                       f'{", ".join(KINDS)}')
    dest = artefact_path(entry, kind)
    extracted = predictions_dir(entry) if kind == 'preds' else None

    def done(md5):
        return _cached_ok(kind, dest, md5) and (
            extracted is None or extracted.is_dir())

    if done(expected_md5(entry, download=False)):
        return dest
    with DownloadLock(dest) as lock:
        _remove_leftovers(dest)
        md5 = expected_md5(entry) if kind == 'weights' else None
        if not _cached_ok(kind, dest, md5):
            # Missing, or a damaged / foreign file where ours belongs.
            _remove(dest)
            if extracted is not None:
                shutil.rmtree(extracted, ignore_errors=True)
            _download_checked(_mirrored(entry.urls[kind]), dest,
                              _checker(kind, md5), progress=progress,
                              lock=lock)
        if extracted is not None and not extracted.is_dir():
            _remove_leftovers(extracted)
            extract_predictions(dest, extracted, lock=lock)
        if kind == 'weights':
            _remember_md5(entry, md5)
    return dest


def _checker(kind, md5):
    def check(path, digest):
        if kind == 'weights':
            if digest != md5:
                raise ChecksumError(f'MD5 {digest} differs from the '
                                    f'published {md5}')
        else:
            check_file(kind, path)
    return check


def download(name, progress=True):
    """Local path of a model's verified published weights
    (:func:`fetch` of ``'weights'``)."""
    return fetch(name, 'weights', progress=progress)


def verify(name, kind='weights'):
    """Check a cached published file of a model again.

    Returns:
        tuple[str, str]: status (``'ok'``, ``'mismatch'``, ``'missing'``)
        and a one-line message. Never downloads the file (weights: only the
        small ``.md5`` file when it is not cached yet).
    """
    entry = get_entry(name)
    dest = artefact_path(entry, kind)
    label = entry.name if kind == 'weights' else f'{entry.name} {kind}'
    if not dest.is_file():
        return 'missing', f'{label}: not downloaded ({dest})'
    if kind != 'weights':
        try:
            check_file(kind, dest)
        except ChecksumError as e:
            return 'mismatch', f'{label}: {dest}: {e}'
        return 'ok', f'{label}: ok ({dest})'
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
              '| Box AP val | Scores val | Mask AP test | Box AP test '
              '| Scores test | Params | Weights | Preds | Visuals |')
    out = []
    for coll, entries in by_collection.items():
        paper = papers.get(coll, {}).get('Paper', {})
        title = f'### {coll}'
        if paper.get('URL'):
            title += f' ([paper]({paper["URL"]}))'
        out += [title, '', header, '|' + ' :-: |' * header.count(' | ')]
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
                f'| [scores]({e.urls["scores-val"]}) '
                f'| {e.results[("test", "mask")]:.2f} '
                f'| {e.results[("test", "box")]:.2f} '
                f'| [scores]({e.urls["scores-test"]}) '
                f'| {e.parameters / 1e6:.1f}M '
                f'| [model]({e.weights_url}) \\| [MD5]({e.md5_url}) '
                f'| [preds]({e.urls["preds"]}) '
                f'| [visuals]({e.urls["visuals"]}) |')
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
