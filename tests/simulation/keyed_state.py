"""Incremental keyed state in the simulation (docs/protocol.md, I1-I6): the running sums
as a keyed step that reports its changed keys, the merge task (I4) with its faults, and
the oracles at a capture: what a restore must read back of a snapshot (checked when its
manifest lands and at R4, control.py), and that no snapshot builds on a part whose upload
failed (I3). What retention leaves of kept checkpoints is retention.py's (I6).

The merge is where incremental state can go wrong without any output showing it at
once: a merge that ends after its parts were replaced must be dropped (I4). Such a merge
needs a slow merge and a failed upload at the same time, which random faults almost
never give, so the merger makes them meet: a slow merge waits for its subtask's next
captures and fails the first upload meanwhile.
"""
from __future__ import annotations

from typing import Any

from raystream._runtime.state.changelog import StateChangelog, materialize, merge_parts
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.snapshot import PartRef
from raystream._runtime.state.store import CheckpointStore
from raystream.errors import CorruptCheckpointError

# A slow merge spans this many of its subtask's captures (or ends when it dies or after
# MERGE_PATIENCE simulated seconds, if no capture comes).
SPANS = (1, 3)
MERGE_PATIENCE = 3.0
TALLY_SPAN = 64  # record ids a tally counts (Sums)


def logical_state(keyed: dict[str, dict[Any, Any]]) -> dict[str, dict[Any, Any]]:
    """What a restore must give back of full keyed state: each step's keys and values (a
    window step's windows, their partials and emitted flags), with NaN equal to itself so
    that a NaN partial read back is the one captured."""
    return {step: {key: _canonical(value) for key, value in table.items()} for step, table in keyed.items()}


def _canonical(value: Any) -> Any:
    """`value` as comparable plain data: a float by its bits (so -0.0 is not 0.0, and a NaN
    is equal to a NaN), containers by their items."""
    if isinstance(value, float):
        return ("float", "nan" if value != value else value.hex())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(map(_canonical, value)))
    if isinstance(value, dict):
        return ("dict", frozenset((_canonical(k), _canonical(v)) for k, v in value.items()))
    return value


def check_landed(store: CheckpointStore, key: str, captured: dict[str, dict[str, Any]], mismatches: list[str]) -> None:
    """The oracle when manifest `key` lands: each of its snapshots, read whole through its
    parts (I5), holds the keyed state its capture held. A restore checks the same
    (control.py), but only of the checkpoints it restores; a stale part behind a later
    one shows here at once."""
    manifest = Manifest.from_json(store.storage.objects[key], store._key)
    for meta in manifest.snapshots:
        if meta.key not in captured:
            continue
        try:
            state = materialize(store.storage, store.verify_snapshot(store.storage.objects[meta.key], meta))
        except CorruptCheckpointError:
            continue  # a part damaged on purpose: restores refuse it (R5)
        except (KeyError, FileNotFoundError) as exc:
            mismatches.append(f"{meta.key}: a part it builds on is gone when its manifest lands: {exc}")
            continue
        if logical_state(state.keyed) != captured[meta.key]:
            mismatches.append(f"{meta.key} (landed): reads {logical_state(state.keyed)}, captured "
                              f"{captured[meta.key]}")


def capture(changelog: StateChangelog, ops: list[Any], key: str,
            trace: Any) -> tuple[dict[str, Any], bool, list[PartRef]]:
    """C3's keyed state for snapshot `key`, through the real changelog (I2), and what the
    oracles keep of it: the state a restore must read back (I5, above), and I3's: once a
    subtask knows an upload failed, no snapshot it captures builds on that part (the next
    one is full; one over the failed part would be declined, and every one after it, until
    the job restarts: checkpoints stop, and no output shows it)."""
    trace.captured[key] = logical_state({op.step_id: op.state for op in ops})
    keyed, is_changes, parts = changelog.capture(ops)
    failed = [p.key for p in parts if p.key in changelog._failed]
    if failed:
        trace.over_failed.append(f"{key} builds on {failed[0]}, whose upload had failed")
    return keyed, is_changes, parts


class Sums:
    """The running sums as a keyed step's state: the keys a record touched since the last
    snapshot are `changed` (I1), so incremental snapshots hold only those.

    A partition's sum changes with each of its records, so every snapshot holds it again
    and a change left out of one is overwritten by the next. With `tallies` (incremental
    schedules) the step also counts records by span of ids, ("n", p, id // TALLY_SPAN):
    keys that go quiet, whose last change is in one snapshot only."""

    step_id = "sum"
    written = None
    deletes = 0

    def __init__(self, state: dict[Any, int], tallies: bool):
        self.state, self.changed, self.tallies = state, set(), tallies

    def add(self, p: int, record: int) -> int:
        """`record` of partition `p` counted; its partition's new sum."""
        total = self.state[p] = self.state.get(p, 0) + record
        self.changed.add(p)  # I1
        if self.tallies:
            key = ("n", p, record // TALLY_SPAN)
            self.state[key] = self.state.get(key, 0) + 1
            self.changed.add(key)
        return total


class SimMerger:
    """I4's Ray task for one subtask: it reads the parts and writes the base as another
    process does, so its write lands even if the subtask dies meanwhile (the answer then
    goes nowhere). One in ten fails, and the parts wait for the next due part. Three in
    ten are slow: they span the subtask's next captures and fail the first upload after
    them (the storage's error, not the merge's), so that the parts are replaced while the
    merge runs."""

    def __init__(self, subtask: Any):
        self.subtask = subtask
        self.world = subtask.world

    async def __call__(self, root: str, parts: list[PartRef], key: str) -> PartRef:
        sub, rng = self.subtask, self.world.rng
        draw = rng.random()
        if draw < 0.1:
            await self.world.sleep(self.world.delay(), sub.proc)
            raise OSError("the merge task's worker died")
        if draw < 0.4:
            sub.run.store.storage.fail_next.add(sub.snapshot_suffix)
            until, deadline = sub.captures + rng.randint(*SPANS), self.world.now + MERGE_PATIENCE
            while sub.captures < until and sub.proc.alive and self.world.now < deadline:
                await self.world.sleep(0.02)  # the simulated clock: no wall time passes
            await self.world.sleep(rng.uniform(0.05, 0.3))  # past the last one's upload
        return await sub.blocking(merge_parts, sub.run.store.storage, parts, key)
