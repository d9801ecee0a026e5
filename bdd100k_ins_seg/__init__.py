"""BDD100K instance segmentation on MMDetection 3.x.

Importing this package (every config does, through ``custom_imports``) makes
sure the compiled-op stand-in is registered (the installed distribution
already does it at interpreter start, see ``_bdd100k_ins_seg_hook``), installs
the safe checkpoint loader, then registers the BDD100K datasets and metric with
mmdet's registries and speeds up ``mmdet::_base_`` config lookups.
Before all that, the start-up warnings the user cannot act on are silenced
(``cli.quiet_known_warnings``).
"""
from .cli import quiet_known_warnings as _quiet_known_warnings

_quiet_known_warnings()

from .ops import install as _install_ops  # noqa: E402

_install_ops()

from .ops import ops_backend  # noqa: E402
from .checkpoint import install as _install_checkpoint  # noqa: E402

_install_checkpoint()

__version__ = '0.1.0'
__all__ = ['ops_backend', '__version__']

from . import datasets  # noqa: E402,F401  (registers BDD100K datasets)
from . import evaluation  # noqa: E402,F401  (registers BDD100KInsSegMetric)
from . import optim  # noqa: E402,F401  (registers BF16OptimWrapper)
from .config_lookup import install_base_config_lookup  # noqa: E402

install_base_config_lookup()
