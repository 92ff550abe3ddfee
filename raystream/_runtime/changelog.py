"""Incremental keyed state: a snapshot writes only the keys that changed since the last
one (docs/protocol.md, "Incremental state").

A subtask's keyed state at checkpoint n is a chain of parts, oldest first: a base (a
full snapshot, or a base compacted from an older chain), then the snapshots of the
checkpoints after it, each holding the changes of its epoch. Every part is named with
its SHA-256 in the snapshot that builds on it, and the snapshot's own checksum is in the
manifest, so each byte of the chain is verified before it is unpickled.

  I1. Keyed operators add every key they touch to `KeyedOp.changed` (a record, a timer).
  I2. At a barrier, `capture` returns the full tables when there is no chain (the first
      checkpoint, after a rescale, after a failed upload, or when the chain is small
      enough that rewriting it costs less than keeping it), else per step the new
      values of the changed keys and the keys deleted, with the chain it builds on.
      Either way it is pickled at once, so its size follows the changes, not the state.
  I3. A snapshot is declined when its chain has a part whose upload failed.
  I4. When the chain has more than `base_every` parts, or its changes outweigh its base,
      a Ray task (another process: nothing proportional to the state runs on the
      subtask's event loop or holds its GIL) reads the chain, verifying each part, and
      writes the merged tables as a new base; the next snapshot builds on that base.
  I5. Restore (`materialize`) reads the snapshot's chain base first, applies each part's
      changes in order, then the snapshot's own. A subtask that restores exactly its own
      snapshot of the same run continues that chain; any other starts a new one.
  I6. The manifest lists each snapshot's parts; retention keeps every part a kept
      manifest names (CheckpointStore.retain).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Protocol

import ray

from raystream._runtime.snapshot import PartRef, SubtaskState, decode, encode, read_exact
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
    """Apply one part's tables (a base) or changes to `tables`, in place."""
    if full:
        for step_id, table in keyed.items():
            tables[step_id] = table
        return
    for step_id, (updates, deleted) in keyed.items():
        table = tables.setdefault(step_id, {})
        table.update(updates)
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
    """I5: `state` with full tables, read from its chain when it holds changes."""
    if not state.changelog:
        return state
    tables: dict[str, dict[Any, Any]] = {}
    for part in state.parts:
        apply_part(tables, *read_part(storage, part))
    apply_part(tables, state.keyed, False)
    state.keyed, state.changelog = tables, False
    return state


@ray.remote(num_cpus=0, max_retries=2)
def compact(root: str, chain: list[PartRef], key: str) -> PartRef:
    """I4, in a process of its own: the chain's tables merged into one base at `key`."""
    return compact_chain(open_storage(root, private=True), chain, key)


def compact_chain(storage: Any, chain: list[PartRef], key: str) -> PartRef:
    tables: dict[str, dict[Any, Any]] = {}
    for part in chain:
        apply_part(tables, *read_part(storage, part))
    data, sha = encode(tables)
    storage.put(key, data)
    return PartRef(key, sha, len(data), chain[-1].checkpoint_id, True)


class StateChangelog:
    """The chain of one subtask's keyed state: what the next snapshot builds on (I2-I4)."""

    def __init__(self, *, incremental: bool, base_every: int, compact_above: int):
        self.incremental = incremental
        self.base_every = base_every
        self.compact_above = compact_above
        self.parts: list[PartRef] | None = None  # None: the next snapshot is full
        self.compacting = False
        self._failed: set[str] = set()

    def restored(self, parts: list[PartRef] | None) -> None:
        """I5: continue `parts` (this subtask's own chain), or start over when None."""
        self.parts = list(parts) if parts and self.incremental else None

    def capture(self, ops: Iterable[ChangeTracking]) -> tuple[dict[str, Any], bool, list[PartRef]]:
        """I2: (keyed, is a changelog, the parts it builds on). Clears the changed keys."""
        ops = list(ops)
        full = self.parts is None or (not self.compacting and sum(p.size for p in self.parts) < self.compact_above
                                      and len(self.parts) > self.base_every)
        keyed: dict[str, Any] = {}
        for op in ops:
            written = getattr(op, "written", None)
            if full:
                keyed[op.step_id] = op.state
            elif written is not None:  # the new values are at hand: no lookup in the table
                deleted = [k for k, v in written.items() if v is DELETED] if getattr(op, "deletes", 1) else []
                for k in deleted:
                    del written[k]
                op.deletes = 0
                keyed[op.step_id] = (written, deleted)
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
        """The snapshot just captured is the newest part of the chain."""
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
        """I4: the chain up to `part` (uploaded now) when it should become a base, else None."""
        if self.compacting or not self.parts or part not in self.parts or len(self.parts) < 2:
            return None
        chain = self.parts[:self.parts.index(part) + 1]
        changes = sum(p.size for p in chain[1:])
        if sum(p.size for p in chain) < self.compact_above:
            return None  # small: capture rewrites it as a full snapshot instead
        if len(chain) > self.base_every or changes > 2 * chain[0].size:
            return chain
        return None

    def compacted(self, upto: PartRef, base: PartRef) -> None:
        """I4: the chain up to `upto` is now `base`."""
        if self.parts is not None and upto in self.parts:
            self.parts = [base] + self.parts[self.parts.index(upto) + 1:]
