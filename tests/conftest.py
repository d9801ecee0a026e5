"""Threads for the test process, and the ``cuda`` marker.

Tests marked ``@pytest.mark.cuda`` need a CUDA device: they run with
``pytest -m cuda`` (``make gpu-check``), where each asserts that CUDA is
present, and are deselected (listed as such) in every other run.
"""
from bdd100k_ins_seg.threads import configure_threads

configure_threads(num_workers=0)


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
