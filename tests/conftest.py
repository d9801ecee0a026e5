"""The tests see the warnings a user sees; threads; the ``cuda`` marker.

Threads: the cores shared by the pytest-xdist workers (``make test`` runs
one per core), as :mod:`bdd100k_ins_seg.engine.threads` shares them between the
processes of a job. The scripts the tests start get one thread, or the
worker's share.

Importing bdd100k_ins_seg filters the known harmless start-up warnings
(bdd100k_ins_seg.cli.KNOWN_WARNINGS), but pytest restores the warning
filters around collection and every test; this applies the same filter
again at the start of each test, before its fixtures (module-scoped ones
included) run, and nothing more.

Tests marked ``@pytest.mark.cuda`` (tests/test_cuda.py, and the CUDA case
of tests/devices.py's ``CPU_AND_CUDA``) need a CUDA device: they run with
``pytest -m cuda`` (``make gpu-check``), where each fails at its set-up if
CUDA is absent, and runs with TF32 off (tests/devices.py); every other run
deselects them and names them at its end.
"""
import os
from collections import Counter

import pytest
import torch

from bdd100k_ins_seg.inference import fast_conv
from bdd100k_ins_seg.cli import quiet_known_warnings
from bdd100k_ins_seg.engine.threads import ENV, available_cores, plan_threads

# The suite takes the same Winograd paths on every CPU: the rule of AVX2
# CPUs (from 128 channels; AVX-512 ones use 512 outside the tests).
# test_fast_conv checks the choice by CPU.
fast_conv.MIN_CHANNELS = fast_conv.MIN_CHANNELS_DEFAULT

WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT') or 1)
THREADS = plan_threads(processes=WORKERS)  # OMP_NUM_THREADS, if set, wins
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ.setdefault(ENV, str(THREADS))  # for the scripts started

# The CUDA tests left out, named at the end of the run. Under pytest-xdist
# the workers collect and deselect, and send the names to the controller.
CUDA_DESELECTED = set()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (``make test``): the cores this process may use, at most
    4 (more workers only add start-ups for ~30 test files)."""
    return min(4, available_cores())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    quiet_known_warnings()
    if item.get_closest_marker('cuda') and not torch.cuda.is_available():
        pytest.fail('needs a CUDA device (torch.cuda.is_available() is '
                    'False): run it on a CUDA machine, or without -m cuda',
                    pytrace=False)


@pytest.fixture(autouse=True)
def _cuda_test_settings(request):
    """TF32 off around the tests marked ``cuda`` (tests/devices.py)."""
    from devices import cuda_test_settings
    with cuda_test_settings(request.node):
        yield


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'cuda: needs a CUDA device; selected by -m cuda '
        '(make gpu-check), deselected otherwise')


def pytest_collection_modifyitems(config, items):
    if 'cuda' in (config.option.markexpr or ''):
        return
    kept = [item for item in items if not item.get_closest_marker('cuda')]
    if len(kept) != len(items):
        dropped = [item for item in items if item not in kept]
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        CUDA_DESELECTED.update(item.nodeid for item in dropped)


def pytest_sessionfinish(session):
    if hasattr(session.config, 'workeroutput'):  # an xdist worker
        session.config.workeroutput['cuda_deselected'] = sorted(
            CUDA_DESELECTED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    CUDA_DESELECTED.update(
        getattr(node, 'workeroutput', {}).get('cuda_deselected', ()))


def pytest_terminal_summary(terminalreporter):
    if CUDA_DESELECTED:
        cases = Counter(nodeid.split('[')[0] for nodeid in CUDA_DESELECTED)
        names = [name if n == 1 else f'{name} ({n} cases)'
                 for name, n in sorted(cases.items())]
        terminalreporter.write_line(
            f'{len(CUDA_DESELECTED)} tests deselected, they need CUDA '
            f'(make gpu-check runs them): {", ".join(names)}')
