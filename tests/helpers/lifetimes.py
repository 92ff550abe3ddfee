"""The rules of Lifetime windows (raystream.windows.Lifetime, docs/guide/columnar.md),
a row at a time in plain Python: what the operator tests hold the step to."""
from __future__ import annotations

import pickle

from raystream import aggregates as agg
from raystream._runtime.operators.columnar_lifetimes import MAX_END, LifetimeWindowOp
from raystream._runtime.state.changelog import StateChangelog
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Lifetime


class Model:
    """The rules of raystream.windows.Lifetime, a row at a time in plain Python: a row goes
    to the windows of its key open when it comes (its own, if it opens one) that hold its
    time; a row in none waits, and goes to the first window opened later that holds it;
    a row that comes when the watermark has passed its time (plus the lateness), and
    that no open window holds, is late."""

    def __init__(self, lateness):
        self.lateness, self.watermark = lateness, -(2 ** 63)
        self.windows: dict[str, dict[tuple[int, int], list]] = {}  # key -> (start, end) -> [values, fired]
        self.waiting: list[tuple[str, int | None, int]] = []
        self.late: list[tuple] = []

    def batch(self, rows) -> list[tuple]:
        wm, lateness = self.watermark, self.lateness
        touched = set()
        for k, v, t, end in rows:
            end = None if end is None else min(end, MAX_END)  # an end past MAX_END is taken as it
            windows = self.windows.setdefault(k, {})
            if end is not None and end + lateness > wm and (t, end + 1) not in windows:  # it opens a window
                w = windows[(t, end + 1)] = [[], False]
                still = []
                for row in self.waiting:  # the key's waiting rows it holds join it, and wait no more
                    if row[0] == k and t <= row[2] < end + 1:
                        w[0].append(row[1])
                        touched.add((k, (t, end + 1)))
                    else:
                        still.append(row)
                self.waiting = still
            homes = [w for w in windows if w[0] <= t < w[1]]
            for w in homes:
                windows[w][0].append(v)
                touched.add((k, w))
            if not windows:
                del self.windows[k]
            if homes:
                continue
            if t + lateness <= wm:
                self.late.append((k, v, t))
            else:
                self.waiting.append((k, v, t))
        out = []
        for k, w in touched:  # a window past its end (within the lateness) emits at once, as the per-record step
            if w[1] - 1 <= wm:
                out.append(self.result(k, w, self.windows[k][w][1]))
                self.windows[k][w][1] = True
        return sorted(out, key=repr)

    def mark(self, wm) -> list[tuple]:
        self.watermark = wm = max(wm, self.watermark)
        out = []
        for k in list(self.windows):
            for w, entry in list(self.windows[k].items()):
                if not entry[1] and w[1] - 1 <= wm:
                    out.append(self.result(k, w, False))
                    entry[1] = True
                if w[1] - 1 + self.lateness <= wm:
                    del self.windows[k][w]
            if not self.windows[k]:
                del self.windows[k]
        self.waiting = [r for r in self.waiting if r[2] + self.lateness > wm]
        return sorted(out, key=repr)

    def result(self, k, w, update):
        values = [v for v in self.windows[k][w][0] if v is not None]
        n = len(self.windows[k][w][0])
        return (k, w[0], w[1], (n, max(values, default=None), values[0] if values else None,
                                values[-1] if values else None), update)


AGGREGATES = (("n", agg.count()), ("top", agg.max("v")), ("first", agg.first("v")), ("last", agg.last("v")))


def lifetime(lateness_ms=0) -> LifetimeWindowOp:
    assigner = Lifetime("end")
    assigner.check("w")
    return LifetimeWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("k",), arrow=AGGREGATES,
                                 window=WindowSpec(assigner, lateness_ms, "columnar")))


def restored(op, lateness):
    """A new step restored from a full snapshot of `op` (as a checkpoint takes it)."""
    keyed, _, _ = StateChangelog(incremental=False, base_every=4, compact_above=10 ** 9).capture([op])
    state, meta = pickle.loads(pickle.dumps((keyed["w"], op.state_meta())))
    new = lifetime(lateness)
    new.restore(state, op.watermark)
    new.restore_meta([meta])
    return new


def chained(changelog, op, chain):
    """What a restore reads after this capture: the full snapshot, or `chain` with the
    snapshot's changes applied, as `materialize` applies them (I5)."""
    keyed, incremental, _ = changelog.capture([op])
    part = pickle.loads(pickle.dumps(keyed["w"]))  # now: the live state goes on changing
    changelog.parts = []  # as if the snapshot were uploaded: the next builds on it
    if not incremental:
        return part
    changed, deleted = part
    chain = {**chain, **changed}
    for key in deleted:
        chain.pop(key, None)
    return chain


def restored_from(chain, op, lateness):
    new = lifetime(lateness)
    new.restore(pickle.loads(pickle.dumps(chain)), op.watermark)
    new.restore_meta([op.state_meta()])
    return new
