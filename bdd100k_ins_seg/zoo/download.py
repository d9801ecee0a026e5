"""Fetching published files: from the host or a mirror, MD5- or
content-checked, renamed into the cache only once checked, once per file
across processes (:mod:`.lock`)."""
import hashlib
import http.client
import os
import os.path as osp
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from bdd100k_ins_seg.zoo.catalogue import ChecksumError, HOST, KINDS, MIRROR_ENV, ZooError, _CHUNK, _TIMEOUT_S, artefact_path, entry_for_config, get_entry, load_catalogue, predictions_dir
from bdd100k_ins_seg.zoo.files import _zip_names, check_file
from bdd100k_ins_seg.zoo.lock import DownloadLock, _remove


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
            (``configs/ins_seg/<name>.py``), or a model name; the sample
            config (``mask_rcnn_r18_fpn_sample``) gives the checkpoint
            ``make demo`` trains (:data:`LOCAL_MODELS`).

    Returns:
        str: path under the cache folder, downloaded if needed.
    """
    from bdd100k_ins_seg.zoo.catalogue import local_checkpoint
    local = local_checkpoint(config_path)
    if local is not None:
        return local
    entry = entry_for_config(config_path)
    return str(download(entry.name, progress=progress))
