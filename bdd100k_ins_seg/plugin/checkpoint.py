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

:func:`check_checkpoint` is the scripts' pre-flight check: before the runner
is built, it loads the file and compares its keys and shapes with the model
the config builds, so a checkpoint of another architecture stops with one
line instead of loading partly (mmengine's default) and predicting garbage.
"""
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch

UNSAFE_ENV = 'BDD100K_INS_SEG_UNSAFE_LOAD'


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be (safely) loaded."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model; ``mismatch``
    is the one-line description without the command-line hint."""

    def __init__(self, mismatch, hint=''):
        super().__init__(mismatch + hint)
        self.mismatch = mismatch


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


# A checkpoint loaded by check_checkpoint, handed to the next load of the same
# unchanged file (the runner's, right after) instead of reading it twice.
_PRELOADED = {}


def _file_key(path, map_location):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (osp.abspath(path), st.st_mtime_ns, st.st_size, str(map_location))


def _load_from_local(filename, map_location, keep_for_next_load=False):
    key = _file_key(osp.expanduser(str(filename)), map_location)
    if key is not None and key in _PRELOADED:
        return _PRELOADED.pop(key)
    checkpoint = safe_load(filename, map_location=map_location)
    if keep_for_next_load and key is not None:
        _PRELOADED.clear()
        _PRELOADED[key] = checkpoint
    return checkpoint


def compare_state_dicts(expected, loaded):
    """Keys of ``loaded`` against a model's ``expected`` state_dict.

    Both map names to tensors (only shapes are read). Missing BatchNorm
    ``num_batches_tracked`` counters are not counted (torch fills them in).

    Returns:
        tuple: (missing, unexpected, mis-shaped) key lists, in the order of
        ``expected`` / ``loaded``; mis-shaped items are
        ``(key, loaded shape, expected shape)``.
    """
    missing = [k for k in expected if k not in loaded and
               not k.endswith('num_batches_tracked')]
    unexpected = [k for k in loaded if k not in expected]
    mis_shaped = [(k, tuple(loaded[k].shape), tuple(expected[k].shape))
                  for k in expected
                  if k in loaded and hasattr(loaded[k], 'shape') and
                  tuple(loaded[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, mis_shaped


def describe_mismatch(missing, unexpected, mis_shaped):
    """One line: the counts and the first key of each kind."""
    parts = [f'{len(missing)} missing, {len(unexpected)} unexpected, '
             f'{len(mis_shaped)} mis-shaped keys']
    if missing:
        parts.append(f'first missing: {missing[0]}')
    if unexpected:
        parts.append(f'first unexpected: {unexpected[0]}')
    if mis_shaped:
        key, got, want = mis_shaped[0]
        parts.append(f'first mis-shaped: {key} {list(got)} in the '
                     f'checkpoint, {list(want)} in the model')
    return '; '.join(parts)


def model_state_shapes(model_cfg, default_scope='mmdet'):
    """The state_dict (names -> tensors with shapes) of the model a config
    builds, without allocating or initialising weights when possible."""
    import torch
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(default_scope)
    try:
        with torch.device('meta'):
            model = MODELS.build(model_cfg)
    except Exception:  # a module that cannot be built on 'meta'
        model = MODELS.build(model_cfg)
    return model.state_dict()


def checkpoint_state_dict(checkpoint):
    """The weights of a loaded checkpoint, keys as mmengine loads them."""
    state_dict = checkpoint.get('state_dict', checkpoint) \
        if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f'holds a {type(state_dict).__name__}, not a state_dict')
    return OrderedDict((re.sub(r'^module\.', '', k), v)
                       for k, v in state_dict.items())


def check_checkpoint(cfg, filename, strict=True, keep_loaded=True):
    """Pre-flight check of the weights a script is about to load.

    Loads ``filename`` (local path or URL, through mmengine's loaders) and,
    when ``strict``, compares its keys and shapes with the model ``cfg``
    builds. The loaded file is kept for the runner's load that follows
    (unless ``keep_loaded`` is False: no load follows in this process).

    Raises:
        CheckpointError: unreadable file (one-line message).
        CheckpointMismatchError: (strict) any missing, unexpected or
            mis-shaped key (one-line message without the file name).
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    filename = str(filename)
    try:
        if '://' in filename:
            checkpoint = CheckpointLoader.load_checkpoint(
                filename, map_location='cpu')
        else:
            checkpoint = _load_from_local(filename, 'cpu',
                                          keep_for_next_load=keep_loaded)
        state_dict = checkpoint_state_dict(checkpoint)
    except (CheckpointError, FileNotFoundError) as e:
        raise CheckpointError(_first_line(e)) from None
    except Exception as e:  # noqa: BLE001 - download errors and the like
        raise CheckpointError(
            f'{filename}: {type(e).__name__}: {_first_line(e)}') from None
    if not strict:
        return
    expected = model_state_shapes(cfg.model, cfg.get('default_scope',
                                                     'mmdet'))
    mismatch = compare_state_dicts(expected, state_dict)
    if any(mismatch):
        _PRELOADED.clear()
        raise CheckpointMismatchError(
            'does not fit the model of the config: '
            f'{describe_mismatch(*mismatch)}',
            ' (--non-strict loads the matching part)')


def check_checkpoint_or_fail(cfg, filename, strict=True):
    """:func:`check_checkpoint` for the scripts: a problem ends the process
    with one line (``<script>: error: ...``, exit status 1)."""
    from bdd100k_ins_seg.cli import fail
    try:
        check_checkpoint(cfg, filename, strict=strict)
    except CheckpointMismatchError as e:
        fail(f'checkpoint {filename}', e)
    except CheckpointError as e:
        fail('cannot load checkpoint', e)


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
