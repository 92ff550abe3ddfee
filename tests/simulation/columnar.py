"""Columnar schedules of the simulation (sim.py): the source emits Arrow record batches
cut at sizes drawn per run, attempt, subtask and partition (a replay after a restore cuts
its rows elsewhere, as rates and restarts do in a real job), with float values that
include NaN and nulls (and, in a third of the schedules, some partitions keyed by
strings, the others by ints), through the real `key_by` on columns and `aggregate` operators
(KeyColumnsOp, AggregateOp with its numpy columns and its per-key layout, built from
the steps by `assembly.build_operators` as a subtask builds them), whose keyed state
goes through the same snapshots, merge by key group and restores as the running sums.

The invariant: every row the aggregate committed holds, for its key, the count, the
count of values, the sum, the least and the greatest value of the key's first `n` rows
(`n` being its count), NaN skipped by min and max as Arrow skips it within a batch;
so each key's final row is the whole input's, whatever the cuts, kills, restores and
rescales. Within a run, no (key, count) is committed twice; a line of runs that
finished committed each key's final row.
"""
from __future__ import annotations

import collections
import math
import random
from typing import Any

import pyarrow as pa

import raystream as rs
from raystream import aggregates as agg
from raystream._runtime.transport.batch import Batches, untimed
from raystream._runtime.transport.keys import key_group
from raystream.graph import Step
from raystream.sinks import read_files
from raystream.sources import Source

from .world import SimFailure

AGG_SINK = "agg_out"  # the sink step of the aggregate's rows
AGGREGATES = {"n": agg.count(), "vals": agg.count("v"), "total": agg.sum("v"), "lo": agg.min("v"),
              "hi": agg.max("v")}
_NAN = "NaN"  # how a NaN is written (FileSink's JSON writes NaN as null, which is a null's)
_MASK = (1 << 64) - 1


def keys_of(partition: int, n: int, max_parallelism: int, kind: type = int) -> list[Any]:
    """`n` aggregate keys in the key group of `partition`: a key's state then lives where
    its partition is read at every parallelism (no exchange needed), and a rescale moves
    both together, as it moves a partition's offset and its running sum. `kind` str: the
    keys are strings of digits (a key column of strings)."""
    group = key_group(partition, max_parallelism)
    keys: list[Any] = [partition] if kind is int else []
    k = 10_000 * (partition + 1)  # apart from every other partition's keys
    while len(keys) < n:
        if key_group(kind(k), max_parallelism) == group:
            keys.append(kind(k))
        k += 1
    return keys


class Columns:
    """A schedule's columnar option: each record's key and value (decided by the seed),
    the cuts, and the steps of the operators."""

    def __init__(self, seed: int, partitions: int, max_parallelism: int):
        rng = random.Random(seed ^ 0xC0117)  # its own draws: the rest of the schedule stays what it was
        self.seed, self.partitions = seed, partitions
        # In a third of the schedules some partitions' keys are strings (a key column of
        # strings in their batches, of ints in the others'): a subtask that reads both, or a
        # rescale that merges them, holds keys no one Arrow column holds (review 47). Drawn
        # apart, so the draws below stay what they were.
        kinds = random.Random(seed ^ 0x57121)
        strings = set(kinds.sample(range(partitions), kinds.randint(1, partitions - 1))) \
            if partitions > 1 and kinds.random() < 1 / 3 else set()
        self.key_types = {p: pa.string() if p in strings else pa.int64() for p in range(partitions)}
        self.keys = {p: keys_of(p, rng.randint(1, 3), max_parallelism, str if p in strings else int)
                     for p in range(partitions)}
        self.nan_rate = rng.choice([0.15, 0.3])  # often enough that a key's first batch is all NaN
        self.null_rate = rng.choice([0.0, 0.1])
        self.sizes = rng.choice([(1, 2, 3), (1, 4, 9), (2, 5, 13), (1, 1, 6, 20)])  # rows per batch
        # Now and then a batch of float32 values: the columns refuse it and the state moves
        # to the per-key layout for good (a restore moves it back), so both layouts run.
        self.narrow_rate = rng.choice([0.0, 0.15])
        self._prefixes: dict[int, list[Any]] = {}  # key -> its values in order, as far as asked
        self._scanned: dict[int, int] = {}  # key -> records of its partition scanned for them

    # --- the input ------------------------------------------------------------------------

    def _mix(self, record: int, salt: int) -> float:
        """A number in [0, 1) from the record and the seed: the same in every run and attempt."""
        x = (record * 0x9E3779B97F4A7C15 + (self.seed + salt) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) & _MASK
        return (x ^ (x >> 29)) / 2.0 ** 64

    def key(self, record: int) -> Any:
        keys = self.keys[record % self.partitions]
        return keys[int(self._mix(record, 1) * len(keys))]

    def value(self, record: int) -> float | None:
        """A half in [-20, 20] (sums stay exact however rows are grouped), NaN, or null."""
        u = self._mix(record, 2)
        if u < self.nan_rate:
            return math.nan
        if u < self.nan_rate + self.null_rate:
            return None
        return round(self._mix(record, 3) * 80 - 40) / 2

    def cut(self, rng: random.Random) -> int:
        return rng.choice(self.sizes)

    def batch(self, ids: list[int], rng: random.Random, times: list[int] | None) -> pa.RecordBatch:
        kind = pa.float32() if rng.random() < self.narrow_rate else pa.float64()
        key_type = self.key_types[ids[0] % self.partitions]  # a batch is of one partition
        arrays = [pa.array(ids, pa.int64()), pa.array([self.key(i) for i in ids], key_type),
                  pa.array([self.value(i) for i in ids], kind)]
        names = ["id", "k", "v"]
        if times is not None:
            arrays.append(pa.array(times, pa.int64()))
            names.append("t")
        return pa.RecordBatch.from_arrays(arrays, names=names)

    # --- the steps and their output ----------------------------------------------------------

    @staticmethod
    def add_steps(stream: Any) -> None:
        """The operators after the source, as a job builds them: key by a column, aggregate."""
        stream.key_by("by_k", "k").aggregate("agg", **AGGREGATES)

    @staticmethod
    def rows(out: Any, run_id: str) -> list[dict]:
        """The aggregate's output batch as the rows its sink writes, NaN spelled out."""
        if isinstance(out, Batches):
            return [row for part in out.parts for row in Columns.rows(part, run_id)]
        batch, _ = untimed(out)
        if not isinstance(batch, pa.RecordBatch):
            return []
        return [{**{c: _NAN if isinstance(v, float) and v != v else v for c, v in row.items()}, "run": run_id}
                for row in batch.to_pylist()]

    # --- the invariant ---------------------------------------------------------------------

    def partition_of(self, key: Any) -> int:
        found = [p for p, keys in self.keys.items() if key in keys]
        if not found:
            raise SimFailure(f"aggregate (columnar): a row of key {key!r}, which no record has")
        return found[0]

    def _values(self, key: Any, n: int) -> list[Any]:
        """The key's first `n` values, in its partition's order (scanned once, as far as asked)."""
        p = self.partition_of(key)
        have = self._prefixes.setdefault(key, [])
        record = p + self.partitions * self._scanned.get(key, 0)
        while len(have) < n:
            if self.key(record) == key:
                have.append(self.value(record))
            record += self.partitions
        self._scanned[key] = (record - p) // self.partitions
        return have[:n]

    def expected(self, key: Any, n: int) -> dict[str, Any]:
        values = self._values(key, n)
        present = [v for v in values if v is not None]
        numbers = [v for v in present if v == v]
        nan = len(numbers) < len(present)
        return {"n": n, "vals": len(present),
                "total": None if not present else math.nan if nan else sum(numbers),
                "lo": min(numbers) if numbers else math.nan if present else None,
                "hi": max(numbers) if numbers else math.nan if present else None}

    def total_rows(self, key: Any, records: int) -> int:
        """How many rows of `key` a partition of `records` records holds."""
        p = self.partition_of(key)
        return sum(self.key(p + self.partitions * i) == key for i in range(records))


def _same(got: Any, want: Any) -> bool:
    """Whether a committed value (NaN spelled out, as `Columns.rows` writes it) is `want`."""
    if isinstance(want, float) and want != want:
        return got == _NAN
    return got == want and (got is None) == (want is None)


def check_aggregates(scenario: Any) -> None:
    """The invariant of the module docstring, on every place an aggregate sink wrote to."""
    columns: Columns = scenario.columns
    places = {r.outputs.place for r in scenario.runs}
    rows = {place: read_files(scenario.directory("agg", place)) for place in places}
    for place, found in rows.items():
        seen: collections.Counter = collections.Counter()
        for row in found:
            want = columns.expected(row["k"], row["n"])
            wrong = [f"{name} {row.get(name)!r}, expected {want[name]!r}" for name in want
                     if not _same(row.get(name), want[name])]
            if wrong:
                raise SimFailure(f"aggregate (columnar): key {row['k']} after its first {row['n']} rows, committed by "
                                 f"{row['run']}: {'; '.join(wrong)} (min and max skip NaN; the cuts of the batches "
                                 f"must not matter)")
            seen[(row["run"], row["k"], row["n"])] += 1
        twice = sorted((k for k, c in seen.items() if c > 1), key=repr)
        if twice:
            raise SimFailure(f"aggregate (columnar): rows committed twice (run, key, count): {twice[:5]}")
    for line in scenario.lines:
        last = line[-1]
        if last.outcome != "finished":
            continue
        ids = {r.run_id for r in line}
        final: dict[int, int] = {}
        for place in {r.outputs.place for r in line}:
            for row in rows[place]:
                if row["run"] in ids:
                    final[row["k"]] = max(final.get(row["k"], 0), row["n"])
        for p in last.source.present:
            for key in columns.keys[p]:
                want = columns.total_rows(key, scenario.records)
                if final.get(key, 0) < want:  # more: a run stopped for a savepoint read past `records`
                    raise SimFailure(f"aggregate (columnar): line {[r.label for r in line]} finished; key {key} has "
                                     f"{want} rows, its newest committed row counts {final.get(key, 0)}")


class Placeholder(Source):
    """The source of the steps built with the public API (the subtasks read their own)."""

    def list_partitions(self) -> list[str]:
        return []

    def build_partition(self, key: str, resume_state: Any, batch_size: int) -> Any:
        raise NotImplementedError


def operator_steps(columns: Columns | None, event_time: Any, windowing: Any = None) -> list[Step]:
    """The steps whose real operators a subtask runs before the sinks, built as a job
    builds them (raystream.Job): the source (with its event time) and the aggregate's or
    the window's (windowed.py: one chain, so not both); none for a schedule without
    these options."""
    if columns is None and event_time is None and windowing is None:
        return []
    assert columns is None or windowing is None, "the chain is a line: the aggregate or the window"
    job = rs.Job("sim")
    stream = job.source("src", Placeholder(), event_time=event_time)
    if columns is not None:
        columns.add_steps(stream)
    if windowing is not None:
        windowing.add_steps(stream)
    return list(job.steps.values())
