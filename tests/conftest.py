"""Shared test configuration: keep torch small and deterministic on a 2-core machine."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
