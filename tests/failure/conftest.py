"""Failure tests: real process kills on a real local Ray (one per module)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def ray_local(s3_endpoint: str) -> Iterator[None]:
    import ray

    from raystream._runtime.driver import ensure_ray

    assert not ray.is_initialized()
    ensure_ray(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
