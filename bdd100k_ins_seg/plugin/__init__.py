"""What mmdet loads: importing this package registers the BDD100K datasets
(:mod:`.datasets`), the official metric (:mod:`.metric`) and the bfloat16
optimizer wrapper (:mod:`.optim`) with mmdet's registries, makes sure the
compiled-op stand-in serves ``mmcv._ext`` (:mod:`.ops`; the installed
distribution already does it at interpreter start), installs the safe
checkpoint loader (:mod:`.checkpoint`) and speeds up ``mmdet::_base_``
config lookups (:mod:`.config_lookup`). Before all that, the start-up
warnings the user cannot act on are silenced.

Every config imports it: ``custom_imports = dict(imports=
['bdd100k_ins_seg.plugin'])``; code without a config calls
:func:`bdd100k_ins_seg.register_all_modules`. Its modules import the light
layers (``formats``, ``evaluation``) and ``inference``, never ``engine``.
"""
from bdd100k_ins_seg.cli import quiet_known_warnings as _quiet_known_warnings

_quiet_known_warnings()

from bdd100k_ins_seg.plugin.ops import install as _install_ops  # noqa: E402

_install_ops()

from bdd100k_ins_seg.plugin.checkpoint import \
    install as _install_checkpoint  # noqa: E402

_install_checkpoint()

from bdd100k_ins_seg.plugin import datasets  # noqa: E402,F401
from bdd100k_ins_seg.plugin import metric  # noqa: E402,F401
from bdd100k_ins_seg.plugin import optim  # noqa: E402,F401
from bdd100k_ins_seg.plugin.config_lookup import \
    install_base_config_lookup  # noqa: E402
from bdd100k_ins_seg.plugin.ops import ops_backend  # noqa: E402,F401

install_base_config_lookup()
_quiet_known_warnings()  # again: mmengine's loggers are there now
