"""Incremental keyed state: a snapshot writes only the keys that changed since the last
one (docs/protocol.md, "Incremental state", I1-I6). Keyed operators record the keys they
touch (I1); `StateChangelog.capture` builds a snapshot of changes over earlier parts (I2)
and declines one over a failed upload (I3); `due`/`merge` turn the parts into a new base
in a Ray task (I4); `materialize` reads a snapshot back whole (I5); the manifest lists
every part, which retention keeps (I6, `CheckpointStore.retain`).

Every part is named with its SHA-256 in the snapshot that builds on it, and the
snapshot's own checksum is in the manifest, so each byte of every part is verified
before it is unpickled.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Protocol

import ray

from raystream._runtime.state.snapshot import PartRef, SubtaskState, decode, encode, read_exact
from raystream._runtime.state.window_entries import per_key
from raystream._storage import open_storage

logger = logging.getLogger(__name__)


class _Deleted:
    """Marks a key deleted in `ChangeTracking.written`."""

    def __repr__(self) -> str:
        return "DELETED"


DELETED = _Deleted()


class ChangeTracking(Protocol):
    """What `capture` needs of a keyed operator: the keys it touched (`changed`), or,
    when it keeps them, their new values (`written`, DELETED for a deleted key)."""

    step_id: str
    state: dict[Any, Any]
    changed: set[Any]
    written: dict[Any, Any] | None
    deletes: int  # DELETED entries in `written` (0: no need to look for them)


Changes = tuple[dict[Any, Any], list[Any]]  # (new values of changed keys, keys deleted)


def base_key(run_id: str, chain: str, subtask: int, checkpoint_id: int, attempt: int) -> str:
    return f"{run_id}/state/{chain}-{subtask:04d}/{checkpoint_id:012d}-{attempt:06d}.base"


def part_checkpoint(key: str) -> int:
    """The checkpoint id in a part's key (a snapshot's or a base's)."""
    parts = key.split("/")
    if parts[1] == "snapshots":
        return int(parts[2])
    return int(parts[-1].split("-", 1)[0])


def apply_part(tables: dict[str, dict[Any, Any]], keyed: dict[str, Any], full: bool) -> None:
    """Apply one part's tables (a base) or changes to `tables`, in place, each in the
    per-key layout (window state written as Arrow comes back per key: window_entries.py)."""
    if full:
        for step_id, table in keyed.items():
            tables[step_id] = per_key(table)
        return
    for step_id, (updates, deleted) in keyed.items():
        table = tables.setdefault(step_id, {})
        table.update(per_key(updates))
        for key in deleted:
            table.pop(key, None)


def read_part(storage: Any, part: PartRef) -> tuple[dict[str, Any], bool]:
    """(tables or changes, full) of a stored part, after checking its checksum."""
    obj = decode(read_exact(storage, part.key, part.size), part.sha256, f"state part {storage.uri(part.key)}",
                 (SubtaskState, dict))
    if isinstance(obj, SubtaskState):
        return obj.keyed, not obj.changelog
    return obj, True


def materialize(storage: Any, state: SubtaskState) -> SubtaskState:
    """I5: `state` with full tables in the per-key layout, read from its parts when it
    holds changes."""
    if not state.changelog:
        state.keyed = {step_id: per_key(table) for step_id, table in state.keyed.items()}
        return state
    tables: dict[str, dict[Any, Any]] = {}
    for part in state.parts:
        apply_part(tables, *read_part(storage, part))
    apply_part(tables, state.keyed, False)
    state.keyed, state.changelog = tables, False
    return state


@ray.remote(num_cpus=0, max_retries=2)
def merge(root: str, parts: list[PartRef], key: str) -> PartRef:
    """I4, in a process of its own: the tables of `parts` merged into one base at `key`."""
    return merge_parts(open_storage(root, private=True), parts, key)


def merge_parts(storage: Any, parts: list[PartRef], key: str) -> PartRef:
    tables: dict[str, dict[Any, Any]] = {}
    for part in parts:
        apply_part(tables, *read_part(storage, part))
    data, sha = encode(tables)
    storage.put(key, data)
    return PartRef(key, sha, len(data), parts[-1].checkpoint_id, True)


def _turns_over(parts: list[PartRef]) -> bool:
    """I2: whether the newest part holds at least half as many bytes as the base the parts
    start at. Such state turns over (windows that fire and open): written whole, it costs
    about what its changes do, and spares the merge (I4) that would read them all again.
    Bytes, not keys: a few large values that never change keep small changes small."""
    return len(parts) > 1 and 2 * parts[-1].size >= parts[0].size


class StateChangelog:
    """The parts of one subtask's keyed state: what the next snapshot builds on (I2-I4)."""

    def __init__(self, *, incremental: bool, base_every: int, compact_above: int):
        self.incremental = incremental
        self.base_every = base_every
        self.compact_above = compact_above
        self.parts: list[PartRef] | None = None  # None: the next snapshot is full
        self.merging = False
        self._failed: set[str] = set()

    def restored(self, parts: list[PartRef] | None) -> None:
        """I5: continue `parts` (this subtask's own), or start over when None."""
        self.parts = list(parts) if parts and self.incremental else None

    def capture(self, ops: Iterable[ChangeTracking]) -> tuple[dict[str, Any], bool, list[PartRef]]:
        """I2: (keyed, is a changelog, the parts it builds on). Clears the changed keys."""
        ops = list(ops)
        if self.parts is None:
            full = True
        elif self.merging:
            full = False
        elif sum(p.size for p in self.parts) < self.compact_above:  # small: rewritten now and then, never merged
            full = len(self.parts) > self.base_every
        else:  # merged when due (I4), unless the state turns over
            full = _turns_over(self.parts)
        keyed: dict[str, Any] = {}
        for op in ops:
            settle = getattr(op, "settle", None)
            if settle is not None:  # state held outside the dict between snapshots goes in (Lifetime windows)
                settle()
            written = getattr(op, "written", None)
            if full:
                whole = getattr(op, "whole_state", None)  # the step picks it (columnar windows: Arrow rows)
                keyed[op.step_id] = whole() if whole is not None else op.state
            elif written is not None:  # the new values are at hand: no lookup in the table
                deleted = [k for k, v in written.items() if v is DELETED] if getattr(op, "deletes", 1) else []
                for k in deleted:
                    del written[k]
                op.deletes = 0
                keyed[op.step_id] = (written, deleted)
            elif hasattr(op, "changed_state"):  # the step picks them (columnar windows: in Arrow)
                keyed[op.step_id] = op.changed_state()
            else:
                state, changed = op.state, op.changed
                keyed[op.step_id] = ({k: state[k] for k in changed if k in state},
                                     [k for k in changed if k not in state])
            op.changed = set()
            if written is not None:
                op.written = {}
        if full:
            return keyed, False, []
        return keyed, True, list(self.parts or ())

    def added(self, part: PartRef) -> None:
        """The snapshot just captured is the newest part."""
        if not self.incremental:
            return
        if part.full:
            self.parts = [part]
        elif self.parts is not None:
            self.parts.append(part)

    def declined(self, parts: Iterable[str]) -> str | None:
        """I3: why a snapshot that builds on `parts` cannot be acknowledged, or None."""
        bad = [k for k in parts if k in self._failed]
        return f"it builds on {bad[0]}, whose upload failed" if bad else None

    def upload_failed(self, part: PartRef) -> None:
        self._failed.add(part.key)
        if self.parts is not None and part in self.parts:
            self.parts = None  # the next snapshot is full

    def due(self, part: PartRef) -> list[PartRef] | None:
        """I4: the parts up to `part` (uploaded now) when they should become a base, else None."""
        if self.merging or not self.parts or part not in self.parts or len(self.parts) < 2:
            return None
        upto = self.parts[:self.parts.index(part) + 1]
        changes = sum(p.size for p in upto[1:])
        if sum(p.size for p in upto) < self.compact_above:
            return None  # small: capture rewrites it as a full snapshot instead
        if len(upto) > self.base_every or changes > 2 * upto[0].size:
            return upto
        return None

    def merged(self, upto: PartRef, base: PartRef) -> None:
        """I4: the parts up to `upto` are now `base`."""
        if self.parts is not None and upto in self.parts:
            self.parts = [base] + self.parts[self.parts.index(upto) + 1:]
