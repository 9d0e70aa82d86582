"""Fixtures shared across test folders (opt-in: nothing here is autouse)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a busy 2-core machine two OpenMP threads spin-wait on each other and
    small-tensor work runs up to 10x slower. Results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
