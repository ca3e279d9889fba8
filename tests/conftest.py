"""Shared pytest configuration.

The suite runs with ``pytest -n 2`` on small CPU machines: one intra-op thread per worker avoids
oversubscription (the tensors are tiny, so extra threads only add overhead), and every test
starts from the same random state so that failures reproduce.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
