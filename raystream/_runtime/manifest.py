"""The manifest: the commit record of one checkpoint, in signed JSON.

A manifest lists each subtask's snapshot (key, SHA-256, size), the versions that wrote
them and the number of key groups. When RAYSTREAM_CHECKPOINT_KEY is set (in the
environment of the Ray processes, never passed as an argument), manifests and
at-most-once progress records carry an HMAC-SHA256 of their content, and one whose
signature is missing or wrong is refused, so the checksums it lists can be trusted.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import cloudpickle

from raystream._version import __version__
from raystream._runtime.snapshot import SnapshotMeta
from raystream.errors import CorruptCheckpointError

MANIFEST_FORMAT = 1
SIGNING_KEY_ENV = "RAYSTREAM_CHECKPOINT_KEY"


def signing_key() -> bytes | None:
    key = os.environ.get(SIGNING_KEY_ENV)
    return key.encode("utf-8") if key else None


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
    max_parallelism: int = 0  # key groups of the keyed state; 0 in manifests older than this field
    state_steps: list[str] = field(default_factory=list)  # steps that keep state (sources, keyed steps, sinks)
    duration: float = 0.0  # seconds from the trigger to this manifest
    final: bool = False  # taken when every source had ended or was stopped: a savepoint when stopped

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
        except (ValueError, AttributeError, TypeError) as exc:
            raise CorruptCheckpointError(f"{what} is not a readable manifest: {exc}") from None
        if key is not None:
            if not signature:
                raise CorruptCheckpointError(
                    f"{what} is not signed, and {SIGNING_KEY_ENV} is set: unsigned manifests are refused")
            if not isinstance(signature, str) or not hmac.compare_digest(signature, _sign(raw, key)):
                raise CorruptCheckpointError(
                    f"{what} does not match its signature: it was changed, or signed with another key")
        try:
            raw["snapshots"] = [SnapshotMeta(**s) for s in raw["snapshots"]]
            return Manifest(**raw)
        except (KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"{what} is missing fields or has unknown ones: {exc}") from None

    def snapshots_of(self, chain: str) -> list[SnapshotMeta]:
        return sorted((s for s in self.snapshots if s.chain == chain), key=lambda s: s.subtask)


def _canonical(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _sign(raw: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(raw), hashlib.sha256).hexdigest()


def versions() -> dict[str, str]:
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


def signed_json(body: dict[str, Any], key: bytes | None) -> bytes:
    raw = dict(body)
    raw["sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    if key is not None:
        raw["signature"] = _sign(body, key)
    return json.dumps(raw, sort_keys=True).encode("utf-8")


def read_signed_json(data: bytes, key: bytes | None, what: str) -> dict[str, Any]:
    """The body of `signed_json` bytes; with a key, only if the signature matches."""
    try:
        raw = json.loads(data)
        sha, signature = raw.pop("sha256", None), raw.pop("signature", None)
    except (ValueError, AttributeError, TypeError) as exc:
        raise CorruptCheckpointError(f"{what} is not readable: {exc}") from None
    if not isinstance(sha, str) or not hmac.compare_digest(sha, hashlib.sha256(_canonical(raw)).hexdigest()):
        raise CorruptCheckpointError(f"{what} is damaged: its checksum does not match")
    if key is not None and (not isinstance(signature, str) or not hmac.compare_digest(signature, _sign(raw, key))):
        raise CorruptCheckpointError(f"{what} is unsigned or does not match its signature; it is not used")
    return raw
