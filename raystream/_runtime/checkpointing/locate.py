"""What a user's checkpoint URI names (docs/savepoints.md): a manifest (a savepoint's URI),
a run, or a job's checkpoint root; and whether that checkpoint may be restored (F2:
neither refused nor void).
"""
from __future__ import annotations

from raystream import _files
from raystream._runtime.state.store import CheckpointRef, CheckpointStore
from raystream.errors import CorruptCheckpointError, RestoreError


def locate(uri: str) -> CheckpointRef:
    """The checkpoint a user names: a manifest (`<root>/<run>/manifests/<id>.json`, which
    is what a savepoint's URI is), a run (`<root>/<run>`: its newest checkpoint) or a
    job's checkpoint root (`<root>`: the newest checkpoint of its newest run). Raises
    RestoreError naming what is missing."""
    loc = _files.Location.parse(uri.rstrip("/"))
    parts = loc.path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2] == "manifests" and parts[-1].endswith(".json"):
        root = _files.Location(loc.scheme, "/".join(parts[:-3]), loc.bucket).uri()
        run_id, stem = parts[-3], parts[-1][:-len(".json")]
        if not stem.isdigit():
            raise RestoreError(f"{uri} is not a checkpoint manifest (<run>/manifests/<id>.json)")
        store = CheckpointStore(root)
        if int(stem) not in store.manifest_ids(run_id):
            if store.storage.list(f"{run_id}/snapshots/{int(stem):012d}/"):
                raise RestoreError(f"checkpoint {int(stem)} at {uri} is incomplete: its snapshots exist but it was "
                                   f"never committed; pick a complete one with `raystream checkpoints ls {root}`")
            raise RestoreError(f"no checkpoint at {uri}: the manifest does not exist; list the complete ones with "
                               f"`raystream checkpoints ls {root}`")
        _restorable(store, run_id, int(stem), uri)
        return CheckpointRef(root, run_id, int(stem))
    found = locate_run(uri)
    if found is not None:
        store, run_id = found
        if store.manifest_ids(run_id):
            return _newest(store, run_id, uri)
        if store.storage.list(f"{run_id}/snapshots/"):
            raise RestoreError(f"{uri} holds snapshots but no complete checkpoint (no manifest was written): it is "
                               "incomplete and cannot be restored")
    raise RestoreError(f"no checkpoint at {uri}: nothing is stored there; give a savepoint URI, a run directory "
                       "or a job's checkpoint root (see `raystream checkpoints ls`)")


def locate_run(uri: str) -> tuple[CheckpointStore, str] | None:
    """(the job's store, the run) that `uri` names: a run directory (`<root>/<run>`), or a
    job's checkpoint root (its newest run with a checkpoint, else its newest run); None
    when nothing is stored there."""
    loc = _files.Location.parse(uri.rstrip("/"))
    here = CheckpointStore(loc.uri())
    if any(here.storage.list(d) for d in ("attempts/", "manifests/", "snapshots/")):  # a run directory
        root, _, run_id = loc.path.rstrip("/").rpartition("/")
        return CheckpointStore(_files.Location(loc.scheme, root, loc.bucket).uri()), run_id
    run_id = here.newest_run_with_checkpoint() or (here.runs() or [None])[-1]
    if run_id is not None and not _is_run(here, run_id):
        jobs = [name for name in here.runs()[:20] if _is_job_root(loc.join(name))]
        if jobs:  # one level above: the checkpoint storage, which holds job roots
            raise RestoreError(f"{uri} is a checkpoint storage, not a job's checkpoint root: it holds the jobs "
                               f"{', '.join(jobs[:10])}; give {loc.join(jobs[0]).uri()} (or another of them)")
        return None
    return (here, run_id) if run_id is not None else None


def _is_run(store: CheckpointStore, run_id: str) -> bool:
    return bool(store.attempts(run_id) or store.manifest_ids(run_id) or store.storage.list(f"{run_id}/snapshots/"))


def _is_job_root(loc: _files.Location) -> bool:
    store = CheckpointStore(loc.uri())
    return any(_is_run(store, run_id) for run_id in store.runs()[-3:])


def _restorable(store: CheckpointStore, run_id: str, checkpoint_id: int, uri: str) -> None:
    """RestoreError unless the checkpoint may be restored: not refused, not void (F2)."""
    if checkpoint_id in store.refused(run_id):
        raise RestoreError(f"checkpoint {checkpoint_id} at {uri} was refused ({store.refusal(run_id, checkpoint_id)}); "
                           "pick another with `raystream checkpoints ls`")
    try:
        manifest = store.load_manifest(run_id, checkpoint_id)
    except CorruptCheckpointError as exc:
        raise RestoreError(f"checkpoint {checkpoint_id} at {uri} cannot be used: {exc}") from None
    if store.is_void(manifest, store.restore_points(run_id)):
        raise RestoreError(f"checkpoint {checkpoint_id} at {uri} is void: a later attempt of its run restored an older "
                           "checkpoint, so its output may have been aborted; pick another with "
                           "`raystream checkpoints ls`")


def _newest(store: CheckpointStore, run_id: str, uri: str) -> CheckpointRef:
    """The newest checkpoint of the run that is neither refused nor void (F2)."""
    points = store.restore_points(run_id)
    refused = store.refused(run_id)
    for checkpoint_id in reversed(store.manifest_ids(run_id)):
        if checkpoint_id in refused:
            continue
        try:
            manifest = store.load_manifest(run_id, checkpoint_id)
        except CorruptCheckpointError:
            continue
        if not store.is_void(manifest, points):
            return CheckpointRef(store.root, run_id, checkpoint_id)
    raise RestoreError(f"no checkpoint of run {run_id} under {uri} can be restored: each was refused or is void; "
                       "see `raystream checkpoints ls`")
