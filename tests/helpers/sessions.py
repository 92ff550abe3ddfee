"""Session window steps driven at random against an oracle (tests/unit/_runtime/operators/
test_session_restores.py): rows, watermarks, and restores of the step's snapshot at its
watermark, at an older one (as a rescale restores a step: the oldest watermark of the old
subtasks it takes keys from), as raystream 0.6 marked it (emitted sessions True), and
through incremental snapshots (a base and each `changed_state`).

The oracle keeps each key's sessions from the rows the step took (those not in its late
output) and checks after each step:
- A: the step's windows are the oracle's sessions;
- B: an emitted value is the session's value after the step;
- C: no window is emitted twice in a row with the same value and flag (a re-fire);
- D: `update` is True exactly when a part of the session was emitted before;
- E: a session the watermark passed that has been emitted holds its value as last emitted;
- F: a session dropped had its final value emitted, and was due (end - 1 + lateness);
- G: at the end the state is empty;
- H: an incremental snapshot (base and deltas) equals the full snapshot.
"""
from __future__ import annotations

import pickle
import random
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from raystream import aggregates as agg
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.windows import WindowOp
from raystream._runtime.time.watermarks import MAX_TIME, MIN_TIME
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, untimed
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Aggregator, Session

GAP_MS = 5
AGGREGATES = (("n", agg.count()), ("total", agg.sum("v")), ("low", agg.min("v")), ("high", agg.max("v")))
REFERENCE = Aggregator(
    create=lambda: (0, 0, None, None),
    add=lambda a, v: (a[0] + 1, a[1] + v, v if a[2] is None else min(a[2], v), v if a[3] is None else max(a[3], v)),
    merge=lambda a, b: (a[0] + b[0], a[1] + b[1],
                        b[2] if a[2] is None else a[2] if b[2] is None else min(a[2], b[2]),
                        b[3] if a[3] is None else a[3] if b[3] is None else max(a[3], b[3])))


def session_step(kind: str, lateness: int) -> Any:
    assigner = Session(GAP_MS / 1000)
    assigner.check("w")
    if kind == "columnar":
        return ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=AGGREGATES,
                                  window=WindowSpec(assigner, lateness, "columnar")))
    return WindowOp(Step("w", StepKind.WINDOW, ("in",), fn=REFERENCE, window=WindowSpec(assigner, lateness, "aggregate")))


def _feed(op: Any, kind: str, rows: list[tuple]) -> Any:
    keys, values, times = zip(*rows)
    if kind == "columnar":
        batch = pa.RecordBatch.from_arrays([pa.array(keys, pa.string()), pa.array(values, pa.int64())], names=["k", "v"])
        return op.process(Timed(ArrowKeyed(batch, ("k",)), np.array(times, dtype=np.int64)))
    return op.process(Timed(KeyedBatch(list(keys), list(values)), list(times)))


def _ms(stamp: Any) -> int:
    return int(round(stamp.timestamp() * 1000))


def _emitted(batch: Any, kind: str) -> list[tuple]:
    """(key, (start, end), value, update) per emitted row."""
    if not len(batch):
        return []
    inner, _ = untimed(batch)
    if kind == "columnar":
        return [(r["k"], (_ms(r["window_start"]), _ms(r["window_end"])), (r["n"], r["total"], r["low"], r["high"]),
                 r["update"]) for r in inner.to_pylist()]
    return [(k, (_ms(r.start), _ms(r.end)), tuple(r.value), r.update) for k, r in zip(inner.keys, inner.values)]


def _late_values(op: Any, kind: str) -> set[int]:
    if kind == "columnar":
        return {r["v"] for batch in op.take_late_batches() for r in untimed(batch)[0].batch.to_pylist()}
    batch = op.take_late()
    return set(untimed(batch)[0].values) if len(batch) else set()


def _value(records: list[int]) -> tuple:
    return (len(records), sum(records), min(records), max(records))


class Oracle:
    def __init__(self, lateness: int):
        self.lateness = lateness
        self.sessions: dict[str, dict[tuple[int, int], dict]] = defaultdict(dict)  # key: {window: records, emitted}
        self.last: dict[tuple, tuple] = {}  # (key, window): (value, update) last emitted
        self.problems: list[str] = []

    def add(self, key: str, v: int, t: int) -> None:
        mine = self.sessions[key]
        touching = [w for w in mine if w[0] <= t + GAP_MS and w[1] >= t]
        records, emitted = [v], False
        for w in touching:
            old = mine.pop(w)
            records += old["records"]
            emitted = emitted or old["emitted"]
            self.last.pop((key, w), None)
        mine[(min([t] + [w[0] for w in touching]), max([t + GAP_MS] + [w[1] for w in touching]))] = {
            "records": records, "emitted": emitted}

    def check_emitted(self, tag: str, op: Any, before: dict, outs: list[tuple]) -> None:
        for key, w, value, update in outs:
            session = self.sessions.get(key, {}).get(w)
            if session is None:
                self.problems.append(f"{tag}: {key} {w} emitted, and is no session after the step")  # B
                continue
            if value != _value(session["records"]):
                self.problems.append(f"{tag}: {key} {w} emitted {value}, its value is {_value(session['records'])}")
            parts = [p for p, was in before.get(key, {}).items() if was and w[0] <= p[0] and p[1] <= w[1]]
            if update != bool(parts):  # D
                self.problems.append(f"{tag}: {key} {w} emitted update={update}, emitted parts {parts}")
            if self.last.get((key, w)) == (value, update):  # C
                self.problems.append(f"{tag}: {key} {w} emitted {value} again (watermark {op.watermark})")
            self.last[(key, w)] = (value, update)
            session["emitted"] = True

    def check_state(self, tag: str, op: Any) -> None:
        state = op.state
        for key in list(self.sessions):
            mine = self.sessions[key]
            for w in [w for w in mine if w not in (state.get(key) or {})]:  # F
                want, last = _value(mine.pop(w)["records"]), self.last.pop((key, w), None)
                if last is None or last[0] != want:
                    self.problems.append(f"{tag}: {key} {w} dropped holding {want}, last emitted {last}")
                if op.watermark < w[1] - 1 + self.lateness:
                    self.problems.append(f"{tag}: {key} {w} dropped before its lateness passed ({op.watermark})")
            if not mine:
                del self.sessions[key]
        for key, windows in state.items():  # A
            if set(windows) != set(self.sessions.get(key, {})):
                self.problems.append(f"{tag}: {key} holds {sorted(windows)}, the oracle {sorted(self.sessions[key])}")
        for key, mine in self.sessions.items():  # E
            for w, session in mine.items():
                if w[1] - 1 <= op.watermark and self.last.get((key, w), (None,))[0] != _value(session["records"]):
                    self.problems.append(f"{tag}: {key} {w} fired, last emitted {self.last.get((key, w))}")


def as_0_6(state: dict) -> dict:
    """The state as raystream 0.6 marked it: an emitted session True."""
    return {k: {w: [e[0], bool(e[1])] for w, e in windows.items()} for k, windows in state.items()}


def run(seed: int, kind: str, max_steps: int = 25) -> list[str]:
    """One random script; the problems the oracle found (none: it passed)."""
    rnd = random.Random(seed)
    lateness = rnd.choice([0, 3, 10, 40])
    op, oracle = session_step(kind, lateness), Oracle(lateness)
    counter, low, base, behind = 0, -30, None, False
    steps = rnd.randint(3, max_steps)
    for i in range(steps + 1):
        r = rnd.random()
        if i == steps:
            action: tuple = ("wm", MAX_TIME)
        elif r < 0.45:
            mark = op.watermark if op.watermark > low else low
            rows = []
            for _ in range(rnd.randint(1, 6) if kind == "columnar" else 1):
                counter += 1
                rows.append((rnd.choice("ab"), counter, rnd.randint(mark - 30, mark + 25)))
            action = ("rows", rows)
        elif r < 0.75:
            action = ("wm", (op.watermark if op.watermark != MIN_TIME else low - 5) + rnd.randint(1, 15))
        else:  # 0.6's checkpoints come before any restore behind: 0.6 itself fired such windows again
            action = ("restore", rnd.choice(["same", "older", "incremental"] + ([] if behind else ["0.6"])))
        tag = f"seed {seed} {kind} lateness {lateness} step {i} {action}"
        before = {k: {w: s["emitted"] for w, s in ws.items()} for k, ws in oracle.sessions.items()}
        outs: list[tuple] = []
        if action[0] == "rows":
            outs = _emitted(_feed(op, kind, action[1]), kind)
            late = _late_values(op, kind)
            for k, v, t in action[1]:
                if v not in late:
                    oracle.add(k, v, t)
        elif action[0] == "wm":
            outs = _emitted(op.on_watermark(action[1]), kind)
        else:
            full, at = op.snapshot(), op.watermark
            if action[1] == "incremental" and base is not None:  # H
                changed, deleted = op.changed_state()
                for k in deleted:
                    base.pop(k, None)
                base.update(pickle.loads(pickle.dumps(changed)))
                if sorted(base.items(), key=repr) != sorted(full.items(), key=repr):
                    oracle.problems.append(f"{tag}: the incremental state is not the full one")
            else:
                base = None if action[1] != "incremental" else pickle.loads(pickle.dumps(full))
            state = pickle.loads(pickle.dumps(full))
            if action[1] == "0.6":
                state = as_0_6(state)
            elif action[1] == "older" and at != MIN_TIME:
                at -= rnd.randint(0, 30)
                behind = True
            op = session_step(kind, lateness)
            op.restore(state, None if at == MIN_TIME else at)
            if base is not None:
                op.changed = set()  # the next delta is from here
        oracle.check_emitted(tag, op, before, outs)
        oracle.check_state(tag, op)
        if oracle.problems:
            return oracle.problems
    if op.state:  # G
        oracle.problems.append(f"seed {seed} {kind}: state left at the end")
    return oracle.problems
