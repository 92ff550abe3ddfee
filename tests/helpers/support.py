"""Helpers shared by the integration and failure tests."""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Callable, Iterator


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A TCP port of 127.0.0.1 that refuses connections for the block: bound and never
    listening, so no other process can take it meanwhile (a port `free_port` returned
    can be taken by the next process that binds one, a Ray worker, say)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


def live_job_actors(job_name: str = "") -> list[str]:
    """Names of the raystream actors (of `job_name`, or any) still alive in this Ray."""
    import ray

    prefix = f"raystream:{job_name}:" if job_name else "raystream:"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
