"""Integration fixtures: one real local Ray per test module (ray.init costs seconds)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def ray_local(s3_endpoint: str) -> Iterator[None]:
    """A local Ray with 2 CPUs, started after the S3 endpoint is in the environment."""
    import ray

    from raystream._runtime.driver import ensure_ray

    assert not ray.is_initialized()
    ensure_ray(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


def live_job_actors(job_name: str = "") -> list[str]:
    """Names of the raystream actors (of `job_name`, or any) still alive in this Ray."""
    import ray

    prefix = f"raystream:{job_name}:" if job_name else "raystream:"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch) -> None:
    """Default checkpoint storage (./raystream-checkpoints) lands in the test's own directory."""
    monkeypatch.chdir(tmp_path)
