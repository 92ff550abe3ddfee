"""The checkpoint store: where one job's checkpoints live in durable storage, and the
attempt claims, restore records and refusals that fence them (docs/protocol.md).

Layout under the job's checkpoint root (`<storage>/<job name>`), per run:

    <run>/attempts/<attempt>               claimed once per attempt (put_if_absent)
    <run>/restores/<attempt>               the checkpoint id that attempt restored (0: none)
    <run>/refused/<id>                     a checkpoint refused at restore (damaged, unsigned)
    <run>/snapshots/<id>/<attempt>-<chain>-<subtask>.snap
    <run>/state/<chain>-<subtask>/<id>-<attempt>.base
                                           keyed state compacted from a chain of snapshots
                                           (changelog.py)
    <run>/progress/<step>/<attempt>/<h>    at-most-once: a source partition's offset before
                                           each batch (signed JSON; <h> hashes the partition)
    <run>/manifests/<id>.json              the commit record of checkpoint <id>
    <run>/base.json                        a run started from another run's checkpoint:
                                           which one (signed JSON)

The attempt claims are the single source of truth about which attempt may commit. A
manifest of attempt a with id n is *void* when a later attempt b > a restored a
checkpoint older than n: b did not see it when it chose, so b's sinks may have aborted
the transactions n lists. A void manifest is never restored, so a coordinator of an
older attempt that publishes late (a slow PUT, a process that woke up) changes nothing.

Run ids sort by start time, checkpoint ids increase within a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from raystream import _files
from raystream._storage import Storage, open_storage
from raystream._runtime.changelog import part_checkpoint
from raystream._runtime.manifest import Manifest, read_signed_json, signed_json, signing_key
from raystream._runtime.snapshot import SnapshotMeta, SubtaskState, decode
from raystream.errors import CorruptCheckpointError, RestoreError

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class CheckpointRef:
    """One complete checkpoint: the job's checkpoint root, the run and the id."""

    root: str
    run_id: str
    checkpoint_id: int

    @property
    def uri(self) -> str:
        return _files.Location.parse(self.root).join(CheckpointStore.manifest_key(self.run_id, self.checkpoint_id)).uri()


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


def locate_run(uri: str) -> tuple["CheckpointStore", str] | None:
    """(the job's store, the run) that `uri` names: a run directory (`<root>/<run>`), or a
    job's checkpoint root (its newest run with a checkpoint, else its newest run); None
    when nothing is stored there."""
    loc = _files.Location.parse(uri.rstrip("/"))
    here = CheckpointStore(loc.uri())
    if any(here.storage.list(d) for d in ("attempts/", "manifests/", "snapshots/")):  # a run directory
        root, _, run_id = loc.path.rstrip("/").rpartition("/")
        return CheckpointStore(_files.Location(loc.scheme, root, loc.bucket).uri()), run_id
    run_id = here.newest_run_with_checkpoint() or (here.runs() or [None])[-1]
    return (here, run_id) if run_id is not None else None


def _restorable(store: "CheckpointStore", run_id: str, checkpoint_id: int, uri: str) -> None:
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


def _newest(store: "CheckpointStore", run_id: str, uri: str) -> CheckpointRef:
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


class CheckpointStore:
    """Reads and writes one job's checkpoints in durable storage."""

    def __init__(self, root: str, storage: Storage | None = None):
        self.root = root
        self.storage: Storage = storage if storage is not None else open_storage(root)
        self._key = signing_key()  # read in this process; never stored or logged

    # --- keys ---------------------------------------------------------------------------

    @staticmethod
    def snapshot_key(run_id: str, checkpoint_id: int, attempt: int, chain: str, subtask: int) -> str:
        return f"{run_id}/snapshots/{checkpoint_id:012d}/{attempt:06d}-{chain}-{subtask:04d}.snap"

    @staticmethod
    def manifest_key(run_id: str, checkpoint_id: int) -> str:
        return f"{run_id}/manifests/{checkpoint_id:012d}.json"

    @staticmethod
    def progress_key(run_id: str, step_id: str, attempt: int, partition: str) -> str:
        digest = hashlib.sha256(partition.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{run_id}/progress/{step_id}/{attempt:06d}/{digest}.json"

    # --- attempts: the fence ------------------------------------------------------------

    def claim_attempt(self, run_id: str) -> int:
        """A number no other attempt of this run has had (a fencing token for later checks)."""
        while True:
            attempt = max(self._attempt_numbers(run_id), default=0) + 1
            if self.storage.put_if_absent(f"{run_id}/attempts/{attempt:06d}", str(time.time()).encode()):
                return attempt

    def _attempt_numbers(self, run_id: str) -> list[int]:
        return [int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/attempts/")]

    def attempts(self, run_id: str) -> int:
        return len(self._attempt_numbers(run_id))

    def is_current(self, run_id: str, attempt: int) -> bool:
        """Whether `attempt` is still the newest attempt of the run. A process of an older
        attempt checks this before it commits, to narrow the window in which it could; what
        makes a late commit harmless is that its manifest is void (see the module doc)."""
        return max(self._attempt_numbers(run_id), default=0) <= attempt

    def record_restore(self, run_id: str, attempt: int, checkpoint_id: int) -> None:
        """R3 (docs/protocol.md): before any of its subtasks touches a sink,
        `attempt` records which checkpoint it restores. Every manifest of an older attempt
        with a larger id is void from now on."""
        self.storage.put(f"{run_id}/restores/{attempt:06d}", json.dumps({"checkpoint": checkpoint_id}).encode())

    def restore_points(self, run_id: str) -> dict[int, int]:
        """attempt -> the checkpoint id it restored (0: it started from nothing)."""
        points = {}
        for key in self.storage.list(f"{run_id}/restores/"):
            try:
                points[int(key.rsplit("/", 1)[1])] = int(json.loads(self.storage.get(key))["checkpoint"])
            except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
                # An unreadable record voids nothing; the fence still holds for its attempt.
                logger.warning("restore record %s unreadable: %s", self.storage.uri(key), exc)
        return points

    @staticmethod
    def is_void(manifest: Manifest, points: dict[int, int]) -> bool:
        return any(attempt > manifest.attempt and restored < manifest.checkpoint_id
                   for attempt, restored in points.items())

    # --- refusals -----------------------------------------------------------------------

    def refuse(self, run_id: str, checkpoint_id: int, reason: str) -> None:
        """Remember that a checkpoint failed verification, so no later restore tries it."""
        self.storage.put(f"{run_id}/refused/{checkpoint_id:012d}", reason.encode("utf-8", "replace"))

    def refused(self, run_id: str) -> set[int]:
        return {int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/refused/")}

    def refusal(self, run_id: str, checkpoint_id: int) -> str:
        """Why a checkpoint was refused, as recorded ("" when it was not)."""
        try:
            return self.storage.get(f"{run_id}/refused/{checkpoint_id:012d}").decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # --- snapshots and manifests -------------------------------------------------------

    def manifest_ids(self, run_id: str) -> list[int]:
        return [int(k.rsplit("/", 1)[1].split(".")[0]) for k in self.storage.list(f"{run_id}/manifests/")
                if k.endswith(".json")]

    def load_manifest(self, run_id: str, checkpoint_id: int) -> Manifest:
        """The manifest stored as checkpoint `checkpoint_id` of `run_id`. Its own fields must
        name the same run and id (they are signed), so a manifest copied over another id
        cannot roll a job back."""
        key = self.manifest_key(run_id, checkpoint_id)
        what = f"manifest {self.storage.uri(key)}"
        manifest = Manifest.from_json(self.storage.get(key), self._key, what)
        if manifest.run_id != run_id or manifest.checkpoint_id != checkpoint_id:
            raise CorruptCheckpointError(
                f"{what} describes checkpoint {manifest.checkpoint_id} of run {manifest.run_id}: "
                "it was copied or moved; it is not loaded")
        if self.root.rstrip("/").rsplit("/", 1)[-1] != manifest.job:
            raise CorruptCheckpointError(f"{what} belongs to job {manifest.job!r}, not this one; it is not loaded")
        return manifest

    def runs(self) -> list[str]:
        """Run ids that have any object, oldest first."""
        return sorted({k.split("/", 1)[0] for k in self.storage.list("") if "/" in k})

    def newest_run_with_checkpoint(self) -> str | None:
        """The newest run of this job that committed a checkpoint or started from one (for --resume)."""
        for run_id in reversed(self.runs()):
            if self.manifest_ids(run_id) or self.storage.list(f"{run_id}/base.json"):
                return run_id
        return None

    # --- a run's base: the checkpoint of another run it started from ---------------------

    def record_base(self, run_id: str, base: CheckpointRef) -> None:
        body = {"run": run_id, "root": base.root, "base_run": base.run_id, "checkpoint": base.checkpoint_id}
        self.storage.put(f"{run_id}/base.json", signed_json(body, self._key))

    def base_ref(self, run_id: str) -> CheckpointRef | None:
        key = f"{run_id}/base.json"
        if not self.storage.list(key):
            return None
        body = read_signed_json(self.storage.get(key), self._key, self.storage.uri(key))
        if body.get("run") != run_id:
            raise CorruptCheckpointError(f"{self.storage.uri(key)} belongs to run {body.get('run')}, not {run_id}")
        return CheckpointRef(str(body["root"]), str(body["base_run"]), int(body["checkpoint"]))

    def base(self, run_id: str) -> Manifest | None:
        """The manifest of the checkpoint `run_id` started from, or None. RestoreError when
        it is gone: a retained checkpoint of a run that is still going is deleted by that
        run's retention (a savepoint, the final checkpoint of a stopped run, stays)."""
        ref = self.base_ref(run_id)
        if ref is None:
            return None
        store = self if ref.root == self.root else CheckpointStore(ref.root)
        try:
            return store.load_manifest(ref.run_id, ref.checkpoint_id)
        except FileNotFoundError:
            raise RestoreError(
                f"checkpoint {ref.checkpoint_id} of run {ref.run_id}, which run {run_id} started from, is gone "
                f"({ref.uri}): the run it belongs to deleted it, as its retention deletes all but its newest "
                f"checkpoints. Run {run_id} has no checkpoint of its own yet, so it cannot recover; start from a "
                "savepoint (the final checkpoint of a stopped run), which stays") from None

    def commit(self, manifest: Manifest, before_publish: Callable[[], None] | None = None) -> bool:
        """Write the manifest under its fresh key; False if that key was already taken."""
        return self.storage.put_if_absent(self.manifest_key(manifest.run_id, manifest.checkpoint_id),
                                          manifest.to_json(self._key), before_publish)

    def verify_snapshot(self, data: bytes, meta: SnapshotMeta) -> SubtaskState:
        """The snapshot's state, if `data` matches the checksum in the manifest."""
        return decode(data, meta.sha256, f"snapshot {self.storage.uri(meta.key)}")

    # --- at-most-once progress --------------------------------------------------------

    def save_progress(self, run_id: str, step_id: str, attempt: int, partition: str, offset: Any) -> None:
        """At-most-once: the offset of `partition` before its next batch leaves. Signed JSON,
        never a pickle: offsets of at-most-once sources must be JSON values."""
        body = {"run": run_id, "step": step_id, "attempt": attempt, "partition": partition, "offset": offset}
        self.storage.put(self.progress_key(run_id, step_id, attempt, partition), signed_json(body, self._key))

    def read_progress(self, run_id: str, step_id: str) -> dict[str, Any]:
        """partition -> offset saved by the newest attempt that saved one. Offsets only move
        forward across attempts (each starts from what it read here), and a process of an
        older attempt can only write under its own attempt's keys, never over newer ones."""
        newest: dict[str, tuple[int, Any]] = {}
        for key in self.storage.list(f"{run_id}/progress/{step_id}/"):
            body = read_signed_json(self.storage.get(key), self._key, self.storage.uri(key))
            if body.get("run") != run_id or body.get("step") != step_id:
                raise CorruptCheckpointError(f"progress {self.storage.uri(key)} belongs to another run or step")
            attempt, partition = int(body["attempt"]), str(body["partition"])
            if partition not in newest or attempt > newest[partition][0]:
                newest[partition] = (attempt, body["offset"])
        return {p: offset for p, (_, offset) in newest.items()}

    def compact_progress(self, run_id: str, step_id: str, attempt: int, offsets: dict[str, Any]) -> None:
        """Carry `offsets` into `attempt`'s keys, then drop the older attempts' progress:
        the progress tree holds one object per partition and live attempt."""
        for partition, offset in offsets.items():
            self.save_progress(run_id, step_id, attempt, partition, offset)
        mine = f"{run_id}/progress/{step_id}/{attempt:06d}/"
        self.storage.delete([k for k in self.storage.list(f"{run_id}/progress/{step_id}/")
                             if not k.startswith(mine) and int(k.split("/")[3]) < attempt])

    # --- retention ----------------------------------------------------------------------

    def retain(self, run_id: str, keep: int) -> None:
        """Delete all but the newest `keep` manifests of the run, and every snapshot and
        compacted base older than the oldest kept manifest (complete or aborted) that no
        kept snapshot builds on (changelog.py, I6). The caller is the current attempt,
        whose newest manifest is the newest of all."""
        ids = self.manifest_ids(run_id)
        if len(ids) <= keep:
            return
        needed: set[str] = set()
        for checkpoint_id in ids[-keep:]:
            try:
                needed.update(p for s in self.load_manifest(run_id, checkpoint_id).snapshots for p in s.parts)
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                logger.warning("retention skipped: manifest %d unreadable (%s)", checkpoint_id, exc)
                return  # cannot tell which parts it needs: delete nothing
        floor = min([ids[-keep]] + [part_checkpoint(k) for k in needed])
        doomed = [self.manifest_key(run_id, i) for i in ids[:-keep]]
        for key in self.storage.list(f"{run_id}/snapshots/") + self.storage.list(f"{run_id}/state/"):
            if part_checkpoint(key) < floor and key not in needed:
                doomed.append(key)
        self.storage.delete(doomed)
