"""Reading checkpoints from Python: what a job's storage holds, and the keyed state of a
step as a table, from a stopped job or a running one (the newest complete checkpoint).

    import raystream as rs
    rs.checkpoints.list_checkpoints("./raystream-checkpoints/billing")
    rs.checkpoints.read_state("./raystream-checkpoints/billing", "total")  # pyarrow.Table

A URI names a job's checkpoint root (`<storage>/<job name>`: its newest run), a run
(`<root>/<run>`) or one checkpoint (`<root>/<run>/manifests/<id>.json`, a savepoint's
URI). Manifests are verified (their shape and signature: docs/security.md), and every
snapshot's size and checksum are checked before it is unpickled.
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream.errors import CorruptCheckpointError, RestoreError


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a run, complete or not."""

    run_id: str
    checkpoint_id: int
    status: str  # "complete", "final" (a savepoint when the job was stopped), "refused", "void", "incomplete"
    created: float = 0.0  # Unix time the manifest was written (0 when there is none)
    size: int = 0  # bytes of its snapshots
    duration: float = 0.0  # seconds from its trigger to its manifest
    uri: str = ""  # the manifest, to pass to from_checkpoint / --from
    reason: str = ""  # why it was refused, or is incomplete


def _runtime() -> Any:
    # Imported here so that `import raystream` does not load the runtime.
    from raystream._runtime.state import store as checkpoint_store
    from raystream._runtime.checkpointing import locate

    return types.SimpleNamespace(CheckpointStore=checkpoint_store.CheckpointStore,
                                 CheckpointRef=checkpoint_store.CheckpointRef, locate=locate.locate,
                                 locate_run=locate.locate_run)


def _changelog() -> Any:
    from raystream._runtime.state import changelog

    return changelog


def list_checkpoints(uri: str) -> list[CheckpointInfo]:
    """Every checkpoint of the run `uri` names (a job root: its newest run), oldest first."""
    store_mod = _runtime()
    found = store_mod.locate_run(uri)
    if found is None:
        raise RestoreError(f"no checkpoints under {uri}: give a job's checkpoint root (<storage>/<job name>) "
                           "or one of its runs")
    store, run_id = found
    refused = store.refused(run_id)
    points = store.restore_points(run_id)
    snapshot_ids = {int(key.split("/")[2]) for key in store.storage.list(f"{run_id}/snapshots/")
                    if re.fullmatch("[0-9]{12}", key.split("/")[2])}
    infos = []
    for checkpoint_id in store.manifest_ids(run_id):
        ref = store_mod.CheckpointRef(store.root, run_id, checkpoint_id)
        if checkpoint_id in refused:
            reason = store.refusal(run_id, checkpoint_id)
            infos.append(CheckpointInfo(run_id, checkpoint_id, "refused", uri=ref.uri, reason=reason))
            continue
        try:
            m = store.load_manifest(run_id, checkpoint_id)
        except CorruptCheckpointError as exc:
            infos.append(CheckpointInfo(run_id, checkpoint_id, "refused", uri=ref.uri, reason=str(exc)))
            continue
        if store.is_void(m, points):
            infos.append(CheckpointInfo(run_id, checkpoint_id, "void", m.created, uri=ref.uri,
                                        reason="a later attempt restored an older checkpoint"))
            continue
        infos.append(CheckpointInfo(run_id, checkpoint_id, "final" if m.final else "complete", m.created,
                                    sum(s.size for s in m.snapshots), m.duration, ref.uri))
    complete = {i.checkpoint_id for i in infos}
    for checkpoint_id in sorted(snapshot_ids - complete):
        infos.append(CheckpointInfo(run_id, checkpoint_id, "incomplete",
                                    reason="snapshots without a manifest: aborted, or in progress"))
    return sorted(infos, key=lambda i: i.checkpoint_id)


def read_state(uri: str, step_id: str) -> pa.Table:
    """The keyed state of `step_id` in the checkpoint `uri` names (a job root or a run: its
    newest complete checkpoint), one row per key: `key`, `value`, `subtask`. Values that
    Arrow cannot type are shown by their repr."""
    store_mod = _runtime()
    ref = store_mod.locate(uri)
    store = store_mod.CheckpointStore(ref.root)
    manifest = store.load_manifest(ref.run_id, ref.checkpoint_id)
    chains = [name for name in manifest.chains if step_id in name.split("+")]
    if not chains:
        steps = sorted({s for name in manifest.chains for s in name.split("+")})
        raise RestoreError(f"checkpoint {ref.checkpoint_id} has no step {step_id!r}; its steps: {', '.join(steps)}")
    keys: list[Any] = []
    values: list[Any] = []
    subtasks: list[int] = []
    for meta in manifest.snapshots_of(chains[0]):
        state = store.verify_snapshot(store.read_snapshot(meta), meta)  # size and checksum before unpickling
        state = _changelog().materialize(store.storage, state)  # parts are checked the same way
        if step_id not in state.keyed:
            raise RestoreError(f"step {step_id!r} keeps no keyed state (only keyed steps do: reduce, stateful_map, windows, process and joins)")
        for key, value in state.keyed[step_id].items():
            keys.append(key)
            values.append(value)
            subtasks.append(meta.subtask)
    return pa.table({"key": _column(keys), "value": _column(values), "subtask": pa.array(subtasks, pa.int32())})


def _column(items: list[Any]) -> pa.Array:
    try:
        return pa.array(items)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return pa.array([repr(x) for x in items], pa.string())
