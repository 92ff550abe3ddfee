"""The manifest: the commit record of one checkpoint, in signed JSON.

A manifest lists each subtask's snapshot (key, SHA-256, size), the versions that wrote
them and the number of key groups. It carries an HMAC-SHA256 of its content made with
the checkpoint key (signing.py), so the checksums it lists can be trusted: one whose
signature is missing or wrong is refused, and so is one of the wrong shape.
"""
from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import cloudpickle

from raystream._version import __version__
from raystream._runtime.state import signing
from raystream._runtime.state.signing import Key, read_signed_json, signed_json  # noqa: F401 (the records' format)
from raystream._runtime.state.snapshot import SnapshotMeta
from raystream.errors import CorruptCheckpointError

MANIFEST_FORMAT = 1
SIGNING_KEY_ENV = signing.KEY_ENV


def signing_key(create: bool = False) -> Key | None:
    """This process's checkpoint key (signing.current)."""
    return signing.current(create)


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
    key_id: str = ""  # the id of the key that signed it ("" unsigned, or older than this field)

    def to_json(self, key: Key | None = None) -> bytes:
        raw = asdict(self)
        raw["key_id"] = key.key_id if key is not None else ""
        if key is not None:
            raw["signature"] = signing.sign(raw, key)
        return json_dumps(raw)

    @staticmethod
    def from_json(data: bytes, key: Key | None = None, what: str = "manifest") -> "Manifest":
        """Parse a manifest: refused (CorruptCheckpointError) unless it is well formed and,
        with a key, signed by it (signing.verify)."""
        raw = signing.parse_json(data, what)
        signature = raw.pop("signature", "")
        problem = _shape_problem(raw)  # first: a malformed manifest is refused, signed or not
        if problem is not None:
            raise CorruptCheckpointError(f"{what} is malformed: {problem}; it is not used")
        signing.verify(raw, signature, key, what)
        raw["snapshots"] = [SnapshotMeta(**s) for s in raw["snapshots"]]
        return Manifest(**raw)

    def snapshots_of(self, chain: str) -> list[SnapshotMeta]:
        return sorted((s for s in self.snapshots if s.chain == chain), key=lambda s: s.subtask)


def json_dumps(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, indent=1, sort_keys=True).encode("utf-8")


#: Earlier raystream minor versions whose checkpoints this one restores: 0.1 wrote the same
#: state, named by the modules before the package had folders (state/moved.py maps them);
#: 0.2 the same state by today's names (a CSV partition's offset of 0.2 is converted where
#: it is read: connectors/files/source.py); 0.4's snapshots lack `step_meta`, which
#: columnar steps then take as saying nothing; 0.5's are 0.6's without TTL state; 0.6's
#: mark a fired session True where 0.7 marks it with its end (operators/windows.py); 0.7's
#: hold window-major window state per key, where 0.8 holds it as Arrow rows (the reader
#: makes the per-key layout of either: state/window_entries.py).
READS = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")


def versions() -> dict[str, str]:
    return {"raystream": __version__, "python": platform.python_version(), "cloudpickle": cloudpickle.__version__}


def incompatibility(recorded: dict[str, str]) -> str | None:
    """Why snapshots written with `recorded` versions cannot be read here, or None.

    Pickles need the same Python minor version and cloudpickle major version; state
    layouts need this raystream minor version or one it reads (READS)."""
    here = versions()
    rules = {"python": 2, "cloudpickle": 1, "raystream": 2}  # leading version parts that must match
    for name, parts in rules.items():
        theirs = recorded.get(name, "")
        if name == "raystream" and ".".join(theirs.split(".")[:2]) in READS:
            continue
        if theirs.split(".")[:parts] != here[name].split(".")[:parts]:
            return (f"it was written by {name} {theirs or 'unknown'} and this is {name} {here[name]}; "
                    f"restore it with {name} {'.'.join(theirs.split('.')[:parts]) or theirs}, or start without resume")
    return None


# --- shape: every field of a manifest read from storage is checked before use -------------

_INT, _NUM, _STR, _BOOL = "int", "number", "str", "bool"
_FIELDS: dict[str, Any] = {
    "job": _STR, "run_id": _STR, "checkpoint_id": _INT, "attempt": _INT, "guarantee": _STR, "created": _NUM,
    "chains": ("map", _STR, _INT), "snapshots": ("list", "snapshot"), "completed_total": _INT, "failed_total": _INT,
    "versions": ("map", _STR, _STR), "format": _INT, "max_parallelism": _INT, "state_steps": ("list", _STR),
    "duration": _NUM, "final": _BOOL, "key_id": _STR,
}
_REQUIRED = ("job", "run_id", "checkpoint_id", "attempt", "guarantee", "created", "chains", "snapshots")
_SNAPSHOT: dict[str, Any] = {
    "chain": _STR, "subtask": _INT, "key": _STR, "sha256": _STR, "size": _INT, "alignment": _NUM,
    "source_records": _INT, "audit": ("map", _STR, ("list", _INT)), "parts": ("list", _STR), "sink_from": _INT,
}
_SNAPSHOT_REQUIRED = ("chain", "subtask", "key", "sha256", "size")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SEGMENT = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*")


def safe_key(key: Any) -> bool:
    """A storage key that stays inside the job's checkpoint root: relative, '/'-separated
    segments of plain characters, none of them '.' or '..'."""
    return (isinstance(key, str) and 0 < len(key) < 1024
            and all(_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in key.split("/")))


def _type_problem(value: Any, kind: Any, where: str) -> str | None:
    if kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif kind == _NUM:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == _STR:
        ok = isinstance(value, str) and len(value) < 4096
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == "snapshot":
        return _fields_problem(value, _SNAPSHOT, _SNAPSHOT_REQUIRED, where)
    elif kind[0] == "list":
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next((p for i, v in enumerate(value) if (p := _type_problem(v, kind[1], f"{where}[{i}]"))), None)
    else:  # ("map", key kind, value kind)
        if not isinstance(value, dict):
            return f"{where} is not a mapping"
        return next((p for k, v in value.items()
                     if (p := _type_problem(k, kind[1], f"a key of {where}") or _type_problem(v, kind[2], f"{where}[{k!r}]"))),
                    None)
    return None if ok else f"{where} is {type(value).__name__} {str(value)[:40]!r}, not a {'non-negative ' if kind == _INT else ''}{kind}"


def _fields_problem(raw: Any, fields: dict[str, Any], required: tuple[str, ...], where: str) -> str | None:
    if not isinstance(raw, dict):
        return f"{where} is not a mapping"
    unknown = sorted(set(raw) - set(fields))
    missing = [name for name in required if name not in raw]
    if unknown or missing:
        return f"{where} has unknown fields {unknown} or misses {missing}"
    return next((p for name, kind in fields.items() if name in raw and (p := _type_problem(raw[name], kind, f"{where}.{name}"))),
                None)


def _shape_problem(raw: dict[str, Any]) -> str | None:
    """Why `raw` is not a manifest this version wrote, or None."""
    problem = _fields_problem(raw, _FIELDS, _REQUIRED, "manifest")
    if problem is not None:
        return problem
    if raw.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        return f"format {raw['format']} is not {MANIFEST_FORMAT}"
    if not _SEGMENT.fullmatch(raw["run_id"]):
        return f"run id {raw['run_id'][:40]!r} is not a plain name"
    own = f"{raw['run_id']}/snapshots/"
    for i, snap in enumerate(raw["snapshots"]):
        if not _SHA256.fullmatch(snap["sha256"]):
            return f"snapshots[{i}].sha256 is not a SHA-256"
        if not (safe_key(snap["key"]) and snap["key"].startswith(own)):
            return f"snapshots[{i}].key {snap['key'][:80]!r} is not a key under {own}"
        if not all(safe_key(p) for p in snap.get("parts", ())):
            return f"snapshots[{i}].parts names a key outside the job's checkpoints"
    return None
