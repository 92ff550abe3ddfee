"""Helpers for failure tests: the billing job at test size, kills, and waiting on conditions."""
from __future__ import annotations

import logging
import os
import runpy
import signal
import time
from pathlib import Path
from typing import Any, Callable

import psutil

import raystream as rs

logger = logging.getLogger(__name__)

BILLING = Path(__file__).resolve().parents[2] / "jobs" / "billing.py"


def load_billing(monkeypatch, *, events: int, rate: float, out: str) -> dict[str, Any]:
    """jobs/billing.py at test size: its `job`, `verify` and `setup`."""
    monkeypatch.setenv("BILLING_EVENTS", str(events))
    monkeypatch.setenv("BILLING_RATE", str(rate))
    monkeypatch.setenv("BILLING_OUT", out)
    return runpy.run_path(str(BILLING), run_name="__raystream_job__")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


def running(handle: rs.JobHandle, *, checkpoints: int = 0, attempt: int = 1) -> rs.JobStatus | None:
    """The status once the job runs attempt >= `attempt` with >= `checkpoints` complete, else None."""
    status = handle.status()
    if status.state == "running" and status.attempt >= attempt and status.pids and \
            status.checkpoints.completed >= checkpoints:
        return status
    return None


def kill(pid: int) -> None:
    """SIGKILL a process and wait until it is gone (or a zombie its parent has not reaped)."""
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, f"pid {pid} to exit", timeout=10)
