"""Tumbling and sliding window steps through rescales whose old subtasks' watermarks differ
(tests/unit/_runtime/operators/test_window_rescales.py): subtasks at a parallelism, each
with its own watermark, rows routed by key group, checkpoints (full, or incremental: a base
and each `changed_state`, checked against the full state) and restores at parallelism 1 to
3 through `rescale.merge_states`, as R4 restores them.

Rows come at times behind and ahead of the subtasks' watermarks. A key group is judged by
the greatest watermark it has had (on whichever subtask held it): a window is late for a
row when its end - 1 + lateness is at or before that, and a row late for all its windows
goes to the late output (R4: after a rescale the step's watermark is the oldest of its old
subtasks', and each key group keeps its own while ahead). The output must hold, per (key,
window): one `update=False` row, first; then updates with growing values (the values are
positive: a value repeated is a window fired again); the last value the sum of the rows
the window took; and the late output must count the rows late for all their windows.
"""
from __future__ import annotations

import operator
import pickle
import random
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from raystream import aggregates as agg
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.windows import WindowOp
from raystream._runtime.state.snapshot import SubtaskState
from raystream._runtime.state.window_entries import per_key
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, untimed
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Sliding, Tumbling

MAX_PARALLELISM = 128
KINDS = ("per-record", "window-major", "per-key")


class Steps:
    """Making, feeding and reading one kind of window step."""

    def __init__(self, kind: str, window: tuple[int, ...], lateness: int):
        self.kind, self.window, self.lateness = kind, window, lateness

    def assigner(self) -> Any:
        assigner = Tumbling(self.window[0]) if len(self.window) == 1 else Sliding(*self.window)
        assigner.check("w")
        return assigner

    def step(self) -> Step:
        if self.kind == "per-record":
            return Step("w", StepKind.WINDOW, ("in",), fn=operator.add,
                        window=WindowSpec(self.assigner(), self.lateness, "reduce"))
        return Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=(("total", agg.sum("v")),),
                    window=WindowSpec(self.assigner(), self.lateness, "columnar"))

    def new(self) -> Any:
        if self.kind == "per-record":
            return WindowOp(self.step())
        op = ArrowWindowOp(self.step())
        if self.kind == "per-key":  # the per-key layout only, as raystream kept it before 0.6
            op._columnar = False
            op.state = {}
        return op

    def restored(self, snapshots: list[SubtaskState], subtask: int, parallelism: int) -> Any:
        merged = merge_states(snapshots, [self.step()], subtask, parallelism, MAX_PARALLELISM)
        op = self.new()
        op.restore_meta(merged.step_meta.get("w", []))
        op.restore(merged.keyed.get("w", {}), merged.watermarks.get("w"))
        op.restore_group_watermarks(merged.group_watermarks.get("w", {}), MAX_PARALLELISM)
        if self.kind == "per-key":
            op._columnar = False
        return op

    def feed(self, op: Any, rows: list[tuple]) -> list[tuple]:
        keys, values, times = (list(c) for c in zip(*rows))
        if self.kind == "per-record":
            return self.results(op.process(Timed(KeyedBatch(keys, values), times)))
        batch = pa.RecordBatch.from_pydict({"k": pa.array(keys, pa.int64()), "v": pa.array(values, pa.int64())})
        return self.results(op.process(Timed(ArrowKeyed(batch, ("k",)), np.array(times, dtype=np.int64))))

    def results(self, batch: Any) -> list[tuple]:
        """(key, start ms, end ms, value, update) per row."""
        if not len(batch):
            return []
        inner, _ = untimed(batch)
        if self.kind == "per-record":
            return [(k, round(r.start.timestamp() * 1000), round(r.end.timestamp() * 1000), r.value, r.update)
                    for k, r in zip(inner.keys, inner.values)]
        return [(r["k"], round(r["window_start"].timestamp() * 1000), round(r["window_end"].timestamp() * 1000),
                 r["total"], r["update"]) for r in inner.to_pylist()]

    def late(self, op: Any) -> int:
        if self.kind == "per-record":
            return len(op.take_late())
        return sum(len(batch) for batch in op.take_late_batches())


def owner(key: int, parallelism: int) -> int:
    group = key_group(key, MAX_PARALLELISM)
    return next(s for s in range(parallelism) if group in groups_of_subtask(s, parallelism, MAX_PARALLELISM))


def run(seed: int) -> list[str]:
    """One random case; the problems found (none: it passed)."""
    rnd = random.Random(seed)
    steps = Steps(rnd.choice(KINDS), rnd.choice([(1,), (2, 1), (3, 1), (2, 2)]), rnd.choice([0, 500, 1500, 4000]))
    assigner, lateness = steps.assigner(), steps.lateness
    p = rnd.choice([1, 2, 3])
    ops, marks, greatest = [steps.new() for _ in range(p)], [0] * p, 0
    keys, incremental, bases = list(range(rnd.randint(1, 8))), rnd.random() < 0.5, [None] * p
    output: list[tuple] = []
    truth: dict[tuple, int] = defaultdict(int)
    late, problems, want_late = 0, [], 0
    seen: dict[int, int] = defaultdict(int)  # key group -> the greatest watermark it has had
    for _ in range(rnd.randint(5, 40)):
        action = rnd.random()
        if action < 0.45:  # rows, on time or late for their key group's watermark
            rows = []
            for _ in range(rnd.randint(1, 5)):
                key, value, t = rnd.choice(keys), rnd.randint(1, 9), rnd.randint(max(0, greatest - 6000), greatest + 4000)
                rows.append((key, value, t))
                mark = seen[key_group(key, MAX_PARALLELISM)]
                taken = [(start, end) for start, end in assigner.assign(t) if end - 1 + lateness > mark]
                for start, end in taken:
                    truth[(key, start, end)] += value
                want_late += not taken
            by_owner = defaultdict(list)
            for row in rows:
                by_owner[owner(row[0], p)].append(row)
            for i, mine in by_owner.items():
                output += steps.feed(ops[i], mine)
        elif action < 0.8:  # one subtask's watermark moves on: they differ
            i = rnd.randrange(p)
            marks[i] += rnd.randint(1, 2500)
            greatest = max(greatest, marks[i])
            for g in groups_of_subtask(i, p, MAX_PARALLELISM):
                seen[g] = max(seen[g], marks[i])
            output += steps.results(ops[i].on_watermark(marks[i]))
        else:  # a checkpoint, restored at some parallelism
            snapshots = []
            for i, op in enumerate(ops):
                full = pickle.loads(pickle.dumps(op.snapshot()))
                if incremental and bases[i] is not None:
                    changed, deleted = op.changed_state()
                    base = pickle.loads(pickle.dumps(bases[i]))
                    base.update(per_key(pickle.loads(pickle.dumps(changed))))
                    for k in deleted:
                        base.pop(k, None)
                    if base != full:
                        return [f"seed {seed}: subtask {i}'s incremental state is not its full state"]
                op.changed = set()
                bases[i] = full
                meta = op.state_meta()
                snapshots.append(pickle.loads(pickle.dumps(SubtaskState(
                    5, "w", i, p, keyed={"w": full}, watermarks={"w": op.watermark},
                    group_watermarks={"w": dict(op.group_watermarks)} if op.group_watermarks else {},
                    step_meta={"w": meta} if meta is not None else {}))))
            q = rnd.choice([1, 2, 3])
            ops = [steps.restored(snapshots, i, q) for i in range(q)]
            marks = [op.watermark for op in ops]
            if q != p:
                bases = [None] * q  # after a rescale the next snapshot is full
            p = q
        late += sum(steps.late(op) for op in ops)
    for op in ops:
        output += steps.results(op.on_watermark(MAX_TIME))
        late += steps.late(op)
    rows_of = defaultdict(list)
    for k, start, end, value, update in output:
        rows_of[(k, start, end)].append((value, update))
    tag = f"seed {seed} {steps.kind} {steps.window} lateness {lateness}"
    if late != want_late:
        problems.append(f"{tag}: {late} rows late, of {want_late} late for their key group's watermark")
    for w, want in truth.items():
        got = rows_of.get(w, [])
        values = [v for v, _ in got]
        if not got or got[0][1] or sum(1 for _, u in got if not u) != 1:
            problems.append(f"{tag}: {w} emitted {got}: not one first result, then updates")
        elif any(b <= a for a, b in zip(values, values[1:])) or values[-1] != want:
            problems.append(f"{tag}: {w} emitted {got}, its sum is {want}")
    problems += [f"{tag}: {w} emitted {rows_of[w]} and had no row" for w in rows_of if w not in truth]
    return problems
