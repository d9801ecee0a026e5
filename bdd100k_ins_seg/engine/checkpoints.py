"""Atomic checkpoints and resume: mmengine's ``save_checkpoint`` and
``CheckpointHook`` write through a temporary file that is renamed into
place (:func:`install_atomic_checkpoints`); a checkpoint to resume from is
found and checked before the run starts (:func:`find_resume_checkpoint`)."""
import contextlib
import errno
import os
import os.path as osp
import tempfile
import zipfile

import torch
from mmengine.hooks import CheckpointHook



def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


class CheckpointWriteError(OSError):
    """A checkpoint (or ``last_checkpoint``) could not be written."""

    def __str__(self):
        return f'cannot write {self.filename}: {self.strerror}'


@contextlib.contextmanager
def atomic_open(path, mode='wb', encoding=None):
    """Open ``path`` for writing so that it appears complete or not at all.

    Writes go to a hidden temporary file in the same folder, which is
    flushed, fsynced and renamed onto ``path`` when the block ends without
    an exception (and removed otherwise). A kill during the block leaves
    ``path`` as it was (and the temporary file behind).
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.',
                               suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _open_for_checkpoint_hook(file, mode='r', *args, **kwargs):
    """``open`` as seen by mmengine's checkpoint_hook module (which uses it
    only to write ``last_checkpoint``): writes are atomic."""
    if isinstance(mode, str) and 'w' in mode and not args:
        return _atomic_write_or_error(file, mode, kwargs.get('encoding'))
    return open(file, mode, *args, **kwargs)


@contextlib.contextmanager
def _atomic_write_or_error(path, mode, encoding=None):
    try:
        with atomic_open(path, mode, encoding=encoding) as f:
            yield f
    except CheckpointWriteError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.save wraps OSErrors
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        why = (cause.strerror or str(cause)) if cause is not None else \
            _first_line(e)
        raise CheckpointWriteError(
            getattr(cause, 'errno', None) or errno.EIO, why,
            os.fspath(path)) from None


_ORIGINAL_SAVE = {}


def _is_local(filename, backend_args=None):
    from mmengine.fileio import LocalBackend, get_file_backend
    if str(filename).startswith('pavi://'):
        return False
    try:
        backend = get_file_backend(filename, backend_args=backend_args)
    except Exception:  # noqa: BLE001 - unknown prefix: let mmengine decide
        return False
    return isinstance(backend, LocalBackend)


def save_checkpoint(checkpoint, filename, file_client_args=None,
                    backend_args=None):
    """mmengine's ``save_checkpoint``, atomic for local files.

    The checkpoint is streamed by ``torch.save`` into a temporary file next
    to ``filename`` (no in-memory copy as mmengine's version makes), then
    renamed. Remote backends go through mmengine's original function.
    """
    if file_client_args is not None or not _is_local(filename, backend_args):
        return _ORIGINAL_SAVE['save_checkpoint'](
            checkpoint, filename, file_client_args=file_client_args,
            backend_args=backend_args)
    with _atomic_write_or_error(filename, 'wb') as f:
        torch.save(checkpoint, f)


class _DeferredRemoval:
    """A file backend whose ``remove``/``rmtree`` are queued, not done."""

    def __init__(self, backend):
        self._backend = backend
        self.queued = []

    def remove(self, path):
        self.queued.append(('remove', path))

    def rmtree(self, path):
        self.queued.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _delete_old_after_saving(method):
    """Wrap a CheckpointHook method that deletes old checkpoints and then
    saves a new one: delete only once the new one is written."""

    def wrapper(self, runner, *args, **kwargs):
        backend = self.file_backend
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            result = method(self, runner, *args, **kwargs)
        finally:
            self.file_backend = backend
        for op, path in deferred.queued:
            getattr(backend, op)(path)
        return result

    wrapper.__wrapped__ = method
    wrapper._bdd100k_deferred = True
    return wrapper


def install_atomic_checkpoints():
    """Make mmengine's checkpoint writes atomic (idempotent).

    Patches ``mmengine.runner.checkpoint.save_checkpoint`` (and the names it
    is imported under by the Runner and the package), the ``open`` that
    ``mmengine.hooks.checkpoint_hook`` uses for ``last_checkpoint``, and
    CheckpointHook's deletion of old checkpoints (after the new save).
    """
    import mmengine.hooks.checkpoint_hook as hook_module
    import mmengine.runner as runner_pkg
    import mmengine.runner.checkpoint as ckpt_module
    import mmengine.runner.runner as runner_module
    if 'save_checkpoint' not in _ORIGINAL_SAVE:
        _ORIGINAL_SAVE['save_checkpoint'] = ckpt_module.save_checkpoint
    for module in (ckpt_module, runner_module, runner_pkg):
        module.save_checkpoint = save_checkpoint
    hook_module.open = _open_for_checkpoint_hook
    for name in ('_save_checkpoint_with_step', '_save_best_checkpoint'):
        method = getattr(CheckpointHook, name)
        if not getattr(method, '_bdd100k_deferred', False):
            setattr(CheckpointHook, name, _delete_old_after_saving(method))


class ResumeError(ValueError):
    """No usable checkpoint to resume from: ``path`` and ``why``."""

    def __init__(self, path, why):
        self.path = str(path)
        self.why = why
        super().__init__(f'{path}: {why}')


def check_checkpoint_file(path):
    """Raise :class:`ResumeError` if ``path`` is not a complete checkpoint.

    Zip checkpoints (torch >= 1.6) are checked without unpickling: the
    central directory must be readable (a truncated file has none) and
    every member must match its CRC. Other files are loaded with
    :func:`bdd100k_ins_seg.plugin.checkpoint.safe_load`.
    """
    if not osp.isfile(path):
        raise ResumeError(path, 'no such checkpoint file')
    if osp.getsize(path) == 0:
        raise ResumeError(path, 'empty file (an interrupted write?)')
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':  # not a zip: the legacy torch format
        from bdd100k_ins_seg.plugin.checkpoint import safe_load
        try:
            safe_load(path)
        except Exception as e:  # noqa: BLE001 - any failure: one line
            raise ResumeError(path, _first_line(e)) from None
        return
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith('/data.pkl') or n == 'data.pkl'
                       for n in names):
                raise ResumeError(path, 'a zip file but not a torch '
                                  'checkpoint (no data.pkl)')
            bad = zf.testzip()
    except ResumeError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt archive
        raise ResumeError(path, 'truncated or corrupt checkpoint '
                          f'({_first_line(e)})') from None
    if bad is not None:
        raise ResumeError(path, f'corrupt checkpoint (bad CRC in {bad})')


def find_resume_checkpoint(work_dir):
    """The checkpoint ``--resume`` (no path) continues from: the one named
    by ``WORK_DIR/last_checkpoint``, checked to be complete."""
    marker = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(marker):
        found = sorted(n for n in os.listdir(work_dir)
                       if n.endswith('.pth')) if osp.isdir(work_dir) else []
        more = '...' if len(found) > 3 else ''
        hint = (f' (it has {", ".join(found[:3])}{more}: pass one as '
                '--resume CKPT)') if found else ''
        raise ResumeError(work_dir, 'nothing to resume from, no '
                          f'last_checkpoint in the work folder{hint}')
    with open(marker) as f:
        path = f.read().strip()
    if not path:
        raise ResumeError(marker, 'empty')
    if not osp.isabs(path) and not osp.isfile(path):
        path = osp.join(work_dir, osp.basename(path))
    check_checkpoint_file(path)
    return path


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
