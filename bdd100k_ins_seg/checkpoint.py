"""Safe checkpoint loading for torch >= 2.6.

``torch.load`` defaults to ``weights_only=True`` since torch 2.6 and
mmengine 0.10.7 does not pass the argument, so an mmdet 2.x zoo checkpoint or
one of our own resume files either fails to load or (with the usual
workaround, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) unpickles arbitrary code.

:func:`safe_load` keeps ``weights_only=True`` and allows exactly the few
non-tensor types those files contain (numpy arrays and scalars in mmengine's
message hub, its ``HistoryBuffer``). Anything else is refused with a message
that names the file and the types; only ``allow_unsafe=True`` (or the
environment variable ``BDD100K_INS_SEG_UNSAFE_LOAD=1``, set by the CLIs'
``--unsafe-load``) loads a full pickle, for files the user trusts.

:func:`install` makes mmengine's ``load_checkpoint`` / ``Runner.resume`` use
it for local paths and http(s) URLs; importing ``bdd100k_ins_seg`` calls it.
"""
import os
import os.path as osp
import pickle

import numpy as np
import torch

UNSAFE_ENV = 'BDD100K_INS_SEG_UNSAFE_LOAD'


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be (safely) loaded."""


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to what mmengine's pickles need.

    mmengine's message hub pickles ``HistoryBuffer``'s statistics methods
    as ``getattr(HistoryBuffer, 'mean')``; nothing else may be looked up.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'current',
                                                   'mean'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) '
        'is not allowed')


def _allowed_globals():
    """The types a zoo checkpoint or an mmengine resume file may contain."""
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = [HistoryBuffer, np.ndarray, np.dtype,
               (_history_buffer_getattr, 'builtins.getattr')]
    # numpy pickles arrays through _reconstruct/scalar; older files spell the
    # module numpy.core, numpy 2 numpy._core.
    from numpy._core import multiarray
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed.append((multiarray._reconstruct, f'{mod}._reconstruct'))
        allowed.append((multiarray.scalar, f'{mod}.scalar'))
    # numpy 2 pickles dtypes by their class (numpy.dtypes.Float64DType, ...).
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            allowed.append(cls)
    return allowed


def _unsafe_requested(allow_unsafe):
    return allow_unsafe or os.environ.get(UNSAFE_ENV, '') not in ('', '0')


def safe_load(path, map_location='cpu', allow_unsafe=False):
    """Load a checkpoint file with ``weights_only=True`` and an allowlist.

    Args:
        path (str): local checkpoint file (``.pth``).
        map_location: as for :func:`torch.load`.
        allow_unsafe (bool): load an arbitrary pickle (only for trusted
            files). Also enabled by ``BDD100K_INS_SEG_UNSAFE_LOAD=1``.

    Returns:
        dict: the checkpoint (usually ``state_dict`` and ``meta``).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is not a torch checkpoint, is truncated,
            or needs types outside the allowlist.
    """
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if _unsafe_requested(allow_unsafe):
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(
                path)
        except Exception:  # not a zip checkpoint: report the original error
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f'checkpoint {path} contains types outside the safe '
                f'allowlist ({", ".join(sorted(unsafe))}); if you trust this '
                f'file, load it with --unsafe-load (or {UNSAFE_ENV}=1)'
            ) from None
        why = _not_a_checkpoint(path)
        raise CheckpointError(
            f'checkpoint {path} {why}' if why else
            f'checkpoint {path} cannot be loaded: {_first_line(e)}') from None
    except Exception as e:  # any other failure: corrupt/truncated file
        raise CheckpointError(
            f'checkpoint {path} {_not_a_checkpoint(path, e)}') from None


def _not_a_checkpoint(path, err=None):
    """Why ``path`` is no torch checkpoint, judged by its first bytes (a
    torch file is a zip archive, or a pickle in the legacy format); with
    ``err`` (the error torch.load raised) a reason is always given."""
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError as e:
        return f'cannot be read: {e.strerror}'
    if not head:
        return 'is empty (0 bytes)'
    if head.startswith(b'PK'):  # a zip archive: torch's format, damaged
        # torch's own message (first sentence) says what is damaged.
        detail = (': ' + _first_line(err).split('. ')[0].rstrip('.')
                  if isinstance(err, RuntimeError) else '')
        return ('is not a valid torch checkpoint (corrupt or truncated?)' +
                detail if err is not None else None)
    if head[0] != 0x80:  # neither zip nor pickle (protocol 2+)
        try:
            head.decode('utf-8')
            kind = 'a text file'
        except UnicodeDecodeError as e:  # text cut inside a character?
            kind = ('a text file' if e.start >= len(head) - 3 else
                    'neither a zip archive nor a pickle')
        return f'is not a torch checkpoint ({kind})'
    # A pickle (torch's legacy format) that does not unpickle: cut short?
    return ('is not a valid torch checkpoint (corrupt or truncated?)'
            if err is not None else None)


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _load_from_local(filename, map_location):
    return safe_load(filename, map_location=map_location)


def _load_from_http(filename, map_location=None, model_dir=None,
                    progress=True):
    """Download to torch's hub cache once (rank 0 first), then safe_load."""
    from mmengine.dist import barrier, get_dist_info
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(filename).path))
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.isfile(cached):
        download_url_to_file(filename, cached, progress=progress)
    if world_size > 1:
        barrier()
    return safe_load(cached, map_location=map_location)


_INSTALLED = False


def install():
    """Route mmengine's local and http(s) checkpoint loading through
    :func:`safe_load` (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(
        _load_from_local)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), force=True)(_load_from_http)
    _INSTALLED = True
