"""The checkpoint store: one job's checkpoint tree in durable storage (its layout and what
each record means: docs/protocol.md, "Storage layout"): manifests, snapshots, a run's
origin (B5) and retention (C7, I6). The fence that guards it (R3) is fence.py's.

Everything read back is checked before it is used (docs/security.md): manifests are
signed and their size bounded before they are read (records.py for the other records);
snapshots are read only up to the size their manifest recorded.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from raystream import _files
from raystream._storage import Storage
from raystream._runtime.state.changelog import part_checkpoint
from raystream._runtime.state.fence import Fence
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.progress import ProgressRecords
from raystream._runtime.state.records import is_count
from raystream._runtime.state.signing import MAX_MANIFEST_BYTES, MAX_RECORD_BYTES, read_signed_json, signed_json
from raystream._runtime.state.snapshot import SnapshotMeta, SubtaskState, decode, read_exact
from raystream.errors import CheckpointKeyError, CorruptCheckpointError, RestoreError

logger = logging.getLogger(__name__)

_MANIFEST_NAME = re.compile(r"([0-9]{12})\.json", re.ASCII)


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


#: A run's origin record (B5): (name, type, field naming the run) as written now, then as
#: raystream 0.1.0 wrote it (`base.json`), so that its runs resume.
_ORIGIN_RECORDS = (("origin.json", "origin", "origin_run"), ("base.json", "base", "base_run"))

class CheckpointStore(Fence):
    """Reads and writes one job's checkpoints in durable storage; its fence (claims,
    restore records, refusals) is fence.py's."""

    def __init__(self, root: str, storage: Storage | None = None):
        super().__init__(root, storage)
        self.progress = ProgressRecords(self)  # at-most-once sources' offsets

    # --- keys ---------------------------------------------------------------------------

    @staticmethod
    def snapshot_key(run_id: str, checkpoint_id: int, attempt: int, chain: str, subtask: int) -> str:
        return f"{run_id}/snapshots/{checkpoint_id:012d}/{attempt:06d}-{chain}-{subtask:04d}.snap"

    @staticmethod
    def manifest_key(run_id: str, checkpoint_id: int) -> str:
        return f"{run_id}/manifests/{checkpoint_id:012d}.json"

    # --- snapshots and manifests -------------------------------------------------------

    def manifest_ids(self, run_id: str) -> list[int]:
        prefix = f"{run_id}/manifests/"
        ids = []
        for key in self.storage.list(prefix):
            found = _MANIFEST_NAME.fullmatch(key[len(prefix):])
            if found:
                ids.append(int(found.group(1)))
            else:
                logger.warning("skipped %s: not a manifest name", self.storage.uri(key))
        return ids

    def load_manifest(self, run_id: str, checkpoint_id: int) -> Manifest:
        """The manifest stored as checkpoint `checkpoint_id` of `run_id`. Its own fields must
        name the same run and id (they are signed), so a manifest copied over another id
        cannot roll a job back."""
        key = self.manifest_key(run_id, checkpoint_id)
        what = f"manifest {self.storage.uri(key)}"
        manifest = Manifest.from_json(self._read(key, MAX_MANIFEST_BYTES), self._key, what)
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
        """B1: the newest run of this job that committed a checkpoint or started from one (for
        --resume). Only a run with a verified attempt claim counts: a folder planted in
        the storage is not a run to resume."""
        for run_id in reversed(self.runs()):
            started_from = any(self._exists(f"{run_id}/{name}") for name, _, _ in _ORIGIN_RECORDS)
            if (self.manifest_ids(run_id) or started_from) and self._claimed(run_id, first=True):
                return run_id
        return None

    def newest_run(self) -> str | None:
        """The newest run with a verified attempt claim (at-most-once --resume)."""
        return next((run_id for run_id in reversed(self.runs()) if self._claimed(run_id, first=True)), None)

    # --- a run's origin: the checkpoint of another run it started from (B5) ---------------

    def record_origin(self, run_id: str, origin: CheckpointRef) -> None:
        key = f"{run_id}/origin.json"
        body = {"type": "origin", "key": key, "job": self.job, "run": run_id, "root": origin.root,
                "origin_run": origin.run_id, "checkpoint": origin.checkpoint_id}
        self.storage.put(key, signed_json(body, self._key))

    def origin_ref(self, run_id: str) -> CheckpointRef | None:
        found = next(((key, kind, run) for name, kind, run in _ORIGIN_RECORDS
                      if self._exists(key := f"{run_id}/{name}")), None)
        if found is None:
            return None
        key, kind, origin_run = found
        body = read_signed_json(self._read(key, MAX_RECORD_BYTES), self._key, self.storage.uri(key), kind, key)
        if body.get("run") != run_id or body.get("job", self.job) != self.job:
            raise CorruptCheckpointError(f"{self.storage.uri(key)} belongs to run {body.get('run')} of job "
                                         f"{body.get('job')}, not {run_id} of {self.job}")
        if not (isinstance(body.get("root"), str) and isinstance(body.get(origin_run), str)
                and is_count(body.get("checkpoint"))):
            raise CorruptCheckpointError(f"{self.storage.uri(key)} is malformed")
        return CheckpointRef(body["root"], body[origin_run], body["checkpoint"])

    def origin(self, run_id: str) -> Manifest | None:
        """The manifest of the checkpoint `run_id` started from, or None. RestoreError when
        it is gone: a retained checkpoint of a run that is still going is deleted by that
        run's retention (a savepoint, the final checkpoint of a stopped run, stays)."""
        ref = self.origin_ref(run_id)
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

    def read_snapshot(self, meta: SnapshotMeta) -> bytes:
        """A snapshot's bytes from durable storage, never more than its manifest recorded."""
        return read_exact(self.storage, meta.key, meta.size)

    def verify_snapshot(self, data: bytes, meta: SnapshotMeta) -> SubtaskState:
        """The snapshot's state, if `data` matches the checksum in the manifest and decodes
        to one (else CorruptCheckpointError: refused, never retried as a crash)."""
        return decode(data, meta.sha256, f"snapshot {self.storage.uri(meta.key)}", SubtaskState)

    # --- retention ----------------------------------------------------------------------

    def retain(self, run_id: str, keep: int, attempt: int | None = None) -> None:
        """C7, I6: keep the newest `keep` checkpoints of the run that a restore could choose
        (neither void nor refused) and every part their snapshots build on (changelog.py);
        delete the manifests older than the oldest of them, and every snapshot and merged
        base older than it (complete or aborted) that no kept snapshot names. A void or
        refused manifest newer than that stays until the window passes it: the newest
        manifest keeps the run's ids from being used again.

        `attempt`: the caller's. Retention runs only while it is the newest attempt of the
        run, read after the caller's manifest landed and after the manifests are listed: a
        coordinator replaced while its manifest was in flight (its node cut off) must not
        delete what the new attempt restored. Any attempt that chose without seeing that
        manifest claimed its number before it looked (F1, R3), so the read sees it; and an
        attempt that claims after the read lists every manifest listed here, so it chooses
        none older than what is kept (a manifest that lands meanwhile is not counted here).
        None: the caller runs no attempt (a test, a tool)."""
        ids = self.manifest_ids(run_id)
        if attempt is not None and not self.is_current(run_id, attempt):
            logger.info("retention skipped: attempt %d of run %s was replaced", attempt, run_id)
            return
        if len(ids) <= keep:
            return
        refused = self.refused(run_id)  # never restored: it needs nothing (a planted one must not stop retention)
        try:
            points = self.restore_points(run_id)
        except RestoreError as exc:  # which manifests count is unknown: the next restore stops on it too
            logger.error("retention deletes nothing: %s", exc)
            return
        kept: list[int] = []
        needed: set[str] = set()
        for checkpoint_id in reversed(ids):
            if checkpoint_id in refused:
                continue
            try:
                manifest = self.load_manifest(run_id, checkpoint_id)
            except (CorruptCheckpointError, CheckpointKeyError, FileNotFoundError) as exc:
                logger.warning("retention skipped: manifest %d unreadable (%s)", checkpoint_id, exc)
                return  # cannot tell whether it counts, nor which parts it needs: delete nothing
            if self.is_void(manifest, points):
                continue
            kept.append(checkpoint_id)
            needed.update(p for s in manifest.snapshots for p in s.parts)
            if len(kept) == keep:
                break
        if not kept:
            return  # no checkpoint a restore could choose: nothing to count from
        oldest = kept[-1]
        floor = min([oldest] + [part_checkpoint(k) for k in needed])
        doomed = [self.manifest_key(run_id, i) for i in ids if i < oldest]
        for key in self.storage.list(f"{run_id}/snapshots/") + self.storage.list(f"{run_id}/state/"):
            try:
                old = part_checkpoint(key) < floor and key not in needed
            except (ValueError, IndexError):  # not a name raystream writes: not ours to delete
                continue
            if old:
                doomed.append(key)
        self.storage.delete(doomed)
