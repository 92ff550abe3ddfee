"""Every kind of window step through restores and rescales whose old subtasks' watermarks
differ, against a reference (tests/unit/_runtime/operators/test_window_references.py).

The system: window subtasks at a parallelism, each with its own watermark, rows routed by
key group, snapshots (full, or incremental: checked against the full ones) restored
through `rescale.merge_states` at parallelism 1 to 3, chains of them, as assembly.py
restores them (R4).

The reference: one step per key group, never restored, whose watermark is the greatest
its key group has had on whichever subtask held it, fed the same rows in the same
batches. Per (key, window) the system must emit what the reference emits, (value,
update) in order (a join's pairs as a multiset), and count as many rows late.

Joins are also checked against an oracle made from the rows alone (their values are unique
ids: left even, right odd), since the reference runs the same code and cannot see a join
that is wrong without any restore (0.7.0's, which never emitted the pairs of rows that came
within the lateness, passes the reference): every pair of rows admitted to a (key, window)
(end - 1 + lateness > the greatest watermark the key group had when the row came) is in
the output, a columnar join's exactly once; rows admitted to none are late, per side.

Kinds: per-record tumbling, sliding, session windows and joins; over Arrow tumbling and
sliding in both layouts (window-major, per key), sessions, Lifetime windows and joins.
Keys: ints, strings, floats (-0.0 and 0.0 are one key) and two-column tuples.
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
from raystream._runtime.operators.columnar_join import ArrowJoinOp
from raystream._runtime.operators.columnar_lifetimes import LifetimeWindowOp
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.windows import JoinOp, WindowOp
from raystream._runtime.state.snapshot import SubtaskState
from raystream._runtime.state.window_entries import per_key
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed, untimed
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import ArrowJoin, Lifetime, Session, Sliding, Tumbling

MAXP = 128
BEFORE_EPOCH = -50_000_000_000  # a shift of every time and watermark to about 1968
KINDS = ["rec-tumble", "rec-slide", "rec-session", "rec-join", "arrow-tumble", "arrow-tumble-perkey",
         "arrow-slide", "arrow-slide-perkey", "arrow-session", "lifetime", "arrow-join"]
KEYTYPES = ["int", "str", "float", "tuple"]


def assigner_of(kind):
    if "session" in kind:
        a = Session(0.7)
    elif "slide" in kind:
        a = Sliding(2, 1)
    elif kind == "lifetime":
        a = Lifetime("end")
    else:
        a = Tumbling(1)
    a.check("w")
    return a


class Kind:
    """Making, feeding, reading and snapshotting one kind of window step."""

    def __init__(self, kind, keytype, lateness):
        self.kind, self.keytype, self.lateness = kind, keytype, lateness
        self.arrow = not kind.startswith("rec")
        self.join = kind.endswith("join")
        self.kcols = ("k", "k2") if keytype == "tuple" else ("k",)

    def step(self):
        a = assigner_of(self.kind)
        if self.kind == "rec-join":
            return Step("w", StepKind.JOIN, ("l", "r"), fn=lambda l, r: (l, r),
                        window=WindowSpec(a, self.lateness, "join"))
        if self.kind.startswith("rec"):
            return Step("w", StepKind.WINDOW, ("in",), fn=operator.add, window=WindowSpec(a, self.lateness, "reduce"))
        if self.kind == "arrow-join":
            return Step("w", StepKind.JOIN, ("l", "r"), key_columns=self.kcols,
                        arrow=ArrowJoin(self.kcols, self.kcols), window=WindowSpec(a, self.lateness, "columnar"))
        return Step("w", StepKind.WINDOW, ("in",), key_columns=self.kcols, arrow=(("total", agg.sum("v")),),
                    window=WindowSpec(a, self.lateness, "columnar"))

    def new(self):
        s = self.step()
        if self.kind == "rec-join":
            return JoinOp(s)
        if self.kind.startswith("rec"):
            return WindowOp(s)
        if self.kind == "arrow-join":
            return ArrowJoinOp(s)
        if self.kind == "lifetime":
            return LifetimeWindowOp(s)
        op = ArrowWindowOp(s)
        if self.kind.endswith("perkey"):
            op._columnar = False
            op.state = {}
        return op

    def restored(self, snaps, i, q):
        merged = merge_states(snaps, [self.step()], i, q, MAXP)
        op = self.new()
        op.restore_meta(merged.step_meta.get("w", []))
        op.restore(merged.keyed.get("w", {}), merged.watermarks.get("w"))
        op.late_records = merged.late.get("w", 0)
        op.restore_group_watermarks(merged.group_watermarks.get("w", {}), MAXP)
        if self.kind.endswith("perkey"):
            op._columnar = False
        return op

    # rows: (key, value, t, side, end)
    def feed(self, op, rows):
        if not rows:
            return []
        side = rows[0][3]
        keys = [r[0] for r in rows]
        times = [r[2] for r in rows]
        if not self.arrow:
            vals = [r[1] for r in rows]
            b = Timed(KeyedBatch(keys, vals), times)
            return self.results(op.process_side(b, side) if self.join else op.process(b))
        cols = {}
        if self.keytype == "tuple":
            cols["k"] = pa.array([k[0] for k in keys], pa.int64())
            cols["k2"] = pa.array([k[1] for k in keys], pa.string())
        else:
            cols["k"] = pa.array(keys, {"int": pa.int64(), "str": pa.string(), "float": pa.float64()}[self.keytype])
        cols["v"] = pa.array([r[1] for r in rows], pa.int64())
        if self.kind == "lifetime":
            cols["end"] = pa.array([r[4] for r in rows], pa.int64())
        b = Timed(ArrowKeyed(pa.RecordBatch.from_pydict(cols), self.kcols), np.array(times, dtype=np.int64))
        return self.results(op.process_side(b, side) if self.join else op.process(b))

    def results(self, batch):
        if not batch or not len(batch):
            return []
        inner, _ = untimed(batch)
        out = []
        if not self.arrow:
            for k, r in zip(inner.keys, inner.values):
                out.append((norm(k), round(r.start.timestamp() * 1000), round(r.end.timestamp() * 1000),
                            r.value, r.update))
            return out
        for r in inner.to_pylist():
            k = tuple(r[c] for c in self.kcols) if len(self.kcols) > 1 else r["k"]
            s, e = round(r["window_start"].timestamp() * 1000), round(r["window_end"].timestamp() * 1000)
            if self.join:
                out.append((norm(k), s, e, (r["v_left"], r["v_right"]), None))
            else:
                out.append((norm(k), s, e, r["total"], r["update"]))
        return out

    def late(self, op, sides=None):
        """How many rows `op` found late since the last call; a join's per side into `sides`
        (its values are unique ids: left even, right odd)."""
        if not self.arrow:
            b = op.take_late()
            if b and sides is not None and self.join:
                for v in untimed(b)[0].values:
                    sides[v % 2] += 1
            return len(b) if b else 0
        batches = op.take_late_batches()
        if sides is not None and self.join:
            for b in batches:
                for v in untimed(b)[0].batch.column("v").to_pylist():
                    sides[v % 2] += 1
        return sum(len(b) for b in batches)

    def snapshot(self, op, i, p):
        if hasattr(op, "settle"):
            op.settle()
        full = pickle.loads(pickle.dumps(op.snapshot()))
        meta = op.state_meta()
        return full, SubtaskState(5, "w", i, p, keyed={"w": full}, watermarks={"w": op.watermark},
                                  group_watermarks={"w": dict(op.group_watermarks)} if op.group_watermarks else {},
                                  late={"w": op.late_records} if op.late_records else {},
                                  step_meta={"w": meta} if meta is not None else {})


def comparable(x):
    """State made comparable with ==: Arrow rows as Python lists."""
    if isinstance(x, dict):
        return {k: comparable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(comparable(v) for v in x)
    if hasattr(x, "batch") and hasattr(x, "parts"):  # columnar join Rows
        return ("rows", x.batch().to_pylist() if x.parts else [])
    return x


def diff_of(a, b):
    keys = set(a) | set(b)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def norm(k):
    if isinstance(k, float) and k == 0:
        return 0.0
    return k


def make_keys(rnd, keytype):
    n = rnd.randint(1, 8)
    if keytype == "int":
        return list(range(n))
    if keytype == "str":
        return [f"key{i}" for i in range(n)]
    if keytype == "float":
        return [0.0, -0.0, 1.5, -2.25, 3.0, 1e10, 0.1, 7.0][:max(n, 2)]
    return [(i % 3, f"s{i}") for i in range(n)]


def owner(key, p):
    g = key_group(key, MAXP)
    return next(s for s in range(p) if g in groups_of_subtask(s, p, MAXP))


def run(seed: int, kinds: list[str] = KINDS, shift: int = 0) -> list[str]:
    """One random case; the problems found (none: it passed). `shift` moves every time."""
    rnd = random.Random(seed)
    kind = rnd.choice(kinds)
    keytype = rnd.choice(KEYTYPES)
    if kind == "lifetime" and keytype == "tuple":
        keytype = "int"
    K = Kind(kind, keytype, rnd.choice([0, 500, 1500, 4000]))
    p = rnd.choice([1, 2, 3])
    ops, marks, greatest = [K.new() for _ in range(p)], [0] * p, 0
    keys = make_keys(rnd, keytype)
    incremental, bases = rnd.random() < 0.5, [None] * p
    groups = sorted({key_group(k, MAXP) for k in keys})
    ref = {g: K.new() for g in groups}
    seen = defaultdict(int)
    out_sys, out_ref = [], []
    late_sys = late_ref = 0
    problems = []
    # joins: an oracle from the rows alone (not the step's code): a row is admitted to a
    # window of its key iff end - 1 + lateness > the greatest watermark its key group had
    # when it came; every pair of admitted rows of a (key, window) must be in the output
    # (a columnar join: once; per record: in the window's last emission), rows admitted to
    # none are late, per side
    ids, admitted, late_oracle, late_sides = [0, 1], defaultdict(lambda: ([], [])), [0, 0], [0, 0]
    assigner = assigner_of(kind)
    for _ in range(rnd.randint(5, 40)):
        a = rnd.random()
        if a < 0.45:
            rows = []
            side = rnd.randrange(2)
            for _ in range(rnd.randint(1, 5)):
                t = rnd.randint(max(0, greatest - 6000), greatest + 4000)
                end = t + rnd.randint(0, 3000) if rnd.random() < 0.4 else None
                rows.append((rnd.choice(keys), rnd.randint(1, 9), t + shift, side, None if end is None else end + shift))
                if K.join:
                    k, _, ts, _, _ = rows[-1]
                    rows[-1] = (k, ids[side], ts, side, None)
                    ids[side] += 2
                    g = key_group(k, MAXP)
                    windows = [w for w in assigner.assign(ts)
                               if g not in seen or w[1] - 1 + K.lateness > seen[g] + shift]
                    for w in windows:
                        admitted[(norm(k), w[0], w[1])][side].append(ids[side] - 2)
                    late_oracle[side] += not windows
            by_owner = defaultdict(list)
            for r in rows:
                by_owner[owner(r[0], p)].append(r)
            for i, mine in by_owner.items():
                out_sys.extend(K.feed(ops[i], mine))
            by_group = defaultdict(list)
            for r in rows:
                by_group[key_group(r[0], MAXP)].append(r)
            for g, mine in by_group.items():
                out_ref.extend(K.feed(ref[g], mine))
        elif a < 0.8:
            i = rnd.randrange(p)
            marks[i] += rnd.randint(1, 2500)
            greatest = max(greatest, marks[i])
            out_sys.extend(K.results(ops[i].on_watermark(marks[i] + shift)))
            for g in groups:
                if g in groups_of_subtask(i, p, MAXP):
                    seen[g] = max(seen[g], marks[i])
                    out_ref.extend(K.results(ref[g].on_watermark(seen[g] + shift)))
        else:
            snaps = []
            for i, op in enumerate(ops):
                if incremental and bases[i] is not None and hasattr(op, "changed_state"):
                    if hasattr(op, "settle"):
                        op.settle()
                    changed, deleted = op.changed_state()
                    base = pickle.loads(pickle.dumps(bases[i]))
                    base.update(per_key(pickle.loads(pickle.dumps(changed))))
                    for k in deleted:
                        base.pop(k, None)
                    full, st = K.snapshot(op, i, p)
                    if comparable(base) != comparable(full):
                        problems.append(f"subtask {i}'s incremental state is not its full state: "
                                        f"{diff_of(comparable(base), comparable(full))}")
                else:
                    full, st = K.snapshot(op, i, p)
                op.changed = set()
                bases[i] = full
                snaps.append(pickle.loads(pickle.dumps(st)))
            late_sys += sum(K.late(op, late_sides) for op in ops)
            q = rnd.choice([1, 2, 3])
            ops = [K.restored(snaps, i, q) for i in range(q)]
            marks = [op.watermark - shift if op.watermark > -2**62 else 0 for op in ops]
            if q != p:
                bases = [None] * q
            p = q
        late_sys += sum(K.late(op, late_sides) for op in ops)
        late_ref += sum(K.late(op) for op in ref.values())
    for op in ops:
        out_sys.extend(K.results(op.on_watermark(MAX_TIME)))
        late_sys += K.late(op, late_sides)
    for op in ref.values():
        out_ref.extend(K.results(op.on_watermark(MAX_TIME)))
        late_ref += K.late(op)
    tag = f"seed {seed} {kind} keys={keytype} lateness={K.lateness}"
    if late_sys != late_ref:
        problems.append(f"late: system {late_sys}, reference {late_ref}")
    def per(out):
        d = defaultdict(list)
        for k, s, e, v, u in out:
            d[(k, s, e)].append((v, u))
        return d
    ps, pr = per(out_sys), per(out_ref)
    if K.join:
        if late_sides != late_oracle:
            problems.append(f"late rows per side (left, right): system {late_sides}, oracle {late_oracle}")
        for w in sorted(set(admitted) | set(ps), key=repr):
            ls, rs = admitted.get(w, ([], []))
            pairs = sorted((l, r) for l in ls for r in rs)
            if K.arrow:
                got = sorted(v for v, _ in ps.get(w, []))
            else:  # per record: a pair a record each; a late row emits the window's pairs again as updates
                emitted = ps.get(w, [])
                got = sorted(set(v for v, _ in emitted))
                fired = [v for v, u in emitted if not u]
                if len(fired) != len(set(fired)):
                    problems.append(f"{w}: fired more than once (update=False): {emitted}")
            if got != pairs:
                problems.append(f"{w}: system's pairs {got}, the oracle's {pairs}")
    if K.join:  # compare as multisets per window
        ps = {w: sorted(map(repr, v)) for w, v in ps.items()}
        pr = {w: sorted(map(repr, v)) for w, v in pr.items()}
    for w in sorted(set(ps) | set(pr), key=repr):
        if ps.get(w, []) != pr.get(w, []):
            problems.append(f"{w}: system {ps.get(w, [])} reference {pr.get(w, [])}")
    return [tag + ": " + x for x in problems]


