"""The tests see the warnings a user sees; threads; the ``cuda`` marker.

Importing bdd100k_ins_seg filters the known harmless start-up warnings
(bdd100k_ins_seg.cli.KNOWN_WARNINGS), but pytest restores the warning
filters around collection and every test; this applies the same filter
again at the start of each test, before its fixtures (module-scoped ones
included) run, and nothing more.

Tests marked ``@pytest.mark.cuda`` need a CUDA device: they run with
``pytest -m cuda`` (``make gpu-check``), where each asserts that CUDA is
present, and are deselected (listed as such) in every other run.
"""
import pytest

from bdd100k_ins_seg.cli import quiet_known_warnings
from bdd100k_ins_seg.threads import configure_threads

configure_threads(num_workers=0)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    quiet_known_warnings()


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'cuda: needs a CUDA device; selected by -m cuda '
        '(make gpu-check), deselected otherwise')


def pytest_collection_modifyitems(config, items):
    if 'cuda' in (config.option.markexpr or ''):
        return
    kept = [item for item in items if not item.get_closest_marker('cuda')]
    if len(kept) != len(items):
        config.hook.pytest_deselected(
            items=[item for item in items if item not in kept])
        items[:] = kept
