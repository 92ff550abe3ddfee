"""Helpers for failure tests: the billing job at test size, kills, and waiting on conditions."""
from __future__ import annotations

import logging
import os
import runpy
import signal
from pathlib import Path
from typing import Any

import psutil

import raystream as rs
from tests.support import wait_until

logger = logging.getLogger(__name__)

BILLING = Path(__file__).resolve().parents[2] / "jobs" / "billing.py"


def load_billing(monkeypatch, *, events: int, rate: float, out: str, file_rows: int = 50_000) -> dict[str, Any]:
    """jobs/billing.py at test size: its `job`, `verify` and `setup`."""
    monkeypatch.setenv("BILLING_EVENTS", str(events))
    monkeypatch.setenv("BILLING_RATE", str(rate))
    monkeypatch.setenv("BILLING_OUT", out)
    monkeypatch.setenv("BILLING_FILE_ROWS", str(file_rows))
    return runpy.run_path(str(BILLING), run_name="__raystream_job__")


def running(handle: rs.JobHandle, *, checkpoints: int = 0, attempt: int = 1) -> rs.JobStatus | None:
    """The status once the job runs attempt >= `attempt` with >= `checkpoints` complete, else None."""
    status = handle.status()
    if status.state == "running" and status.attempt >= attempt and status.pids and \
            status.checkpoints.completed >= checkpoints:
        return status
    return None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill(pid: int) -> None:
    """SIGKILL a process and wait until it is gone (or a zombie its parent has not reaped)."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _gone(pid), f"pid {pid} to exit", timeout=10)


def kill_all(pids: list[int]) -> int:
    """SIGKILL several processes back to back, then wait for all. Returns how many this
    call killed: after the first kill the coordinator starts tearing the others down, so a
    later one may already be gone."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    wait_until(lambda: all(_gone(p) for p in pids), f"pids {pids} to exit", timeout=10)
    return killed
