"""The checkpoint store: one job's checkpoint tree in durable storage (its layout and what
each record means: docs/protocol.md, "Storage layout"), with the attempt claims, restore
records and refusals that fence it (R3) and retention (C7, I6).

Everything read back is checked before it is used (docs/security.md): manifests and
records are signed (signing.py) and their size is bounded before they are read;
snapshots are read only up to the size their manifest recorded; a name in a listing
that this module did not write is skipped. A fencing record that does not verify fences
nothing: a planted `restores/` or `refused/` record cannot rewind or stop a job.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from raystream import _files
from raystream._storage import Storage, open_storage
from raystream._runtime.state.changelog import part_checkpoint
from raystream._runtime.state import signing
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.progress import ProgressRecords
from raystream._runtime.state.signing import MAX_MANIFEST_BYTES, MAX_RECORD_BYTES, read_signed_json, signed_json
from raystream._runtime.state.snapshot import SnapshotMeta, SubtaskState, decode, read_exact
from raystream.errors import CheckpointKeyError, CorruptCheckpointError, RestoreError, StorageKeyError

logger = logging.getLogger(__name__)

_MANIFEST_NAME = re.compile(r"([0-9]{12})\.json", re.ASCII)
#: Past these, the next number would not fit its name's width: a manifest or claim near
#: them was planted (a checkpoint a second for 30,000 years; 100,000 restarts).
MAX_CHECKPOINT_ID = 10**12 - 1
MAX_ATTEMPT = 100_000


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

class CheckpointStore:
    """Reads and writes one job's checkpoints in durable storage."""

    def __init__(self, root: str, storage: Storage | None = None):
        self.root = root
        self.storage: Storage = storage if storage is not None else open_storage(root, private=True)
        self._key = signing.current()  # read in this process; never stored or logged
        self.job = root.rstrip("/").rsplit("/", 1)[-1]  # every record names it: no record moves between jobs
        self._claims: dict[str, bool] = {}
        self.progress = ProgressRecords(self)  # at-most-once sources' offsets

    # --- keys ---------------------------------------------------------------------------

    @staticmethod
    def snapshot_key(run_id: str, checkpoint_id: int, attempt: int, chain: str, subtask: int) -> str:
        return f"{run_id}/snapshots/{checkpoint_id:012d}/{attempt:06d}-{chain}-{subtask:04d}.snap"

    @staticmethod
    def manifest_key(run_id: str, checkpoint_id: int) -> str:
        return f"{run_id}/manifests/{checkpoint_id:012d}.json"

    # --- attempts: the fence ------------------------------------------------------------

    def claim_attempt(self, run_id: str) -> int:
        """F1: a number no other attempt of this run has had (a fencing token for later checks).
        A claim is a signed record: one planted without the key only uses up a number."""
        tried = 0
        for _ in range(1000):
            attempt = max(self._numbered(f"{run_id}/attempts/", 6), default=0) + 1
            attempt = max(attempt, tried + 1)  # a key taken by something no listing shows is not tried twice
            if attempt >= MAX_ATTEMPT:
                break
            key = f"{run_id}/attempts/{attempt:06d}"
            body = {"type": "attempt", "key": key, "job": self.job, "run": run_id, "attempt": attempt,
                    "time": time.time()}
            try:
                if self.storage.put_if_absent(key, signed_json(body, self._key)):
                    self._claims[key] = True
                    return attempt
            except StorageKeyError as exc:  # a link planted there
                logger.warning("attempt %d of run %s skipped: %s", attempt, run_id, exc)
            tried = attempt
        raise RestoreError(f"run {run_id} under {self.root} has used up its attempt numbers; start a new run "
                           "(from a savepoint or retained checkpoint, --from)")

    def _claimed(self, run_id: str, above: int = 0, first: bool = False) -> list[int]:
        """The attempts above `above` whose claims verify (this process's key), newest
        first; `first`: only the newest. A claim is never rewritten, so what one read
        showed is kept (the fence reads no claim twice)."""
        found = []
        for n in sorted(self._numbered(f"{run_id}/attempts/", 6), reverse=True):
            if n <= above:
                break
            key = f"{run_id}/attempts/{n:06d}"
            if key not in self._claims:
                self._claims[key] = self._record(key, "attempt", {"run": run_id, "attempt": n},
                                                 legacy=lambda data: data) is not None
            if self._claims[key]:
                found.append(n)
                if first:
                    break
        return found

    def _numbered(self, prefix: str, width: int) -> list[int]:
        """The numbers that the keys directly under `prefix` name, `width` digits as
        raystream writes them there; any other name is skipped: raystream did not write it."""
        numbers = []
        for key in self.storage.list(prefix):
            name = key[len(prefix):]
            if len(name) == width and name.isascii() and name.isdigit():
                numbers.append(int(name))
            else:
                logger.warning("skipped %s: not a name raystream writes there", self.storage.uri(key))
        return numbers

    def _exists(self, key: str) -> bool:
        return key in self.storage.list(key)

    def _read(self, key: str, limit: int) -> bytes:
        """An object no larger than `limit` (CorruptCheckpointError if it is)."""
        data = self.storage.get(key, limit=limit)
        if len(data) > limit:
            raise CorruptCheckpointError(f"{self.storage.uri(key)} is larger than {limit} bytes, more than raystream "
                                         "ever writes there; it is not read")
        return data

    def write_record(self, key: str, body: dict[str, Any]) -> None:
        """A signed JSON record at `key` (its body names its type, key, job and run)."""
        self.storage.put(key, signed_json(body, self._key))

    def read_record(self, key: str, kind: str) -> dict[str, Any]:
        """The body of the signed record of type `kind` at `key`, verified (docs/security.md)."""
        return read_signed_json(self._read(key, MAX_RECORD_BYTES), self._key, self.storage.uri(key), kind, key)

    def attempts(self, run_id: str) -> int:
        return len(self._numbered(f"{run_id}/attempts/", 6))

    def is_current(self, run_id: str, attempt: int) -> bool:
        """Whether `attempt` is still the newest attempt of the run. A process of an older
        attempt checks this before it commits, to narrow the window in which it could; what
        makes a late commit harmless is that its manifest is void (see the module doc)."""
        return not self._claimed(run_id, above=attempt, first=True)

    def claimed_after(self, run_id: str, attempt: int) -> list[int]:
        """The attempts of the run claimed after `attempt` whose claims verify, newest first."""
        return self._claimed(run_id, above=attempt)

    def unrecorded(self, run_id: str, below: int) -> list[int]:
        """The verified attempts older than `below` without a restore record (R3)."""
        points = self.restore_points(run_id)
        return [attempt for attempt in self._claimed(run_id) if attempt < below and attempt not in points]

    def record_restore(self, run_id: str, attempt: int, checkpoint_id: int, closed: str = "") -> bool:
        """R3 (docs/protocol.md): before any of its subtasks touches a sink, `attempt`
        records which checkpoint it restores; every manifest of an older attempt with a
        larger id is void from now on. Written once: False when a verified record was
        there first (a newer attempt closed this one). `closed`: the record of an attempt
        that restores nothing and voids nothing (its point lies past every id), and why."""
        key = f"{run_id}/restores/{attempt:06d}"
        body = {"type": "restore", "key": key, "job": self.job, "run": run_id, "attempt": attempt,
                "checkpoint": MAX_CHECKPOINT_ID if closed else checkpoint_id, **({"closed": closed} if closed else {})}
        data = signed_json(body, self._key)
        if self.storage.put_if_absent(key, data):
            return True
        if closed or self._record(key, "restore", {"run": run_id, "attempt": attempt}) is not None:
            return False  # only the attempt itself replaces a record planted at its key
        self.storage.put(key, data)  # a record planted without the key: it never counted
        return True

    def restore_points(self, run_id: str) -> dict[int, int]:
        """attempt -> the checkpoint id it restored (0: it started from nothing). A record
        of no verified claim voids nothing. The record of a verified claim that does not
        verify stops the restore (RestoreError), since a void manifest must never count;
        except the newest claim's, which is the attempt choosing now, or one that died
        before it recorded its choice (a record planted ahead of it voids nothing)."""
        points = {}
        claimed = set(self._claimed(run_id))
        for attempt in self._numbered(f"{run_id}/restores/", 6):
            key = f"{run_id}/restores/{attempt:06d}"
            if attempt not in claimed:
                logger.warning("%s ignored: no attempt %d of run %s was claimed", self.storage.uri(key), attempt,
                               run_id)
                continue
            body = self._record(key, "restore", {"run": run_id, "attempt": attempt}, legacy=_legacy_restore)
            if body is None or not _is_count(body.get("checkpoint")):
                if attempt < max(claimed) and self._exists(key):
                    raise RestoreError(
                        f"the restore record of attempt {attempt} of run {run_id} ({self.storage.uri(key)}) does not "
                        "verify: without it, checkpoints it voided could be restored. It was changed, or written by a "
                        f"raystream before signing (then resume once with {signing.UNSIGNED_ENV}=1)")
                continue
            points[attempt] = body["checkpoint"]
        return points

    def _record(self, key: str, kind: str, expected: dict[str, Any],
                legacy: Callable[[bytes], Any] | None = None) -> dict[str, Any] | None:
        """A signed record's body if it verifies as a `kind` record of `key` with the
        `expected` fields; else None, with a warning. With the opt-out, `legacy` reads
        what a raystream before signing wrote there."""
        what = f"record {self.storage.uri(key)}"
        expected = {**expected, "job": self.job}
        try:
            data = self._read(key, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except (CorruptCheckpointError, StorageKeyError) as exc:
            logger.warning("%s ignored: %s", what, exc)
            return None
        try:
            body = read_signed_json(data, self._key, what, kind, key)
        except (CorruptCheckpointError, CheckpointKeyError) as exc:
            old = legacy(data) if legacy is not None and signing.unsigned() else None
            if old is not None:
                return {**expected, **old} if isinstance(old, dict) else dict(expected)
            logger.warning("%s ignored: %s", what, exc)
            return None
        body.setdefault("job", self.job)  # a record of the opt-out's legacy formats
        if any(body.get(name) != value for name, value in expected.items()):
            logger.warning("%s ignored: it belongs to %s, not %s", what,
                           {name: body.get(name) for name in expected}, expected)
            return None
        return body

    @staticmethod
    def is_void(manifest: Manifest, points: dict[int, int]) -> bool:
        return any(attempt > manifest.attempt and restored < manifest.checkpoint_id
                   for attempt, restored in points.items())

    # --- refusals -----------------------------------------------------------------------

    def refuse(self, run_id: str, checkpoint_id: int, reason: str) -> None:
        """Remember that a checkpoint failed verification, so no later restore tries it."""
        key = f"{run_id}/refused/{checkpoint_id:012d}"
        body = {"type": "refusal", "key": key, "job": self.job, "run": run_id, "checkpoint": checkpoint_id,
                "reason": reason[:4000]}
        self.storage.put(key, signed_json(body, self._key))

    def refused(self, run_id: str) -> set[int]:
        """The checkpoints of the run refused before; a record that does not verify refuses
        nothing (the checkpoint is verified again when it is chosen)."""
        return {n for n in self._numbered(f"{run_id}/refused/", 12) if self.refusal(run_id, n)}

    def refusal(self, run_id: str, checkpoint_id: int) -> str:
        """Why a checkpoint was refused, as recorded ("" when it was not)."""
        body = self._record(f"{run_id}/refused/{checkpoint_id:012d}", "refusal",
                            {"run": run_id, "checkpoint": checkpoint_id},
                            legacy=lambda data: {"reason": data.decode("utf-8", "replace")})
        return str(body.get("reason") or "refused") if body is not None else ""

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
                and _is_count(body.get("checkpoint"))):
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

    def retain(self, run_id: str, keep: int) -> None:
        """Delete all but the newest `keep` manifests of the run, and every snapshot and
        merged base older than the oldest kept manifest (complete or aborted) that no
        kept snapshot builds on (changelog.py, I6). The caller is the current attempt,
        whose newest manifest is the newest of all."""
        ids = self.manifest_ids(run_id)
        if len(ids) <= keep:
            return
        needed: set[str] = set()
        refused = self.refused(run_id)
        for checkpoint_id in ids[-keep:]:
            if checkpoint_id in refused:  # never restored: it needs nothing (a planted one must not stop retention)
                continue
            try:
                needed.update(p for s in self.load_manifest(run_id, checkpoint_id).snapshots for p in s.parts)
            except (CorruptCheckpointError, CheckpointKeyError, FileNotFoundError) as exc:
                logger.warning("retention skipped: manifest %d unreadable (%s)", checkpoint_id, exc)
                return  # cannot tell which parts it needs: delete nothing
        floor = min([ids[-keep]] + [part_checkpoint(k) for k in needed])
        doomed = [self.manifest_key(run_id, i) for i in ids[:-keep]]
        for key in self.storage.list(f"{run_id}/snapshots/") + self.storage.list(f"{run_id}/state/"):
            try:
                old = part_checkpoint(key) < floor and key not in needed
            except (ValueError, IndexError):  # not a name raystream writes: not ours to delete
                continue
            if old:
                doomed.append(key)
        self.storage.delete(doomed)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _legacy_restore(data: bytes) -> dict[str, Any] | None:
    """A restore record as a raystream before signing wrote it: {"checkpoint": n}."""
    try:
        body = signing.parse_json(data, "restore record")
    except CorruptCheckpointError:
        return None
    return {"checkpoint": body["checkpoint"]} if set(body) == {"checkpoint"} and _is_count(body["checkpoint"]) else None
