"""Build hooks that ship the start-up ``.pth`` file (metadata: setup.cfg).

``bdd100k_ins_seg_ops.pth`` must land at the top of site-packages, where
Python's ``site`` module runs it at every start-up (see
``_bdd100k_ins_seg_hook``). setuptools has no setting for that, so:

* regular wheels (``pip install .``): ``build_py`` writes the file into the
  build folder's root, which becomes the wheel's root, i.e. site-packages;
* editable wheels (``pip install -e .``, PEP 660): setuptools' editable
  strategy writes only its own ``.pth``/finder, so the strategy is wrapped
  to add ours to the same wheel.

Both wheels list the file in their RECORD, so ``pip uninstall`` removes it.
"""
import os
import os.path as osp
import runpy

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = osp.dirname(osp.abspath(__file__))


# The hook module is plain stdlib code: run it for its constants (the build
# may run without the project folder on sys.path).
_HOOK = runpy.run_path(osp.join(HERE, '_bdd100k_ins_seg_hook.py'))
PTH_NAME = _HOOK['PTH_NAME']
PTH_CONTENT = _HOOK['PTH_LINE'] + '\n'


class BuildPyWithPth(build_py):
    """build_py that also writes the start-up .pth into the build root."""

    def _pth_path(self):
        return osp.join(self.build_lib, PTH_NAME)

    def run(self):
        super().run()
        if not self.editable_mode:
            os.makedirs(self.build_lib, exist_ok=True)
            with open(self._pth_path(), 'w', encoding='utf-8') as f:
                f.write(PTH_CONTENT)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs.append(self._pth_path())
        return outputs


class _StrategyWithPth:
    """Wraps setuptools' editable strategy: also writes our .pth."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_CONTENT.encode('utf-8'))

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.strategy.__exit__(*exc_info)


class EditableWheelWithPth(editable_wheel):
    """editable_wheel that also installs the start-up .pth."""

    def _select_strategy(self, *args, **kwargs):
        # setuptools >= 64 (this project pins >= 77, < 82) decides here how
        # the editable wheel exposes the sources; see pyproject.toml.
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={'build_py': BuildPyWithPth,
                'editable_wheel': EditableWheelWithPth})
