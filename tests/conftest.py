"""Shared pytest configuration.

The suite runs with ``pytest -n 2`` on small CPU machines: one intra-op thread per worker avoids
oversubscription (the tensors are tiny, so extra threads only add overhead), and every test
starts from the same random state so that failures reproduce.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def experiment_script() -> Callable[[str], ModuleType]:
    """Load ``experiments/<name>.py`` as a module (the scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
