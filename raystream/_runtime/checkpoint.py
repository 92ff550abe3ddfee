"""Checkpoint data: what a subtask snapshots, what a manifest commits, and where it lives.

Layout under the job's checkpoint root (`<storage>/<job name>`), per run:

    <run>/attempts/<attempt>               claimed once per attempt (put_if_absent)
    <run>/snapshots/<id>/<attempt>-<chain>-<subtask>.snap
    <run>/progress/<chain>-<subtask>       at-most-once: source offsets before each batch
    <run>/manifests/<id>.json              the commit record of checkpoint <id>

Run ids sort by start time, checkpoint ids increase within a run. A snapshot is
cloudpickle bytes whose SHA-256 is recorded in the manifest; `decode` checks it before
unpickling, so bytes that were damaged or replaced are never unpickled. When
RAYSTREAM_CHECKPOINT_KEY is set (in the environment of the Ray processes, never passed
as an argument), manifests carry an HMAC-SHA256 of their content, and a manifest whose
signature is missing or wrong is refused, so the checksums it lists can be trusted.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import logging
import platform
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import cloudpickle

from raystream._runtime.storage import Storage, open_storage
from raystream.errors import RaystreamError

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
SIGNING_KEY_ENV = "RAYSTREAM_CHECKPOINT_KEY"


def signing_key() -> bytes | None:
    key = os.environ.get(SIGNING_KEY_ENV)
    return key.encode("utf-8") if key else None


class CorruptCheckpointError(RaystreamError):
    """A checkpoint object does not match the checksum its manifest recorded."""


def encode(obj: Any) -> tuple[bytes, str]:
    data = cloudpickle.dumps(obj)
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes, sha256: str, what: str) -> Any:
    """Unpickle `data` only if its SHA-256 is `sha256`."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CorruptCheckpointError(
            f"{what} is damaged or was replaced: SHA-256 {actual[:16]}... where the manifest recorded "
            f"{sha256[:16]}...; it is not loaded")
    return cloudpickle.loads(data)


def encode_framed(obj: Any) -> bytes:
    """Self-verifying bytes (checksum first) for objects no manifest describes."""
    data, sha = encode(obj)
    return sha.encode("ascii") + b"\n" + data


def decode_framed(blob: bytes, what: str) -> Any:
    sha, _, data = blob.partition(b"\n")
    return decode(data, sha.decode("ascii", "replace"), what)


@dataclass
class SinkState:
    """A sink's part of a snapshot: the writer's own state and its transactions not yet committed."""

    writer_state: Any = None
    pending: list[tuple[int, Any]] = field(default_factory=list)  # (checkpoint id, transaction)


@dataclass
class SubtaskState:
    """Everything one subtask needs to resume exactly where checkpoint `checkpoint_id` left it."""

    checkpoint_id: int
    chain: str
    subtask: int
    parallelism: int
    source_offsets: dict[str, Any] = field(default_factory=dict)  # partition key -> offset
    keyed: dict[str, dict[Any, Any]] = field(default_factory=dict)  # step id -> {key: state}
    sinks: dict[str, SinkState] = field(default_factory=dict)  # step id -> sink state
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # step id -> (in, out)
    audit: dict[str, tuple[int, int]] = field(default_factory=dict)  # "source:<step>"/"sink:<step>" -> (count, digest)
    errors: dict[str, int] = field(default_factory=dict)  # step id -> records that failed


@dataclass(frozen=True)
class SnapshotMeta:
    """One subtask's acknowledgement of a checkpoint; the manifest lists one per subtask."""

    chain: str
    subtask: int
    key: str
    sha256: str
    size: int
    alignment: float = 0.0
    source_records: int = 0
    audit: dict[str, list[int]] = field(default_factory=dict)  # see raystream.audit


@dataclass
class Manifest:
    """The commit record of one checkpoint."""

    job: str
    run_id: str
    checkpoint_id: int
    attempt: int
    guarantee: str
    created: float
    chains: dict[str, int]  # chain name -> parallelism
    snapshots: list[SnapshotMeta]
    completed_total: int = 0
    failed_total: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_json(self, key: bytes | None = None) -> bytes:
        raw = asdict(self)
        if key is not None:
            raw["signature"] = _sign(raw, key)
        return json.dumps(raw, indent=1, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_json(data: bytes, key: bytes | None = None, what: str = "manifest") -> "Manifest":
        """Parse a manifest; with a key, refuse it unless its signature matches."""
        try:
            raw = json.loads(data)
            signature = raw.pop("signature", "")
        except (ValueError, AttributeError) as exc:
            raise CorruptCheckpointError(f"{what} is not a readable manifest: {exc}") from None
        if key is not None:
            if not signature:
                raise CorruptCheckpointError(
                    f"{what} is not signed, and {SIGNING_KEY_ENV} is set: unsigned manifests are refused")
            if not hmac.compare_digest(signature, _sign(raw, key)):
                raise CorruptCheckpointError(
                    f"{what} does not match its signature: it was changed, or signed with another key")
        try:
            raw["snapshots"] = [SnapshotMeta(**s) for s in raw["snapshots"]]
            return Manifest(**raw)
        except (KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"{what} is missing fields or has unknown ones: {exc}") from None

    def snapshots_of(self, chain: str) -> list[SnapshotMeta]:
        return sorted((s for s in self.snapshots if s.chain == chain), key=lambda s: s.subtask)


def _sign(raw: dict[str, Any], key: bytes) -> str:
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def versions() -> dict[str, str]:
    from raystream import __version__

    return {"raystream": __version__, "python": platform.python_version(), "cloudpickle": cloudpickle.__version__}


def incompatibility(recorded: dict[str, str]) -> str | None:
    """Why snapshots written with `recorded` versions cannot be read here, or None.

    Pickles need the same Python minor version and cloudpickle major version; state
    layouts need the same raystream minor version."""
    here = versions()
    rules = {"python": 2, "cloudpickle": 1, "raystream": 2}  # leading version parts that must match
    for name, parts in rules.items():
        theirs = recorded.get(name, "")
        if theirs.split(".")[:parts] != here[name].split(".")[:parts]:
            return (f"it was written by {name} {theirs or 'unknown'} and this is {name} {here[name]}; "
                    f"restore it with {name} {'.'.join(theirs.split('.')[:parts]) or theirs}, or start without resume")
    return None


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class CheckpointStore:
    """Reads and writes one job's checkpoints in durable storage."""

    def __init__(self, root: str):
        self.root = root
        self.storage: Storage = open_storage(root)
        self._key = signing_key()  # read in this process; never stored or logged

    # --- keys ---------------------------------------------------------------------------

    @staticmethod
    def snapshot_key(run_id: str, checkpoint_id: int, attempt: int, chain: str, subtask: int) -> str:
        return f"{run_id}/snapshots/{checkpoint_id:012d}/{attempt:06d}-{chain}-{subtask:04d}.snap"

    @staticmethod
    def manifest_key(run_id: str, checkpoint_id: int) -> str:
        return f"{run_id}/manifests/{checkpoint_id:012d}.json"

    @staticmethod
    def progress_key(run_id: str, chain: str, subtask: int) -> str:
        return f"{run_id}/progress/{chain}-{subtask:04d}"

    # --- attempts -----------------------------------------------------------------------

    def claim_attempt(self, run_id: str) -> int:
        """A number no other attempt of this run has had (a fencing token for later checks)."""
        while True:
            taken = [int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/attempts/")]
            attempt = max(taken, default=0) + 1
            if self.storage.put_if_absent(f"{run_id}/attempts/{attempt:06d}", str(time.time()).encode()):
                return attempt

    def attempts(self, run_id: str) -> int:
        return len(self.storage.list(f"{run_id}/attempts/"))

    def is_current(self, run_id: str, attempt: int) -> bool:
        """The fence: whether `attempt` is still the newest attempt of the run. A process of
        an older attempt (one paused while the job recovered) must not commit anything."""
        taken = [int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/attempts/")]
        return max(taken, default=0) <= attempt

    # --- snapshots and manifests -------------------------------------------------------

    def manifest_ids(self, run_id: str) -> list[int]:
        return [int(k.rsplit("/", 1)[1].split(".")[0]) for k in self.storage.list(f"{run_id}/manifests/")
                if k.endswith(".json")]

    def load_manifest(self, run_id: str, checkpoint_id: int) -> Manifest:
        key = self.manifest_key(run_id, checkpoint_id)
        return Manifest.from_json(self.storage.get(key), self._key, f"manifest {self.storage.uri(key)}")

    def runs(self) -> list[str]:
        """Run ids that have any object, oldest first."""
        return sorted({k.split("/", 1)[0] for k in self.storage.list("") if "/" in k})

    def newest_run_with_checkpoint(self) -> str | None:
        """The newest run of this job that committed a checkpoint (for --resume)."""
        for run_id in reversed(self.runs()):
            if self.manifest_ids(run_id):
                return run_id
        return None

    def commit(self, manifest: Manifest, before_publish: Callable[[], None] | None = None) -> bool:
        """Write the manifest under its fresh key; False if that key was already taken."""
        return self.storage.put_if_absent(self.manifest_key(manifest.run_id, manifest.checkpoint_id),
                                          manifest.to_json(self._key), before_publish)

    def verify_snapshot(self, data: bytes, meta: SnapshotMeta) -> SubtaskState:
        """The snapshot's state, if `data` matches the checksum in the manifest."""
        return decode(data, meta.sha256, f"snapshot {self.storage.uri(meta.key)}")

    def read_progress(self, run_id: str, chain: str) -> dict[str, Any]:
        """At-most-once: the offsets the subtasks of `chain` saved before their last batches."""
        offsets: dict[str, Any] = {}
        for key in self.storage.list(f"{run_id}/progress/{chain}-"):
            offsets.update(decode_framed(self.storage.get(key), self.storage.uri(key)))
        return offsets

    def retain(self, run_id: str, keep: int) -> None:
        """Delete all but the newest `keep` manifests of the run, and every snapshot older
        than the oldest kept manifest (complete or aborted). The newest complete checkpoint
        and what it references are never touched."""
        ids = self.manifest_ids(run_id)
        if len(ids) <= keep:
            return
        oldest_kept = ids[-keep]
        doomed = [self.manifest_key(run_id, i) for i in ids[:-keep]]
        for key in self.storage.list(f"{run_id}/snapshots/"):
            if int(key.split("/")[2]) < oldest_kept:
                doomed.append(key)
        self.storage.delete(doomed)
