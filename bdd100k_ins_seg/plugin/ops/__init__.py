"""Compiled-op provider for mmcv-lite.

The installed distribution registers a finder at interpreter start (see
``_bdd100k_ins_seg_hook``) that supplies :mod:`.torchvision_ext` as
``mmcv._ext`` whenever mmcv's compiled extension is absent, so ``import
mmcv.ops`` works in any order. :func:`install` registers the same finder for
a source checkout that is only on ``PYTHONPATH``; importing
``bdd100k_ins_seg`` calls it. A real compiled ``mmcv._ext`` always wins.
"""
import importlib
import sys

import _bdd100k_ins_seg_hook as _hook


def install():
    """Make ``import mmcv.ops`` work; return the active backend name.

    Returns ``'mmcv'`` when mmcv's own compiled extension is present, else
    ``'torchvision'`` (the stand-in). Idempotent.
    """
    _hook.install()
    ext = importlib.import_module(_hook.MODULE)
    if getattr(ext, 'backend', None) == 'torchvision':
        # One module object under both names, so its classes (e.g.
        # UnavailableOpError) are the same whichever name imported them.
        sys.modules[__name__ + '.torchvision_ext'] = ext
        globals()['torchvision_ext'] = ext
    return ops_backend()


def ops_backend():
    """'mmcv' (compiled mmcv ops), 'torchvision' (the stand-in) or None
    (``mmcv._ext`` not imported yet)."""
    ext = sys.modules.get(_hook.MODULE)
    if ext is None:
        return None
    return 'torchvision' if getattr(ext, 'backend', None) == 'torchvision' \
        else 'mmcv'
