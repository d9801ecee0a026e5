"""Compiled-op provider for mmcv-lite.

:func:`install` must run before ``mmcv.ops`` is first imported; importing
``bdd100k_ins_seg`` does it. If a real compiled ``mmcv._ext`` is importable it
is used and nothing is installed.
"""
import importlib.util
import sys

_BACKEND = None


def _real_ext_available():
    if 'mmcv._ext' in sys.modules:
        return getattr(sys.modules['mmcv._ext'], 'backend', None) != \
            'torchvision'
    try:
        return importlib.util.find_spec('mmcv._ext') is not None
    except (ImportError, ValueError):
        return False


def install():
    """Make ``import mmcv.ops`` work; return the active backend name.

    Returns ``'mmcv'`` when mmcv's own compiled extension is present, else
    ``'torchvision'`` after registering the torchvision-backed stand-in.
    """
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    if _real_ext_available():
        _BACKEND = 'mmcv'
        return _BACKEND
    if 'mmcv.ops' in sys.modules:
        raise ImportError(
            'mmcv.ops was imported before bdd100k_ins_seg could install its '
            'torchvision-backed ops; import bdd100k_ins_seg first')
    import mmcv

    from .torchvision_ext import make_module
    module = make_module()
    sys.modules['mmcv._ext'] = module
    mmcv._ext = module
    _BACKEND = 'torchvision'
    return _BACKEND


def ops_backend():
    """'mmcv' (compiled mmcv ops), 'torchvision' (this provider) or None."""
    return _BACKEND
