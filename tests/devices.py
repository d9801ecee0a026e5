"""The devices a device-parametrized test runs on.

CPU always; the CUDA case is marked ``cuda``, so ``make gpu-check``
(``pytest -m cuda``) runs it and every other run deselects it and names it
at its end (tests/conftest.py), on a CUDA machine too.
"""
import pytest

CPU_AND_CUDA = ['cpu', pytest.param('cuda', marks=pytest.mark.cuda)]
