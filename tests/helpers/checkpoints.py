"""Signed checkpoints written by hand, for tests of what the checkpoint store accepts."""
from __future__ import annotations

import json

from raystream._runtime.state import signing
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.manifest import Manifest, versions
from raystream._runtime.checkpointing.recovery import choose_checkpoint
from raystream._runtime.state.snapshot import SnapshotMeta, SubtaskState, encode


class Marker:
    """A pickle that, when unpickled, creates a file: proof that it was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_checkpoint(store: CheckpointStore, n: int, table: dict, run: str = "run") -> None:
    data, sha = encode(SubtaskState(n, "sum", 0, 1, keyed={"sum": table}))
    key = store.snapshot_key(run, n, 1, "sum", 0)
    store.storage.put(key, data)
    assert store.commit(Manifest("j", run, n, 1, "exactly_once", 0.0, {"sum": 1},
                                 [SnapshotMeta("sum", 0, key, sha, len(data))], versions=versions(),
                                 max_parallelism=128))


def choose(store: CheckpointStore, refused: set[int] | None = None):
    return choose_checkpoint(store, "run", set() if refused is None else refused, max_parallelism=128, keyed=True)


def signed(store: CheckpointStore, raw: dict) -> bytes:
    """A manifest body signed with the job's own key, as if the job had written it."""
    key = signing.current()
    raw = dict(raw, key_id=key.key_id)
    raw.pop("signature", None)
    raw["signature"] = signing.sign(raw, key)
    return json.dumps(raw).encode()
