"""Session windows over Arrow: how one batch changes each key's sessions
(operators/columnar_windows.py runs it and commits what it returns).

A row at t is the window [t, t + gap); windows that touch (one's start at or before the
other's end) merge. So, per key, the batch's rows sorted by time split into clusters
where two neighbours are more than `gap` apart (numpy, over the whole batch), and Arrow
computes each cluster's partials in one `group_by`. Then, in Python once per distinct
key, the clusters and the key's open sessions merge where they touch, and their states
merge (`Aggregate.combine` for sessions that were apart before, `merge` for a cluster's
partials).

Which rows are late must be what the per-record step decides, record by record in
arrival order: a row whose own window is late (t + gap - 1 + allowed lateness <=
watermark) is late unless, when it arrives, it touches an open session or a row of its
key taken before it in the batch (a window in the state is never late: its cleanup timer
fired first). Such rows are rare and only their keys go through that check, in Python.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.aggregate import unused_name
from raystream._runtime.operators.windows import merged_mark
from raystream._runtime.transport.arrow_keys import DistinctKeys, distinct_keys

if TYPE_CHECKING:
    from raystream._runtime.operators.columnar_windows import ArrowWindowOp

Window = tuple[int, int]


@dataclass
class SessionChange:
    """What a batch does: each key's windows after it (entries that did not change are
    the same objects as before), and the rows late for their session (None: none)."""

    windows: dict[Any, dict[Window, list]]
    late: np.ndarray | None


def sessions(op: ArrowWindowOp, rows: pa.RecordBatch, times: np.ndarray) -> SessionChange:
    """The sessions of every key of the batch after it; the state is not changed."""
    gap = op.assigner._gap
    distinct = distinct_keys(rows, tuple(op.key_columns))
    codes = distinct.rows
    alone_late = times + (gap - 1 + op.lateness) <= op.watermark
    accepted = _accepted(op, distinct, times, alone_late, gap) if alone_late.any() else None
    kept = np.arange(len(times)) if accepted is None else np.flatnonzero(accepted)
    late = None if accepted is None else ~accepted
    if not len(kept):
        return SessionChange({}, late)
    order = kept[np.lexsort((times[kept], codes[kept]))]  # by key, then time
    t, c = times[order], codes[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (c[1:] != c[:-1]) | (np.diff(t) > gap)
    cluster = np.empty(len(times), dtype=np.int64)
    cluster[order] = np.cumsum(first) - 1
    firsts = np.flatnonzero(first)
    lasts = np.append(firsts[1:] - 1, len(order) - 1).astype(np.int64)
    bounds = list(zip(t[firsts].tolist(), (t[lasts] + gap).tolist()))  # each cluster's window

    table = op.values(rows)
    if accepted is not None:
        table = table.filter(pa.array(accepted))
    column = unused_name(table.column_names, "__raystream_session")
    groups = op.folds.group(table.append_column(column, pa.array(cluster[kept])), [column])
    op._learn(table, groups.partial_types())
    partials = groups.python_partials()
    group_of = np.empty(len(firsts), dtype=np.int64)  # cluster -> its row of `groups`
    group_of[groups.keys[0].to_numpy()] = np.arange(groups.keys[0].length())
    group_of = group_of.tolist()

    windows: dict[Any, dict[Window, list]] = {}
    cluster_codes = c[firsts]
    runs = np.flatnonzero(np.r_[True, cluster_codes[1:] != cluster_codes[:-1]]).tolist() + [len(firsts)]
    for a, b in zip(runs, runs[1:]):  # the clusters of one key
        key = distinct.keys[int(cluster_codes[a])]
        mine = [(bounds[i], [p[group_of[i]] for p in partials]) for i in range(a, b)]
        windows[key] = _merged(op, op.state.get(key) or {}, mine)
    return SessionChange(windows, late)


def _merged(op: ArrowWindowOp, before: dict[Window, list], clusters: list[tuple[Window, list]]
            ) -> dict[Window, list]:
    """A key's sessions after its clusters of the batch joined them: touching windows
    become one, the earlier one's state first."""
    items = sorted([(w, None) for w in before] + clusters, key=lambda item: item[0])
    after: dict[Window, list] = {}
    run = [items[0]]
    end = items[0][0][1]
    for item in items[1:]:
        if item[0][0] <= end:
            run.append(item)
            end = max(end, item[0][1])
            continue
        _close(op, before, run, after)
        run, end = [item], item[0][1]
    _close(op, before, run, after)
    return after


def _close(op: ArrowWindowOp, before: dict[Window, list], run: list[tuple[Window, Any]],
           after: dict[Window, list]) -> None:
    """One merged session of `run` (open sessions and clusters that touch) into `after`."""
    if len(run) == 1 and run[0][1] is None:  # an open session no row touched
        after[run[0][0]] = before[run[0][0]]
        return
    state, marks = None, []
    for w, partials in run:  # in start order
        if partials is None:
            old = before[w]
            state = old[0] if state is None else op.folds.combine(state, old[0])
            marks.append(old[1])
    if state is None:
        state = op.folds.fresh()
    for w, partials in run:
        if partials is not None:
            state = op.folds.merge_one(state, partials)
    merged = (min(w[0] for w, _ in run), max(w[1] for w, _ in run))
    after[merged] = [state, merged_mark(marks, merged)]


def _accepted(op: ArrowWindowOp, distinct: DistinctKeys, times: np.ndarray, alone_late: np.ndarray,
              gap: int) -> np.ndarray:
    """Which rows the per-record step would take: every row whose own window is not late,
    and a row whose own window is late if, when it arrives, it touches an open session of
    its key or a row of its key taken before it."""
    codes = distinct.rows
    accepted = ~alone_late
    order = np.argsort(codes, kind="stable")  # each key's rows together, in arrival order
    sorted_codes = codes[order]
    for code in np.unique(codes[alone_late]).tolist():
        lo, hi = np.searchsorted(sorted_codes, [code, code + 1])
        open_sessions = list(op.state.get(distinct.keys[code]) or ())
        taken: list[int] = []  # times of the key's rows taken so far, sorted
        for i in order[lo:hi].tolist():
            t = int(times[i])
            if alone_late[i] and not (any(w0 <= t + gap and w1 >= t for w0, w1 in open_sessions)
                                      or _near(taken, t, gap)):
                continue
            accepted[i] = True
            bisect.insort(taken, t)
    return accepted


def _near(taken: list[int], t: int, gap: int) -> bool:
    """Whether a time in sorted `taken` is within `gap` of t (their windows touch)."""
    j = bisect.bisect_left(taken, t - gap)
    return j < len(taken) and taken[j] <= t + gap
