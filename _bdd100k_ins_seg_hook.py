"""Supplies ``mmcv._ext`` from interpreter start when mmcv's compiled
extension is not installed (mmcv-lite).

The distribution installs ``bdd100k_ins_seg_ops.pth`` into site-packages.
Python runs its one line at start-up: it appends a small finder to
``sys.meta_path`` and imports nothing (see :data:`PTH_LINE`). The finder is
asked about a module only after every other finder has failed to find it, and
it answers only for ``mmcv._ext``: it then imports this module, which loads
``bdd100k_ins_seg/plugin/ops/torchvision_ext.py`` as ``mmcv._ext`` (that file needs
only torch and torchvision, never the ``bdd100k_ins_seg`` package, so
``import mmcv.ops`` works in any order, with or without our package).

A real compiled ``mmcv._ext`` is found by Python's path finder, which comes
before this finder, so it always wins. Uninstalling the distribution removes
the ``.pth`` file and with it the finder.

Importing ``bdd100k_ins_seg`` calls :func:`install` too, so a source checkout
on ``PYTHONPATH`` (without the ``.pth``) behaves the same once the package is
imported first.
"""
import os.path as osp
import sys

MODULE = 'mmcv._ext'
FINDER_NAME = 'BDD100KInsSegStandInFinder'
PTH_NAME = 'bdd100k_ins_seg_ops.pth'
# One line, run by site.py for every interpreter: it must stay cheap (no
# import), and a broken installation must not break start-up (the finder
# imports this module only when mmcv._ext is looked up).
# (site.py may process the same site-packages twice, e.g. through a venv's
# lib64 -> lib link: register once.)
PTH_LINE = (
    "import sys; any(type(f).__name__ == "
    f"'{FINDER_NAME}' for f in sys.meta_path) or "
    f"sys.meta_path.append(type('{FINDER_NAME}', (), "
    "{'find_spec': staticmethod(lambda name, path=None, target=None: "
    "__import__('_bdd100k_ins_seg_hook').find_spec(name, path, target) "
    f"if name == '{MODULE}' else None)}})())")


def stand_in_source():
    """Path of the stand-in's source file (next to this module)."""
    return osp.join(osp.dirname(osp.abspath(__file__)), 'bdd100k_ins_seg',
                    'plugin', 'ops', 'torchvision_ext.py')


def find_spec(name, path=None, target=None):
    """Spec that loads the torchvision-backed stand-in as ``mmcv._ext``.

    Called only when no earlier finder (Python's path finder included)
    found ``mmcv._ext``, i.e. when mmcv's compiled extension is absent.
    """
    if name != MODULE:
        return None
    source = stand_in_source()
    if not osp.isfile(source):
        return None
    import importlib.util
    return importlib.util.spec_from_file_location(MODULE, source)


def is_registered():
    """Whether a stand-in finder (ours or the ``.pth`` one) is active."""
    return any(type(f).__name__ == FINDER_NAME for f in sys.meta_path)


def install():
    """Append the finder to ``sys.meta_path`` unless one is there already."""
    if not is_registered():
        sys.meta_path.append(_Finder())


_Finder = type(FINDER_NAME, (), {
    '__doc__': 'Meta-path finder of last resort for mmcv._ext.',
    'find_spec': staticmethod(find_spec)})
