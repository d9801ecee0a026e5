"""The tests see the warnings a user sees.

Importing bdd100k_ins_seg filters the known harmless start-up warnings
(bdd100k_ins_seg.cli.KNOWN_WARNINGS), but pytest restores the warning
filters around collection and every test; this applies the same filter
again at the start of each test, before its fixtures (module-scoped ones
included) run, and nothing more.
"""
import pytest

from bdd100k_ins_seg.cli import quiet_known_warnings


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    quiet_known_warnings()
