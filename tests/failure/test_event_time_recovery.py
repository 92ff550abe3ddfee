"""Event time under SIGKILL: windows, timers and window joins fire exactly once in the
committed output, with the contents of a run without failures, after real process kills
and after a rescale; pending timers of keys never seen again fire after the restore."""
from __future__ import annotations

import datetime as dt
import logging
import operator
import random
import runpy
from collections import Counter
from pathlib import Path

import pytest

import raystream as rs
from raystream.connectors import nexmark as nx
from raystream.windows import Session, Sliding, Tumbling
from tests.helpers.support import wait_until

from .harness import kill, load_billing, running

logger = logging.getLogger(__name__)

NEXMARK = Path(__file__).resolve().parents[2] / "jobs" / "nexmark"
# 30 s of event time, read in about 5 s at parallelism 2
CONFIG = nx.NexmarkConfig(events=30_000, partitions=2, event_rate=1_000, rate=6_000)


def _kill_one_of(handle: rs.JobHandle, steps: tuple[str, ...], rng: random.Random) -> str:
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    victims = sorted(name for name in status.pids if any(s in name.split("[")[0].split("+") for s in steps))
    assert victims, (steps, sorted(status.pids))
    victim = rng.choice(victims)
    logger.warning("killing %s", victim)
    kill(status.pids[victim])
    return victim


@pytest.mark.parametrize("query, steps", [
    pytest.param("q8", ("q8", "once"), marks=pytest.mark.extended),  # a window join, then a tumbling window
    pytest.param("q4", ("winners",), marks=pytest.mark.extended),
    pytest.param("q6", ("winners", "q6"), marks=pytest.mark.extended),
    pytest.param("q5", ("bids_per_auction", "q5"), marks=pytest.mark.extended),  # sliding, then tumbling
    pytest.param("q7", ("q7",), marks=pytest.mark.extended),
    pytest.param("q3", ("q3",), marks=pytest.mark.extended),  # an incremental join in keyed state
    pytest.param("q0", ("q0",), marks=pytest.mark.extended),  # stateless: the source chain
    pytest.param("q1", ("q1",), marks=pytest.mark.extended),
    pytest.param("q2", ("q2",), marks=pytest.mark.extended),
])
def test_nexmark_query_with_a_window_subtask_killed(query, steps, tmp_path):
    q = runpy.run_path(str(NEXMARK / f"{query}.py"), run_name="__raystream_job__")
    sink = rs.sinks.CollectSink(keep="last") if query in ("q4", "q6") else rs.sinks.FileSink(str(tmp_path / "out"))
    job = q["build"](CONFIG, sink).with_options(checkpoint=rs.CheckpointConfig(interval=0.3))
    handle = job.start()
    victim = _kill_one_of(handle, steps, random.Random(query))
    result = handle.wait()
    assert result.restarts >= 1, victim
    records = result.outputs["out"] if query in ("q4", "q6") else [emitted(r) for r in rs.sinks.read_files(str(tmp_path / "out"))]
    assert q["normalize"](records) == q["reference"](nx.events(CONFIG)), victim


@pytest.mark.parametrize("query, steps", [
    ("q8", ("q8", "once")),  # the window join over Arrow, then a window over Arrow
    pytest.param("q5", ("bids_per_auction", "most_bids", "with_most"), marks=pytest.mark.extended),
    pytest.param("q7", ("top_price", "with_top"), marks=pytest.mark.extended),
])
def test_columnar_nexmark_query_with_a_window_or_join_subtask_killed(query, steps, tmp_path):
    q = runpy.run_path(str(NEXMARK / "columnar" / f"{query}.py"), run_name="__raystream_job__")
    out = str(tmp_path / "out")
    job = q["build"](CONFIG, rs.sinks.FileSink(out, format="parquet")).with_options(
        checkpoint=rs.CheckpointConfig(interval=0.3))
    handle = job.start()
    victim = _kill_one_of(handle, steps, random.Random(query))
    result = handle.wait()
    assert result.restarts >= 1, victim
    assert q["normalize"](rs.sinks.read_files(out, format="parquet")) == q["reference"](nx.events(CONFIG)), victim


def emitted(row: dict):
    """The record a query emitted, from the row FileSink wrote for it (a pair as key and
    value, a tuple of other than two fields as value)."""
    return (row["key"], row["value"]) if row.keys() == {"key", "value"} else row["value"]


# --- windows of each kind and timers, with keys that stop early ----------------------------

EVENTS = 12_000
START = 1_767_225_600.0  # 2026-01-01 in seconds


def _events() -> list[list[tuple]]:
    """Three partitions of (id, key, time s, amount), times out of order by up to 1 s.
    Keys 100-119 appear only in the first fifth: their windows and timers are open when
    the job is killed later, and no record of theirs comes after the restore."""
    rng = random.Random(7)
    rows = []
    for i in range(EVENTS):
        key = 100 + i % 20 if i < EVENTS // 5 else i % 13
        rows.append((i, key, START + i * 0.005 + rng.uniform(0, 1), rng.randint(1, 9)))
    return [[r for r in rows if r[0] % 3 == p] for p in range(3)]


def _session_end(ctx: rs.ProcessContext, amount: int) -> None:
    """A session per key closes after 2 s of event time without its records."""
    total, last = ctx.state or (0, None)
    if last is not None:
        ctx.delete_event_timer(last + dt.timedelta(seconds=2))
    ctx.state = (total + amount, ctx.timestamp)
    ctx.set_event_timer(ctx.timestamp + dt.timedelta(seconds=2))


def _session_closed(ctx: rs.ProcessContext, when) -> None:
    total, _ = ctx.state
    ctx.emit(("closed", total, when.timestamp()))
    ctx.state = None


def _windows_job(tmp_path: Path, parallelism: int) -> rs.Job:
    job = rs.Job("windows", parallelism=parallelism, checkpoint=rs.CheckpointConfig(interval=0.3))
    source = rs.sources.ListSource(partitions=_events(), rate=800)
    keyed = (job.source("events", source, event_time=rs.EventTime(lambda e: e[2], max_delay=1.5))
             .key_by("by_key", lambda e: e[1], value=lambda e: e[3]))
    keyed.window(Tumbling(5)).reduce("tumbling", operator.add).sink("tumbling_out", rs.sinks.FileSink(
        str(tmp_path / "tumbling")))
    keyed.window(Sliding(6, 2)).reduce("sliding", operator.add).sink("sliding_out", rs.sinks.FileSink(
        str(tmp_path / "sliding")))
    keyed.window(Session(0.5)).reduce("session", operator.add).sink("session_out", rs.sinks.FileSink(
        str(tmp_path / "session")))
    keyed.process("timers", _session_end, on_timer=_session_closed).sink("timers_out", rs.sinks.FileSink(
        str(tmp_path / "timers")))
    return job


def _windowed(rows, assign) -> Counter:
    sums = Counter()
    for _, key, t, amount in rows:
        for start in assign(round(t * 1000)):
            sums[(key, start)] += amount
    return sums


def _sessions(rows, gap_ms: int) -> Counter:
    per_key: dict[int, list[tuple[int, int]]] = {}
    for _, key, t, amount in rows:
        per_key.setdefault(key, []).append((round(t * 1000), amount))
    sums = Counter()
    for key, items in per_key.items():
        items.sort()
        start, last, total = items[0][0], items[0][0], 0
        for t, amount in items:
            if t > last + gap_ms:
                sums[(key, start)] += total
                start, total = t, 0
            last, total = max(last, t), total + amount
        sums[(key, start)] += total
    return sums


def _check_outputs(tmp_path: Path) -> None:
    rows = [r for part in _events() for r in part]
    expected = {
        "tumbling": _windowed(rows, lambda t: [t - t % 5_000]),
        "sliding": _windowed(rows, lambda t: [s for s in range(t - t % 2_000, t - 6_000, -2_000)]),
        "session": _sessions(rows, 500),
    }
    for name, want in expected.items():
        got, seen = {}, Counter()
        for row in rs.sinks.read_files(str(tmp_path / name)):
            key, result = row["key"], row["value"]
            window = (key, round(dt.datetime.fromisoformat(result["start"]).timestamp() * 1000))
            got[window] = result["value"]
            seen[window] += 1
        assert set(seen.values()) == {1}, (name, [w for w, n in seen.items() if n > 1][:5])  # each fires once
        assert got == dict(want), name  # with the sum of exactly its records
    sessions = _sessions(rows, 2_000)
    closed = Counter()
    for row in rs.sinks.read_files(str(tmp_path / "timers")):
        closed[row["key"]] += row["value"][1]
    assert closed == Counter({k: sum(v for (kk, _), v in sessions.items() if kk == k) for k, _ in sessions})
    assert {k for k in closed if k >= 100} == set(range(100, 120))


@pytest.mark.extended  # 20 s; the columnar q8 kill and the CLI chaos run kill window subtasks in the default run
def test_windows_and_timers_with_a_subtask_killed(tmp_path):
    handle = _windows_job(tmp_path, 2).start()
    # after the keys that stop early are all in a checkpoint, with their windows and timers open
    wait_until(lambda: running(handle, checkpoints=3) and
               handle.status().steps["by_key"].records_in > EVENTS // 4, "a quarter of the events")
    victim = _kill_one_of(handle, ("tumbling", "sliding", "session", "timers"), random.Random(1))
    result = handle.wait()
    assert result.restarts >= 1, victim
    _check_outputs(tmp_path)


@pytest.mark.extended
def test_windows_and_timers_rescaled_while_open(tmp_path):
    handle = _windows_job(tmp_path, 2).start()
    wait_until(lambda: running(handle, checkpoints=2) and
               handle.status().steps["by_key"].records_in > EVENTS // 4, "a quarter of the events")
    rescale = handle.rescale(3)
    assert (rescale.from_parallelism, rescale.to_parallelism) == (2, 3)
    handle.wait()
    _check_outputs(tmp_path)


@pytest.mark.extended  # the default run's CLI chaos test checks the invoices too
def test_billing_invoices_with_the_window_subtask_killed(monkeypatch, tmp_path):
    """Hourly invoices and corrections of jobs/billing.py: every usage event in exactly one
    invoice or correction, every invoice fired once with the sum of its hour."""
    ns = load_billing(monkeypatch, events=16_000, rate=4_000, out=str(tmp_path / "out"), invoices=True)
    handle = ns["job"].with_options(checkpoint=rs.CheckpointConfig(interval=0.3)).start()
    _kill_one_of(handle, ("invoice",), random.Random(2))
    result = handle.wait()
    assert result.restarts >= 1
    assert ns["verify"]().ok
    invoices = ns["verify_invoices"]()
    assert invoices.ok, invoices
    assert invoices.invoices > 1_000 and invoices.corrections > 0, invoices


# --- a partition that goes quiet keeps its event time across a restore ---------------------


class _QuietAfter(rs.sources.Source):
    """Partition "steady": record i at START + i/50 s, 100 records a second, unbounded.
    Partition "quiet": 200 records at START .. START + 9.95 s in its first batch, then
    nothing more and no end, like a Kafka partition nobody writes to."""

    def list_partitions(self) -> list[str]:
        return ["steady", "quiet"]

    def build_partition(self, key, resume_state, batch_size):
        if key == "quiet":
            return _Quiet(resume_state or 0)
        return _Steady(resume_state or 0)


class _Quiet(rs.sources.SourcePartition):
    def __init__(self, offset: int):
        self.offset = offset

    def next_batch(self):
        batch = [("quiet", START + i * 0.05) for i in range(self.offset, 200)]
        self.offset = 200
        return batch  # [] from then on: no end

    def snapshot(self):
        return self.offset


class _Steady(rs.sources.SourcePartition):
    def __init__(self, emitted: int):
        self.emitted = emitted
        self.pacer = rs.sources.SequenceSource(None, rate=100).build_partition("0", emitted, 1000)

    def next_batch(self):
        batch = self.pacer.next_batch()
        self.emitted = self.pacer.snapshot()
        return [("steady", START + i / 50) for i in batch]

    def snapshot(self):
        return self.emitted

    def next_awake(self):
        return self.pacer.next_awake()


def _counts_per_second(name: str, source: rs.sources.Source, event_time: rs.EventTime, out: str) -> rs.Job:
    """Records per 1 s tumbling window, into `out` at each checkpoint (read while it runs)."""
    job = rs.Job(name, parallelism=1, checkpoint=rs.CheckpointConfig(interval=0.3))
    (job.source("events", source, event_time=event_time)
     .key_by("all", lambda r: 0, value=lambda r: 1)
     .window(Tumbling(1)).reduce("count", operator.add)
     .map("row", lambda kv: {"start": kv[1].start.timestamp() - START, "count": kv[1].value})
     .sink("out", rs.sinks.FileSink(out, roll="checkpoint")))
    return job


def test_a_quiet_partition_keeps_holding_the_watermark_where_it_was_after_a_restore(tmp_path):
    """The watermark is min(steady, quiet): steady's time until it passes quiet's newest,
    9.95 s (about 5 s after the start). A subtask is killed before that, after a
    checkpoint holds all of quiet's records: the restored watermark generator must know
    quiet's newest time, or quiet holds the watermark at the minimum and no window fires
    after the restore (idle_after=None: quiet is never idle)."""
    out = str(tmp_path / "windows")
    handle = _counts_per_second("quiet", _QuietAfter(), rs.EventTime(lambda e: e[1]), out).start()
    try:
        status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
        assert status.steps["events"].records_out >= 200 and len(rs.sinks.read_files(out)) < 9
        kill(status.pids[sorted(status.pids)[0]])
        wait_until(lambda: len(rs.sinks.read_files(out)) >= 9, "windows [0, 9 s) to fire after the restore",
                   timeout=40)
    finally:
        handle.stop()
        result = handle.wait()
    assert result.restarts >= 1
    counts = sorted((r["start"], r["count"]) for r in rs.sinks.read_files(out))
    assert counts[:9] == [(float(s), 70) for s in range(9)]  # 50 of steady and 20 of quiet per second


class _StoppedAndEmpty(rs.sources.Source):
    """Partition "busy": 300 records over START .. START + 2.99 s, all in its first batch,
    then nothing and no end; partition "empty" never has a record."""

    def list_partitions(self) -> list[str]:
        return ["busy", "empty"]

    def build_partition(self, key, resume_state, batch_size):
        return _Stopped(key, resume_state or 0)


class _Stopped(rs.sources.SourcePartition):
    def __init__(self, key: str, offset: int):
        self.key, self.offset = key, offset

    def next_batch(self):
        n = 300 if self.key == "busy" else 0
        batch = [START + i * 0.01 for i in range(self.offset, n)]
        self.offset = max(self.offset, n)
        return batch  # [] from then on: no end

    def snapshot(self):
        return self.offset


@pytest.mark.extended
def test_windows_fire_after_a_restore_with_every_partition_quiet(tmp_path):
    """A subtask killed after a checkpoint holds every record and before idle_after: after
    the restore both partitions go quiet in the first round, and the windows the busy one
    completed fire as they would have without the failure (review of stop 36: the minimum
    of the quiet partitions' watermarks went out, the empty one's, and none fired)."""
    out = str(tmp_path / "windows")
    handle = _counts_per_second("stopped", _StoppedAndEmpty(), rs.EventTime(lambda t: t, idle_after=4), out).start()
    try:
        status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
        assert status.steps["events"].records_out == 300 and not rs.sinks.read_files(out)
        kill(status.pids[sorted(status.pids)[0]])
        wait_until(lambda: len(rs.sinks.read_files(out)) >= 2, "windows [0, 2 s) to fire after the restore",
                   timeout=40)
    finally:
        handle.stop()
        result = handle.wait()
    assert result.restarts >= 1
    assert sorted((r["start"], r["count"]) for r in rs.sinks.read_files(out)) == [(0.0, 100), (1.0, 100)]
