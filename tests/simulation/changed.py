"""Runs from a savepoint into a changed job (stories.py): the savepoint and runs from it,
and before them one run of a job whose stateful step (the columnar aggregate's or the
window's, columnar.py, windowed.py) is another under the same id. Review 47 found steps
that took state they misread: a per-record step took a columnar window's partials as its
values, and a window keyed by other columns fired a key "ab" as k="a", k2="b".

How the step changed (`CHANGES`, one drawn per schedule):
- kind: a columnar step of the other kind (a window where the aggregate was, and the
  reverse);
- per_record: a per-record `reduce` keyed by a function;
- keys: the same step keyed by two columns ("k", "id") where it was keyed by "k".

The run into the changed job only restores (control.py ends it there: its sinks are the
line's, and it must not write into them). The invariant: a changed step that restores
state from the savepoint refuses it with a RestoreError naming the step, before it reads
it; a step that restores none may take the nothing it is given.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import raystream as rs
from raystream import aggregates as agg
from raystream.graph import Step
from raystream.windows import Tumbling

from .columnar import AGGREGATES, Placeholder
from .windowed import WINDOW_STEP
from .world import SimFailure

CHANGES = ("kind", "per_record", "keys")


def changed_steps(scenario: Any, how: str) -> tuple[str, list[Step]]:
    """The stateful step's id, and the operator steps of the job with it changed `how`."""
    columnar = scenario.columns is not None
    step_id = "agg" if columnar else WINDOW_STEP
    job = rs.Job("sim")
    event_time = scenario.timing and scenario.timing.event_time(True)
    stream = job.source("src", Placeholder(), event_time=event_time)
    if how == "per_record":
        stream.key_by("by_k", lambda row: row["k"]).reduce(step_id, lambda a, b: a)
    elif how == "kind" and columnar:
        stream.key_by("by_k", "k").window(Tumbling(dt.timedelta(milliseconds=10))).aggregate(step_id, n=agg.count())
    elif how == "kind":
        stream.key_by("by_k", "k").aggregate(step_id, n=agg.count(), total=agg.sum(scenario.windows.column))
    elif columnar:  # keys
        stream.key_by("by_k", ("k", "id")).aggregate(step_id, **AGGREGATES)
    else:
        w = scenario.windows
        (stream.key_by("by_k", ("k", "id"))
         .window(Tumbling(dt.timedelta(milliseconds=w.size_ms)), allowed_lateness=dt.timedelta(milliseconds=w.lateness_ms))
         .aggregate(step_id, n=agg.count(), total=agg.sum(w.column)))
    return step_id, list(job.steps.values())


def check_changed(run: Any) -> None:
    """The invariant of the module docstring, for a run into a changed job that has ended."""
    step_id, how = run.changed
    took = step_id in run.restored_steps
    if run.outcome.startswith("failed"):
        refused = f"step {step_id!r}" in run.outcome
        if not refused and took:
            raise SimFailure(f"run {run.label} into a job whose step {step_id!r} changed ({how}) failed for another "
                             f"reason than its state: {run.outcome}")
        return
    if took:
        raise SimFailure(f"run {run.label} into a job whose step {step_id!r} changed ({how}) took the savepoint's "
                         f"state of that step, which it misreads ({run.outcome})")
