"""BDD100K instance segmentation on MMDetection 3.x.

Importing this package does nothing beyond defining :data:`__version__` and
:func:`register_all_modules`: the BDD100K file formats, the evaluator, the
model catalogue and the drawing code (``formats``, ``evaluation``, ``zoo``,
``visualization``) load numpy, Pillow and the official toolkit only.

What mmdet loads lives in :mod:`bdd100k_ins_seg.plugin`; the configs import
it through ``custom_imports``, and :func:`register_all_modules` imports it
for code that builds models without a config file's help. The layers and
where each lives: ``docs/architecture.md``.

It silences the start-up warnings a user cannot act on, and nothing else
(:func:`bdd100k_ins_seg.cli.quiet_known_warnings`).
"""
from bdd100k_ins_seg.cli import quiet_known_warnings as _quiet_known_warnings

_quiet_known_warnings()

__version__ = '0.1.0'
__all__ = ['__version__', 'register_all_modules']


def register_all_modules(init_default_scope: bool = True) -> None:
    """Register mmdet's modules and ours (datasets, metric, optimizer
    wrapper, hooks, the op stand-in, the checkpoint loader), as
    :func:`mmdet.utils.register_all_modules` does for mmdet's.

    Args:
        init_default_scope (bool): make ``mmdet`` the default registry
            scope, as mmdet's function does.
    """
    from mmdet.utils import register_all_modules as register_mmdet

    import bdd100k_ins_seg.engine.schedule  # noqa: F401  (its hook)
    import bdd100k_ins_seg.plugin  # noqa: F401  (registers on import)
    register_mmdet(init_default_scope=init_default_scope)
