"""The repository's scripts (train.py, test.py, tools/*.py) as modules, so
tests can call their functions and main() in-process."""
import importlib.util
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_script(path: str, name: str):
    """The script at ``path`` (relative to the repository) loaded as a
    fresh module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
