"""The devices a device-parametrized test runs on.

CPU always; the CUDA case is marked ``cuda``, so ``make gpu-check``
(``pytest -m cuda``) runs it and every other run deselects it and names it
at its end (tests/conftest.py), on a CUDA machine too.
"""
from contextlib import contextmanager

import pytest

CPU_AND_CUDA = ['cpu', pytest.param('cuda', marks=pytest.mark.cuda)]


@contextmanager
def cuda_test_settings(node):
    """Around a test marked ``cuda`` (tests/conftest.py): TF32 off, so that
    float32 on the GPU is float32 and compares with CPU results (PyTorch's
    default runs cuDNN convolutions in TF32 on Ampere and later:
    bdd100k_ins_seg.engine.tf32); the settings are restored afterwards.
    Other tests run as they are."""
    if node.get_closest_marker('cuda') is None:
        yield
        return
    from bdd100k_ins_seg.engine.tf32 import tf32_mode
    with tf32_mode(False):
        yield
