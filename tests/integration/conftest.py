"""Integration tests: real jobs on a real local Ray (one per module)."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_local) -> None:
    """One Ray per module (ray.init costs seconds)."""


@pytest.fixture(autouse=True)
def _tmp(in_tmp_dir) -> None:
    """Checkpoints of each test stay in its own directory."""
