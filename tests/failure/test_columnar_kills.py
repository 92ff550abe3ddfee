"""Exactly-once under SIGKILL for the columnar steps (one module: one Ray start).

- The subtask that holds the running aggregates is killed mid-run: the committed output
  still has each key's updates once, its final row the count and sum of exactly its input.
- The subtask holding the sliding windows of columnar Nexmark bids is killed mid-run: the
  committed output has every (auction, window) once, with the count and top price of
  exactly its bids.
- The subtask of columnar q4's auction windows (Lifetime) is killed mid-run: every
  auction's winner is committed once, the highest bid of its lifetime.
- Text read as Arrow (`FileSource(columnar=True)`) with its source subtask killed: each
  word's last committed total is its count in the files (extended).
- jobs/billing_arrow.py with the subtasks of its invoices and its totals killed in turn:
  the job's own verdict holds (extended).
- Invoices updated by reports late within the lateness, their subtasks killed three
  times: each hour's rows are a first result and updates, once each (extended)."""
import collections
import logging
import re
import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.sinks import FileSink, read_files
from raystream.sources import SequenceSource
from raystream.windows import Sliding
from tests.helpers import late_billing
from tests.helpers.nexmark import bid_windows, window_rows
from tests.helpers.support import wait_until

from .harness import kill, running, subtask

logger = logging.getLogger(__name__)

BIDS, AUCTIONS = 12_000, 50


def bid_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Bid i: auction (i * 7) % AUCTIONS, price 1 + (i * 104729) % 1000, vectorized."""
    i = batch.column("value").to_numpy()
    return pa.RecordBatch.from_arrays([pa.array((i * 7) % AUCTIONS), pa.array(1 + (i * 104729) % 1000)],
                                      names=["auction", "price"])


def expected() -> dict[int, tuple[int, int]]:
    totals: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    for i in range(BIDS):
        t = totals[(i * 7) % AUCTIONS]
        t[0] += 1
        t[1] += 1 + (i * 104729) % 1000
    return {k: (n, s) for k, (n, s) in totals.items()}


def kill_step_and_finish(handle: rs.JobHandle, step_id: str) -> None:
    """SIGKILL the first subtask of the chain that starts with `step_id`; the job recovers and finishes."""
    status = handle.status()
    victim = subtask(status, step_id)
    logger.warning("killing %s", victim)
    kill(status.pids[victim])
    result = handle.wait()
    assert result.state == "finished" and result.restarts >= 1


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_the_aggregating_subtask_killed(tmp_path):
    out = str(tmp_path / "out")
    job = rs.Job("columnar-kill", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(batch_size=500))
    (job.source("seq", SequenceSource(BIDS, partitions=2, rate=4_000))
     .map_batches("bids", bid_columns)
     .key_by("by_auction", "auction")
     .aggregate("totals", n=agg.count(), total=agg.sum("price"))
     .sink("out", FileSink(out)))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["totals"].records_in >= BIDS // 3, "a third of the bids aggregated")
    kill_step_and_finish(handle, "totals")

    updates: dict[int, list[dict]] = collections.defaultdict(list)
    for row in read_files(out):
        updates[row["auction"]].append(row)
    want = expected()
    assert set(updates) == set(want)
    for auction, rows in updates.items():
        rows.sort(key=lambda r: r["n"])
        counts = [r["n"] for r in rows]
        assert len(set(counts)) == len(counts), f"auction {auction}: an update committed twice: {counts}"
        totals = [r["total"] for r in rows]
        assert totals == sorted(set(totals)), f"auction {auction}: totals do not grow with the count"
        assert (rows[-1]["n"], rows[-1]["total"]) == want[auction], auction


WORDS = ["alpha", "beta", "gamma", "delta", "épsilon", "don't", "zeta"]


def paced_word_counts(lines: pa.RecordBatch) -> pa.RecordBatch:
    """jobs/wordcount_arrow.py's count of a batch of lines, 20 ms a batch so that the kill
    comes mid-file."""
    import time

    time.sleep(0.02)
    words = pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(lines.column(0)), r"[^a-z']+"))
    counts = pc.value_counts(words.filter(pc.not_equal(words, "")))
    return pa.RecordBatch.from_arrays([counts.field(0), counts.field(1)], names=["word", "n"])


@pytest.mark.extended  # 9 s: the default suite is at 14 of its 15 minutes
def test_the_source_subtask_reading_text_as_arrow_killed(tmp_path):
    """FileSource(columnar=True) resumes from its (byte, line) offset after a SIGKILL of its
    subtask: each word's last committed total is its count in the files (CRLF, blank lines,
    no last LF), and no total is committed twice."""
    want: collections.Counter = collections.Counter()
    for k, ending in enumerate(["\n", "\r\n"]):
        lines = [" ".join(WORDS[(i * 3 + j + k) % len(WORDS)] for j in range(1 + i % 4)) for i in range(20_000)]
        lines[::9] = [""] * len(lines[::9])
        (tmp_path / f"f{k}.txt").write_bytes((ending.join(lines) + ending + "last alpha").encode())
        for line in lines + ["last alpha"]:
            want.update(re.findall(r"[a-z']+", line.lower()))
    out = str(tmp_path / "out")
    job = rs.Job("text-arrow-kill", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(arrow_batch_size=400))
    (job.source("lines", rs.sources.FileSource(str(tmp_path / "*.txt"), columnar=True))
     .map_batches("words", paced_word_counts)
     .key_by("by_word", "word")
     .aggregate("count", n=agg.sum("n"))
     .sink("out", FileSink(out)))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["lines"].records_out >= 10_000, "a quarter of the lines read")
    kill_step_and_finish(handle, "lines")

    totals: dict[str, list[int]] = collections.defaultdict(list)
    for row in read_files(out):
        totals[row["word"]].append(row["n"])
    assert {w: max(ns) for w, ns in totals.items()} == dict(want)
    assert all(len(set(ns)) == len(ns) for ns in totals.values()), "a total committed twice"


# 15 s of event time, read in about 4 s
WINDOW_CONFIG = nx.NexmarkConfig(events=30_000, partitions=2, event_rate=2_000, rate=8_000, out_of_order=0.5)


def test_the_windowing_subtask_killed(tmp_path):
    out = str(tmp_path / "out")
    job = rs.Job("columnar-window-kill", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(arrow_batch_size=1000))
    (job.source("events", nx.NexmarkSource(WINDOW_CONFIG, columnar=True),
                event_time=rs.EventTime.column("date_time", max_delay=WINDOW_CONFIG.out_of_order))
     .where("only_bids", pc.field("event_type") == nx.BID)
     .select("bids", {"auction": pc.field("bid", "auction"), "price": pc.field("bid", "price")})
     .key_by("by_auction", "auction")
     .window(Sliding(10, 2)).aggregate("per_auction", bids=agg.count(), top=agg.max("price"))
     .sink("out", FileSink(out, format="parquet")))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["per_auction"].records_out > 0, "windows fired")
    kill_step_and_finish(handle, "per_auction")

    rows = read_files(out, format="parquet")
    got = window_rows(rows)
    assert len(dict(got)) == len(got), "a window committed twice"
    assert dict(got) == bid_windows(WINDOW_CONFIG, 10_000, 2_000)


NEXMARK = Path(__file__).resolve().parents[2] / "jobs" / "nexmark"


def test_the_subtask_of_auction_lifetimes_killed(tmp_path):
    """Columnar q4's winners: a Lifetime window per auction, bids waiting for their auction
    (out of order by half a second). Every auction that had a bid in its lifetime is
    committed once, with its highest such bid."""
    q4 = runpy.run_path(str(NEXMARK / "columnar" / "q4.py"), run_name="nexmark_q4_arrow")
    out = str(tmp_path / "out")
    job = rs.Job("lifetime-kill", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(arrow_batch_size=1000))
    q4["winners"](WINDOW_CONFIG, job).select("winner", {"auction": pc.field("auction"), "price": pc.field("price")}) \
        .sink("out", FileSink(out, format="parquet"))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["winners"].records_out > 0, "auctions closed")
    kill_step_and_finish(handle, "winners")

    rows = read_files(out, format="parquet")
    got = collections.Counter(r["auction"] for r in rows)
    assert [a for a, n in got.items() if n > 1] == [], "an auction committed twice"
    _, best = q4["_PER_RECORD"]["winners"](nx.events(WINDOW_CONFIG))
    assert {r["auction"]: r["price"] for r in rows} == best


BILLING_ARROW = Path(__file__).resolve().parents[2] / "jobs" / "billing_arrow.py"


@pytest.mark.extended  # two kills and recoveries: 20-60 s on two cores, past the default suite's budget
def test_billing_over_arrow_with_its_window_and_its_aggregate_killed(tmp_path):
    """jobs/billing_arrow.py: the subtask of the hourly invoices (windows with allowed
    lateness and a late output) is killed, then, in the attempt after, that of the running
    totals; every customer's last total is the sum of exactly its events, no update or
    invoice is committed twice, each hour's last invoice sums its on-time events."""
    out = str(tmp_path / "billing")
    ns = runpy.run_path(str(BILLING_ARROW), run_name="__raystream_job__")
    events = 60_000
    job = ns["build"](out, events, rate=12_000).with_options(
        checkpoint=rs.CheckpointConfig(interval=0.3), runtime=rs.RuntimeConfig(batch_size=1000, arrow_batch_size=1000))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["invoice"].records_out > 0, "invoices fired")
    status = handle.status()
    kill(status.pids[subtask(status, "invoice")])
    wait_until(lambda: running(handle, checkpoints=status.checkpoints.completed + 1, attempt=2),
               "a checkpoint of the attempt after the first kill")
    kill_step_and_finish(handle, "running_total")

    verdict = ns["verify"](out, events)
    assert verdict.customers == ns["CUSTOMERS"] and verdict.invoices > 0
    assert verdict.ok, verdict


@pytest.mark.extended  # three kills and recoveries: 30-60 s on two cores
@pytest.mark.parametrize("per_key", [False, True], ids=["window-major", "per-key"])
def test_invoices_updated_within_the_lateness_with_their_windows_killed(tmp_path, per_key):
    """Reports late by less than the lateness update invoices that fired (the update path
    of window-major windows, and of per-key ones for reference); the invoice subtasks are
    killed three times: every hour's rows are one first result and then updates, none
    twice, the last the sum of exactly its on-time events."""
    out, events = str(tmp_path / "late"), 40_000
    handle = late_billing.build(out, events, rate=8_000, per_key=per_key).start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["invoice"].records_out > 0, "invoices fired")
    for attempt in (2, 3):
        status = handle.status()
        kill(status.pids[subtask(status, "invoice")])
        wait_until(lambda: running(handle, checkpoints=status.checkpoints.completed + 1, attempt=attempt),
                   f"a checkpoint of attempt {attempt}")
    kill_step_and_finish(handle, "invoice")
    verdict = late_billing.verify(out, events)
    assert verdict["problems"] == {} and verdict["updates"] > 0 and verdict["corrections"] > 0, verdict
