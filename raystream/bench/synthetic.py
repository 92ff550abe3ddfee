"""The workloads over the benchmark's own generators, record by record: word count (per
word, or per Arrow batch of counts) and keyed state (counts over 1k to 5M keys, and the
slow sink), with the sources and sinks every workload shares (`KeyLoad`, `MeasureSink`,
`ChangedStateSink`) and their single-process baselines."""
from __future__ import annotations

import operator
import os
import pickle
import random
import time
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream.bench.modes import Mode
from raystream.sinks import SinkContext, SinkWriter
from raystream.source_api import Source, SourcePartition

VOCAB = 10_000
WORDS_PER_LINE = 10


class KeyLoad(Source):
    """`events` records over `partitions`: `(key, created)` with keys spread uniformly over
    `keys` (a multiplicative hash of the record number), `created` the wall-clock time
    the batch was made. With `session`, keys come and go instead: record n has key
    n // session, so each key takes `session` records and is never seen again."""

    def __init__(self, events: int, keys: int, partitions: int = 2, session: int | None = None):
        self.events, self.keys, self.partitions, self.session = events, keys, partitions, session

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(self.partitions)]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        return _KeyLoadPartition(self, int(key), resume_state or 0, batch_size)


def load_key(n: int, keys: int) -> int:
    return (n * 2_654_435_761) % (1 << 32) % keys


class _KeyLoadPartition(SourcePartition):
    def __init__(self, source: KeyLoad, index: int, emitted: int, batch_size: int):
        self.source, self.index, self.emitted, self.batch_size = source, index, emitted, batch_size
        self.total = len(range(index, source.events, source.partitions))

    def next_batch(self) -> list[Any] | None:
        if self.emitted >= self.total:
            return None
        s = self.source
        first = self.index + self.emitted * s.partitions
        n = min(self.batch_size, self.total - self.emitted)
        self.emitted += n
        created = time.time()
        numbers = range(first, first + n * s.partitions, s.partitions)
        if s.session:
            return [(i // s.session, created) for i in numbers]
        keys, mult = s.keys, 2_654_435_761
        return [((i * mult) % 4_294_967_296 % keys, created) for i in numbers]

    def snapshot(self) -> int:
        return self.emitted


class MeasureSink(rs.sinks.Sink):
    """Counts records and, given `created_of`, the seconds from each batch's first record's
    creation to the moment it became visible: committed (transactional) or written. With
    `rate`, each subtask's writes take as long as writing `rate` records/s would."""

    def __init__(self, created_of: Callable[[Any], float] | None = None, rate: float | None = None):
        self.created_of, self.rate = created_of, rate

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return _MeasureWriter(context.transactional, self.created_of, self.rate)


class _MeasureWriter(SinkWriter):
    def __init__(self, transactional: bool, created_of: Callable[[Any], float] | None, rate: float | None):
        self.transactional, self.created_of, self.rate = transactional, created_of, rate
        self.count = 0
        self.pending: list[float] = []
        self.latencies: list[float] = []

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        self.count += len(batch)
        if self.rate:  # a slow sink: a write takes this long, as a remote store's would
            time.sleep(len(batch) / self.rate)
        if self.created_of is None or not len(batch):
            return
        created = self.created_of(batch[0])
        if self.transactional:
            self.pending.append(created)
        else:
            self.latencies.append(time.time() - created)

    def pre_commit(self, checkpoint_id: int) -> Any:
        txn, self.pending = self.pending, []
        return txn if self.transactional else None

    def commit(self, txn: Any) -> None:
        now = time.time()
        self.latencies.extend(now - c for c in txn or ())

    def close(self) -> dict[str, Any]:
        return {"count": self.count, "latencies": self.latencies}


class ChangedStateSink(rs.sinks.Sink):
    """For records `(key, state)` of a keyed step chained before it: the pickled size of
    the state each checkpoint epoch changed (the latest state of each key seen since the
    last pre-commit), by checkpoint id. Incremental snapshots are held to that."""

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return _ChangedStateWriter()


class _ChangedStateWriter(SinkWriter):
    def __init__(self) -> None:
        self.epoch: dict[Any, Any] = {}
        self.changed: dict[int, int] = {}

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        self.epoch.update(batch)

    def pre_commit(self, checkpoint_id: int) -> Any:
        self.changed[checkpoint_id] = len(pickle.dumps(self.epoch, protocol=5))
        self.epoch = {}
        return None

    def commit(self, txn: Any) -> None:
        pass

    def close(self) -> dict[str, Any]:
        return {"changed": self.changed}


def count_state(state: int | None, value: Any) -> tuple[int, int]:
    count = (state or 0) + 1
    return count, count  # stateful_map emits (key, count): the key's new state


def changed_state_job(events: int, keys: int, storage: str) -> rs.Job:
    """state_* with exactly-once and 1 s checkpoints, its sink weighing each epoch's changes."""
    job = rs.Job(f"bench-changed-{keys}", parallelism=2,
                 checkpoint=rs.CheckpointConfig(interval=1.0, storage=storage, retain=1000))
    (job.source("load", KeyLoad(events, keys))
        .key_by("by_key", operator.itemgetter(0), value=operator.itemgetter(1))
        .stateful_map("count", count_state)
        .sink("out", ChangedStateSink()))
    return job


# --- word count -------------------------------------------------------------------------

def make_text(directory: str, words: int, files: int = 4, seed: int = 7) -> int:
    """Text files of `words` words over a Zipf-like vocabulary of VOCAB words."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(VOCAB)]
    weights = [1.0 / (i + 1) for i in range(VOCAB)]
    per_file = words // files // WORDS_PER_LINE * WORDS_PER_LINE
    for f in range(files):
        sample = rng.choices(vocab, weights, k=per_file)
        lines = [" ".join(sample[i:i + WORDS_PER_LINE]) for i in range(0, per_file, WORDS_PER_LINE)]
        with open(os.path.join(directory, f"part{f}.txt"), "w") as out:
            out.write("\n".join(lines) + "\n")
    return per_file * files


def count_words(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Per-batch word counts with Arrow compute: the vectorized half of the pipeline."""
    words = pc.list_flatten(pc.utf8_split_whitespace(batch.column(0)))
    counts = pc.value_counts(words)
    return pa.RecordBatch.from_arrays([counts.field(0), counts.field(1)], names=["word", "n"])


def wordcount_job(directory: str, mode: Mode, storage: str, *, vectorized: bool, emit: str = "every",
                  columnar: bool = False, combine: bool = False) -> rs.Job:
    """Word count; `emit="last"`: the mini-batch reduce (each word's last count per micro-batch),
    with `combine`: each batch's counts folded per word before the shuffle; `columnar`: the
    per-batch counts go on in Arrow, keyed by their column, into `aggregate`."""
    job = rs.Job("bench-wordcount", parallelism=2, guarantee=mode.guarantee,
                 checkpoint=rs.CheckpointConfig(interval=mode.interval, storage=storage, retain=1000))
    # the Arrow variants read Arrow batches of lines (`columnar=True`), as jobs/wordcount_arrow.py does
    lines = job.source("lines", rs.sources.FileSource(os.path.join(directory, "*.txt"), columnar=vectorized))
    if columnar:
        (lines.map_batches("count_batch", count_words).key_by("by_word", "word")
            .aggregate("count", n=rs.aggregates.sum("n")).sink("out", MeasureSink()))
        return job
    if vectorized:
        keyed = lines.map_batches("count_batch", count_words).key_by("by_word", lambda r: r["word"],
                                                                     value=lambda r: r["n"])
    else:
        keyed = lines.flat_map("split", str.split).key_by("by_word", lambda w: w, value=lambda w: 1)
    keyed.reduce("count", operator.add, emit=emit, combine=combine).sink("out", MeasureSink())
    return job


def wordcount_baseline(directory: str) -> float:
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    get = counts.get
    for name in sorted(os.listdir(directory)):
        if name.endswith(".txt"):
            with open(os.path.join(directory, name)) as f:
                for line in f:
                    for w in line.split():
                        counts[w] = get(w, 0) + 1
    return time.perf_counter() - t0


ARROW_LINES = rs.RuntimeConfig().arrow_batch_size  # the 1-process loop's batches: as big as the job's


def wordcount_arrow_baseline(directory: str) -> float:
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".txt"):
            with open(os.path.join(directory, name)) as f:
                lines = f.read().split("\n")  # lines end at LF only, as FileSource's do
            if lines and not lines[-1]:
                lines.pop()
            for i in range(0, len(lines), ARROW_LINES):
                out = count_words(pa.RecordBatch.from_arrays([pa.array(lines[i:i + ARROW_LINES])], names=["line"]))
                for w, n in zip(out.column(0).to_pylist(), out.column(1).to_pylist()):
                    counts[w] = counts.get(w, 0) + n
    return time.perf_counter() - t0


# --- keyed state ------------------------------------------------------------------------

def count_update(state: int | None, created: float) -> tuple[int, float]:
    return (state or 0) + 1, created


def state_job(events: int, keys: int, mode: Mode, storage: str, sink_rate: float | None = None) -> rs.Job:
    job = rs.Job(f"bench-state-{keys}", parallelism=2, guarantee=mode.guarantee,
                 checkpoint=rs.CheckpointConfig(interval=mode.interval, storage=storage, retain=1000))
    (job.source("load", KeyLoad(events, keys))
        .key_by("by_key", operator.itemgetter(0), value=operator.itemgetter(1))
        .stateful_map("count", count_update)
        .sink("out", MeasureSink(created_of=operator.itemgetter(1), rate=sink_rate)))
    return job


def ttl_job(events: int, session: int, mode: Mode, storage: str) -> rs.Job:
    """state_1k's job over keys that come and go (`KeyLoad(session=...)`), its keyed step
    with `mode.ttl` seconds of processing time as its time-to-live, if any."""
    job = rs.Job("bench-state-ttl", parallelism=2, guarantee=mode.guarantee,
                 checkpoint=rs.CheckpointConfig(interval=mode.interval, storage=storage, retain=1000))
    ttl = rs.TTL(mode.ttl, time="processing") if mode.ttl else None
    (job.source("load", KeyLoad(events, 0, session=session))
        .key_by("by_key", operator.itemgetter(0), value=operator.itemgetter(1))
        .stateful_map("count", count_update, ttl=ttl)
        .sink("out", MeasureSink(created_of=operator.itemgetter(1))))
    return job


#: The slow sink's rate per subtask: a tenth of what state_1k's source reaches without it.
SLOW_SINK_RATE = 40_000


def state_baseline(events: int, keys: int) -> float:
    t0 = time.perf_counter()
    counts: dict[int, int] = {}
    get = counts.get
    for n in range(events):
        k = load_key(n, keys)
        counts[k] = get(k, 0) + 1
    return time.perf_counter() - t0
