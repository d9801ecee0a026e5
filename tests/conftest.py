"""The tests see the warnings a user sees.

Importing bdd100k_ins_seg filters the known harmless start-up warnings
(bdd100k_ins_seg.cli.KNOWN_WARNINGS), but pytest restores the warning
filters around collection and every test; this applies the same filter
inside each test, and nothing more.
"""
import pytest

from bdd100k_ins_seg.cli import quiet_known_warnings


@pytest.fixture(autouse=True)
def _known_warnings_filtered():
    quiet_known_warnings()
    yield
