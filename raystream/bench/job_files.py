"""The workloads that run the jobs in jobs/ of a source checkout: billing, and the
Nexmark queries (per record, and over Arrow: the columnar queries' baselines are in
nexmark_arrow.py)."""
from __future__ import annotations

import importlib.util
import os
import runpy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import raystream as rs
from raystream.bench.modes import Mode
from raystream.bench.synthetic import MeasureSink
from raystream.connectors import nexmark as nx

JOBS = Path(__file__).resolve().parents[2] / "jobs"  # a source checkout; the jobs are not installed


def _job_file(relative: str) -> str:
    path = JOBS / relative
    if not path.is_file():
        raise SystemExit(f"{path} not found: the billing and Nexmark workloads run from a source checkout")
    return str(path)


#: billing_dedup's `within`, in seconds of event time: one day, 172,800 events (the
#: generator spaces them 0.5 s of event time apart), 3 to 6 s of the run at the
#: 31,000-57,000 events/s billing reached with the dedup step on two cores: several 1 s
#: checkpoint intervals. So a copy is dropped if it comes within a few checkpoints of its
#: first: a producer's retry, or a record at-least-once reads again after a restore that
#: the step had seen before its snapshot (unaligned barriers let records past a source's
#: barrier reach it first). Copies of records the restored state never saw pass again
#: (docs/guide/dedup.md). The state holds the last day's ids: 172,800 entries, each with
#: a timer.
DEDUP_WITHIN = 86_400.0


def billing_job(events: int, mode: Mode, storage: str, out: str) -> rs.Job:
    """jobs/billing.py with `events` events read as fast as the job goes, writing to `out`;
    with `mode.dedup`, a dedup step by event id within DEDUP_WITHIN before its state."""
    os.environ.update(BILLING_EVENTS=str(events), BILLING_RATE="1e12", BILLING_OUT=out)
    if mode.dedup:
        os.environ["BILLING_DEDUP"] = str(DEDUP_WITHIN)
    try:
        ns = runpy.run_path(_job_file("billing.py"), run_name="__raystream_job__")
    finally:
        os.environ.pop("BILLING_DEDUP", None)  # the next job built in this process has none
    return ns["job"].with_options(guarantee=mode.guarantee, audit=None, checkpoint=rs.CheckpointConfig(
        interval=mode.interval, storage=storage, retain=1000))


def billing_baseline(events: int) -> float:
    ns = runpy.run_path(_job_file("billing.py"), run_name="__raystream_bench__")
    usage_event = ns["usage_event"]
    t0 = time.perf_counter()
    totals: dict[str, int] = {}
    for i in range(events):
        e = usage_event(i)
        totals[e["customer"]] = totals.get(e["customer"], 0) + e["cents"]
    return time.perf_counter() - t0


def billing_arrow_job(events: int, mode: Mode, storage: str, out: str) -> rs.Job:
    """jobs/billing_arrow.py (billing with columnar steps) with `events` events read as fast
    as the job goes, writing Parquet to `out`."""
    ns = runpy.run_path(_job_file("billing_arrow.py"), run_name="__raystream_bench__")
    return ns["build"](out, events, rate=None).with_options(
        guarantee=mode.guarantee, checkpoint=rs.CheckpointConfig(interval=mode.interval, storage=storage,
                                                                 retain=1000))


def billing_arrow_baseline(events: int, batch: int = 65_536) -> float:
    """The same computation in one process over the same generator, a batch at a time in
    pyarrow: each customer's total and count, and the cents and count per customer and
    hour, folded into dicts per distinct key of a batch (late reports included: no
    watermark in one process)."""
    ns = runpy.run_path(_job_file("billing_arrow.py"), run_name="__raystream_bench__")
    usage_batch, hour_ms = ns["usage_batch"], ns["HOUR_MS"]
    t0 = time.perf_counter()
    totals: dict[str, list[int]] = {}
    invoices: dict[tuple[str, int], list[int]] = {}
    for start in range(0, events, batch):
        ids = pa.RecordBatch.from_arrays([pa.array(np.arange(start, min(start + batch, events)))], names=["value"])
        rows = pa.Table.from_batches([usage_batch(ids)])
        hour = (rows.column("time").to_numpy() * 1000).astype(np.int64) // hour_ms * hour_ms
        rows = rows.append_column("hour", pa.array(hour))
        per_customer = rows.group_by("customer").aggregate([("cents", "sum"), ("cents", "count")])
        for customer, cents, n in zip(*(c.to_pylist() for c in per_customer.columns)):
            t = totals.setdefault(customer, [0, 0])
            t[0] += cents
            t[1] += n
        per_hour = rows.group_by(["customer", "hour"]).aggregate([("cents", "sum"), ("cents", "count")])
        for customer, h, cents, n in zip(*(c.to_pylist() for c in per_hour.columns)):
            t = invoices.setdefault((customer, h), [0, 0])
            t[0] += cents
            t[1] += n
    return time.perf_counter() - t0


def nexmark_module(query: str) -> Any:
    """jobs/nexmark/<query>.py: "q5", or "columnar/q5" for the query over Arrow."""
    name = "nexmark_" + query.replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, _job_file(f"nexmark/{query}.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    os.environ.setdefault("NEXMARK_OUT", os.path.join(os.environ.get("TMPDIR", "/tmp"), "raystream-bench-nexmark"))
    spec.loader.exec_module(module)
    return module


def nexmark_config(events: int) -> nx.NexmarkConfig:
    return nx.NexmarkConfig(events=events, partitions=2, event_rate=10_000)


def nexmark_job(query: str, events: int, mode: Mode, storage: str) -> rs.Job:
    job = nexmark_module(query).build(nexmark_config(events), MeasureSink())
    return job.with_options(guarantee=mode.guarantee, checkpoint=rs.CheckpointConfig(
        interval=mode.interval, storage=storage, retain=1000))


def nexmark_baseline(query: str, events: int) -> float:
    module = nexmark_module(query)
    t0 = time.perf_counter()
    module.reference(nx.events(nexmark_config(events)))
    return time.perf_counter() - t0


NEXMARK = ("q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8")
