"""State time-to-live under SIGKILL, and the key count it bounds (docs/guide/ttl.md).

A reduce with an event-time TTL counts each key's records since the key was last idle
for the TTL; some keys come back within it, some after it. By event time a key's state
is there for a record while the record's time is within the TTL of the key's newest
write, so the committed output is a function of the input alone: after a reduce subtask
is killed, exactly-once output equals the reference computed in plain Python.

On an unbounded run with a processing-time TTL the `state_keys` column of
`handle.metrics()` stays within the keys written in the last TTL (plus the time a timer
takes to fire), while the same reduce without a TTL holds every key it saw."""
from __future__ import annotations

import random
import time

import pytest

import raystream as rs
from raystream.event_time import to_millis
from raystream.sources import SequenceSource

from .harness import kill, running
from tests.helpers.support import wait_until

EVENTS = 16_000
RATE = 6_000  # records per second of both partitions
TTL_S = 1.0  # seconds of event time
INTERVAL = 0.3
START = 1_767_225_600.0
BLOCK = 20  # a partition's records 20 at a time go to a new key (200 ms of event time)


def time_of(n: int) -> float:
    return START + n * 0.005  # each partition in order: 10 ms per record


def key_of(n: int) -> str:
    """Each key's records are of one partition (n % 2), so their order is the input's.
    One record of each block goes back 0 to 12 blocks (up to 2.6 s): to a key written
    within the TTL, or to one that expired."""
    p, i = n % 2, n // 2
    block = i // BLOCK
    back = (block * 7919) % 13 if i % BLOCK == 7 else 0
    return f"{p}-{max(block - back, 0)}"


def reference() -> dict[int, tuple[str, int]]:
    """Record n -> (its key, the key's count after it): a key's count starts over when its
    record comes at or after the TTL from the key's newest write."""
    ttl_ms = round(TTL_S * 1000)
    touched: dict[str, int] = {}
    counts: dict[str, int] = {}
    out = {}
    for n in range(EVENTS):
        key, t = key_of(n), to_millis(time_of(n))
        live = key in touched and t < touched[key] + ttl_ms
        counts[key] = counts[key] + 1 if live else 1
        touched[key] = max(touched.get(key, t), t) if live else t
        out[n] = (key, counts[key])
    return out


def build(out: str) -> rs.Job:
    job = rs.Job("ttl-kills", parallelism=2, checkpoint=rs.CheckpointConfig(interval=INTERVAL))
    (job.source("events", SequenceSource(EVENTS, partitions=2, rate=RATE),
                event_time=rs.EventTime(time_of, max_delay=0.5))
        .key_by("by_key", key_of, value=lambda n: (n, 1))
        .reduce("count", lambda acc, v: (v[0], acc[1] + v[1]), ttl=TTL_S)
        .map("row", lambda kv: {"key": kv[0], "n": kv[1][0], "count": kv[1][1]})
        .sink("out", rs.sinks.FileSink(out)))
    return job


def test_exactly_once_output_equals_the_ttl_reference_after_a_reduce_subtask_is_killed(tmp_path):
    expected = reference()
    # of the records that go back (one per block), many find their key expired and many do not
    expired = sum(1 for _, c in expected.values() if c == 1) - len({k for k, _ in expected.values()})
    assert 200 < expired < EVENTS // BLOCK - 200, expired
    out = str(tmp_path / "out")
    handle = build(out).start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    victim = random.Random(1).choice(sorted(k for k in status.pids if "count" in k))
    kill(status.pids[victim])
    result = handle.wait()
    assert result.restarts >= 1, victim
    rows = sorted((r["n"], r["key"], r["count"]) for r in rs.sinks.read_files(out))
    assert rows == [(n, key, count) for n, (key, count) in sorted(expected.items())]
    # the end of the input is the end of time: the last checkpoint holds no key
    assert handle.metrics().table.to_pylist() and all(
        row["state_keys"] == 0 for row in handle.metrics().to_pylist() if row["step"] == "count")


KEYS_EVERY = 10  # records per key of the unbounded run
GAUGE_TTL_S = 0.5
SLACK_S = 1.0  # a processing timer fires when the subtask's clock gets to it: within this


def gauge_run(seconds: float) -> None:
    rate = 1_000
    job = rs.Job("ttl-gauge", parallelism=1, checkpoint=rs.CheckpointConfig(interval=0.5))
    keyed = (job.source("numbers", SequenceSource(None, rate=rate))
             .key_by("by_key", lambda n: n // KEYS_EVERY, value=lambda n: 1))
    (keyed.reduce("with_ttl", lambda a, b: a + b, ttl=rs.TTL(GAUGE_TTL_S, time="processing"))
        .filter("none_ttl", lambda kv: False).sink("out_ttl", rs.sinks.CollectSink()))
    (keyed.reduce("without", lambda a, b: a + b)
        .filter("none", lambda kv: False).sink("out", rs.sinks.CollectSink()))
    handle = job.start()
    polls: list[tuple[float, dict[str, tuple[int, int]]]] = []  # (monotonic, step -> (records_in, keys))
    try:
        wait_until(lambda: running(handle), "the job to run")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = handle.metrics().to_pylist()
            polls.append((time.monotonic(), {r["step"]: (r["records_in"], r["state_keys"]) for r in rows
                                             if r["step"] in ("with_ttl", "without")}))
            time.sleep(0.2)
    finally:
        handle.stop()
    polls = [(t, p) for t, p in polls if len(p) == 2]
    assert len(polls) > seconds * 2, "the metrics were polled"
    most = 0  # the most keys the TTL step held
    for i, (t, figures) in enumerate(polls):
        records, keys = figures["with_ttl"]
        # the keys written within the TTL and the slack before this poll: at most one per
        # KEYS_EVERY records counted since the last poll before that time, plus one begun
        since = max((p["with_ttl"][0] for s, p in polls[:i] if s <= t - GAUGE_TTL_S - SLACK_S), default=0)
        assert keys <= (records - since) // KEYS_EVERY + 2, (t - polls[0][0], records, since, keys)
        most = max(most, keys)
    # without the TTL the key count is every key seen, growing well past what the TTL step
    # held (not past the bound above: under load the polls are slow, which widens it)
    first, last = polls[0][1]["without"], polls[-1][1]["without"]
    assert last[1] >= last[0] // KEYS_EVERY and last[1] > first[1]
    assert last[1] > 3 * most, (last, most)


def test_the_key_count_gauge_stays_bounded_with_a_ttl_and_grows_without():
    gauge_run(6.0)


@pytest.mark.soak  # a minute of polls; the 6 s run above checks the same bound in the default run
def test_the_key_count_gauge_stays_bounded_over_a_minute():
    gauge_run(60.0)
