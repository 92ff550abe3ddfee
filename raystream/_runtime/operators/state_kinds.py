"""Which kind of step wrote a keyed state, from the meta kept beside it in every snapshot
(`KeyedOp.state_meta`), and the one refusal a step gives a state it would misread.

A step reads another kind's state wrongly and silently (a per-record window would fire a
columnar window's partials as its values), so each step's `restore_meta` names the kinds
it takes and refuses the rest with `refused`, before it reads the state.
"""
from __future__ import annotations

from typing import Any

from raystream.errors import RestoreError

#: What `meta_kind` says besides a columnar step's own kind ("aggregate", "window", "join").
PER_RECORD = "per-record"  # a step that keeps no meta: the rescale's NO_META (an empty dict)
TTL = "ttl"  # a per-record step's state kept with a time-to-live: its meta names no kind
UNSAID = "columnar"  # a columnar step's of the first form (aggregates, no kind): taken as the step's own


def meta_kind(meta: Any) -> str | None:
    """The kind of step that wrote a state with this meta: a columnar step's (its "op"),
    UNSAID, PER_RECORD, TTL, or None when the snapshot does not say (raystream before step
    metas: such state is taken as it is)."""
    if not isinstance(meta, dict):
        return None
    if not meta:
        return PER_RECORD
    if meta.get("op"):
        return str(meta["op"])
    return UNSAID if "aggregates" in meta else TTL


def written_by(meta: Any) -> str:
    """Who wrote a state with this meta, for a message."""
    kind = meta_kind(meta)
    if kind == PER_RECORD:
        return "another kind of step (a per-record step, say)"
    if kind == TTL:
        return "a per-record step with a time-to-live"
    if kind == UNSAID:
        return "a columnar step"
    windows = f" of {meta['windows']} windows" if isinstance(meta, dict) and meta.get("windows") else ""
    return f"a columnar {kind} step{windows}"


def refused(step_id: str, meta: Any, this: str) -> RestoreError:
    """The error for a step (`this`: what it is) given a state that `meta` says another
    kind of step wrote."""
    return RestoreError(
        f"step {step_id!r}: the checkpoint's state for this step id was written by {written_by(meta)}, and this "
        f"job's step is {this}; it cannot read that state: restore with the job that wrote it, or give this step "
        "another id to start it afresh (allow_non_restored_state keeps the old state out), or start without resume")


def check_key_columns(step_id: str, before: list[str] | None, now: list[str]) -> None:
    """Refuse a state keyed by other key columns than `now` (`before`: the checkpoint's,
    None when it does not say): another number of them, or these in another order. A key
    of one column is its value, of several the tuple of theirs in order, so the state's
    keys would not be this step's keys (a window fired a key "ab" as k="a", k2="b"; an
    aggregate's running values were left behind, its keys never met again). Columns
    renamed upstream cannot be told from other columns, and are taken."""
    if before is None:
        return
    if len(before) != len(now) or (before != now and sorted(before) == sorted(now)):
        raise RestoreError(
            f"step {step_id!r}: the checkpoint's state was keyed by {before}, and this step keys by {now}: a key of "
            "one column is a value, of several a tuple in their order, and the state's keys would not be this "
            "step's; restore with the job's original key_by, give this step another id, or start without resume")
