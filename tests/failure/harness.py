"""Helpers for failure tests: the billing job at test size, kills, and waiting on conditions."""
from __future__ import annotations

import logging
import os
import re
import runpy
import signal
from pathlib import Path
from typing import Any

import psutil

import raystream as rs
from tests.helpers.support import wait_until

logger = logging.getLogger(__name__)

BILLING = Path(__file__).resolve().parents[2] / "jobs" / "billing.py"


def load_billing(monkeypatch, *, events: int, rate: float, out: str, file_rows: int = 50_000,
                 invoices: bool = False, roll_size: int | None = None,
                 roll_interval: float | None = None, roll: str = "") -> dict[str, Any]:
    """jobs/billing.py at test size: its `job`, `verify` and `setup`. Without `invoices`
    only the running totals (two chains); the invoices have tests of their own. The
    totals' FileSink rolls by FileSink's defaults, or by `roll_size` and `roll_interval`
    when given; `roll="checkpoint"`: one file per subtask and checkpoint."""
    monkeypatch.setenv("BILLING_INVOICES", "1" if invoices else "0")
    monkeypatch.setenv("BILLING_EVENTS", str(events))
    monkeypatch.setenv("BILLING_RATE", str(rate))
    monkeypatch.setenv("BILLING_OUT", out)
    monkeypatch.setenv("BILLING_FILE_ROWS", str(file_rows))
    monkeypatch.setenv("BILLING_ROLL_SIZE", str(roll_size or ""))
    monkeypatch.setenv("BILLING_ROLL_INTERVAL", str(roll_interval or ""))
    monkeypatch.setenv("BILLING_ROLL", roll)
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


def subtask(status: rs.JobStatus, step_id: str) -> str:
    """The name of the first subtask of the chain that starts with step `step_id`
    ("invoice[0]", "invoice+row[0]"; not "invoice.late+correction[0]", the chain of the
    step's late output)."""
    return next(name for name in sorted(status.pids) if re.fullmatch(re.escape(step_id) + r"(\+[^\[]*)?\[\d+\]", name))


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


def verify_stopped(rows: list[dict], usage_event: Any, partitions: int) -> tuple[int, int, int]:
    """Check the output of a billing job that was stopped early: the sources emitted a
    prefix of each partition, so the committed event ids of partition p must be exactly
    p, p+P, p+2P, ... up to the last one, each once, and every customer's totals must be
    the running sums of exactly its committed events. Returns (events, lost, duplicated)."""
    ids = [r["event_id"] for r in rows]
    counts: dict[int, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    duplicated = sum(n - 1 for n in counts.values())
    lost = 0
    for p in range(partitions):
        mine = sorted(i for i in counts if i % partitions == p)
        if mine:
            lost += len(range(p, mine[-1] + 1, partitions)) - len(mine)
    by_customer: dict[str, list[dict]] = {}
    for r in rows:
        by_customer.setdefault(r["customer"], []).append(r)
    for customer_rows in by_customer.values():
        customer_rows.sort(key=lambda r: r["total"])
        previous = 0
        for r in customer_rows:
            assert r == {**usage_event(r["event_id"]), "total": r["total"]}, r
            assert r["total"] - previous == r["cents"], f"a total skipped or repeated an event: {r}"
            previous = r["total"]
    return len(counts), lost, duplicated
