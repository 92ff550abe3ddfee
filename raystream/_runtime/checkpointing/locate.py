"""What a user's checkpoint URI names (docs/savepoints.md): a manifest (a savepoint's URI),
a run, or a job's checkpoint root; whether that checkpoint may be restored (F2: neither
refused nor void).

Telling a run from a job's root, or from the checkpoint storage above the job roots,
takes many listings (runs, then attempts, manifests and snapshots of each): on S3, each
is a LIST request. They are answered from one listing of the URI, taken once.
"""
from __future__ import annotations

import bisect
from typing import Callable

from raystream import _files
from raystream._storage import Storage, open_storage
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
    when nothing is stored there. It lists the storage once (see the module doc)."""
    loc = _files.Location.parse(uri.rstrip("/"))
    storage = open_storage(loc.uri(), private=True)
    listing = Listing(storage)
    here = CheckpointStore(loc.uri(), listing)
    if any(listing.list(d) for d in ("attempts/", "manifests/", "snapshots/")):  # a run directory
        root, _, run_id = loc.path.rstrip("/").rpartition("/")
        return CheckpointStore(_files.Location(loc.scheme, root, loc.bucket).uri()), run_id
    run_id = here.newest_run_with_checkpoint() or (here.runs() or [None])[-1]
    if run_id is not None and not _is_run(here, run_id):
        jobs = [name for name in here.runs()[:20] if _is_job_root(CheckpointStore(loc.join(name).uri(),
                                                                                 listing.under(name)))]
        if jobs:  # one level above: the checkpoint storage, which holds job roots
            raise RestoreError(f"{uri} is a checkpoint storage, not a job's checkpoint root: it holds the jobs "
                               f"{', '.join(jobs[:10])}; give {loc.join(jobs[0]).uri()} (or another of them)")
        return None
    # the caller's store lists and reads the storage itself: the listing above is of a moment
    return (CheckpointStore(loc.uri(), storage), run_id) if run_id is not None else None


def _is_run(store: CheckpointStore, run_id: str) -> bool:
    return bool(store.attempts(run_id) or store.manifest_ids(run_id) or store.storage.list(f"{run_id}/snapshots/"))


def _is_job_root(store: CheckpointStore) -> bool:
    return any(_is_run(store, run_id) for run_id in store.runs()[-3:])


class Listing(Storage):
    """A storage read through one listing of all its keys, taken when this is made:
    `list` answers from it, `get` and `uri` go to the storage. Writes are refused, as
    they would leave the listing behind. `under(name)` is the same listing seen from
    the folder `name`."""

    def __init__(self, storage: Storage, keys: list[str] | None = None, folder: str = ""):
        self.storage, self.folder = storage, folder
        self.keys = storage.list("") if keys is None else keys  # sorted, as every Storage lists

    def under(self, name: str) -> "Listing":
        return Listing(self.storage, self.keys, f"{self.folder}{name}/")

    def list(self, prefix: str) -> list[str]:
        full = self.folder + prefix
        found = []
        i = bisect.bisect_left(self.keys, full)  # the keys that start with it follow, in one stretch
        while i < len(self.keys) and self.keys[i].startswith(full):
            found.append(self.keys[i][len(self.folder):])
            i += 1
        return found

    def get(self, key: str, limit: int | None = None) -> bytes:
        return self.storage.get(self.folder + key, limit)

    def uri(self, key: str = "") -> str:
        return self.storage.uri(self.folder + key)

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError("a Listing is read-only")

    def put_if_absent(self, key: str, data: bytes, before_publish: Callable[[], None] | None = None) -> bool:
        raise NotImplementedError("a Listing is read-only")

    def delete(self, keys: list[str]) -> None:
        raise NotImplementedError("a Listing is read-only")

    def promote(self, moves: list[tuple[str, str]]) -> None:
        raise NotImplementedError("a Listing is read-only")


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
