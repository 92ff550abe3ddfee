"""At-most-once progress: a source partition's offset, saved before each batch leaves
(`<run>/progress/<step>/<attempt>/<h>`, signed JSON; docs/protocol.md, "Storage layout").
Offsets of at-most-once sources must be JSON values: these records are never pickles."""
from __future__ import annotations

import hashlib
import re
from typing import Any, Protocol

from raystream._storage import Storage
from raystream.errors import CorruptCheckpointError


class RecordStore(Protocol):
    """What progress records need of the checkpoint store (CheckpointStore)."""

    storage: Storage
    job: str

    def write_record(self, key: str, body: dict[str, Any]) -> None: ...

    def read_record(self, key: str, kind: str) -> dict[str, Any]: ...


def progress_key(run_id: str, step_id: str, attempt: int, partition: str) -> str:
    digest = hashlib.sha256(partition.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{run_id}/progress/{step_id}/{attempt:06d}/{digest}.json"


class ProgressRecords:
    """The progress records of one job's checkpoint store."""

    def __init__(self, store: RecordStore):
        self.store = store

    def save(self, run_id: str, step_id: str, attempt: int, partition: str, offset: Any) -> None:
        """The offset of `partition` before its next batch leaves."""
        key = progress_key(run_id, step_id, attempt, partition)
        self.store.write_record(key, {"type": "progress", "key": key, "job": self.store.job, "run": run_id,
                                      "step": step_id, "attempt": attempt, "partition": partition, "offset": offset})

    def read(self, run_id: str, step_id: str) -> dict[str, Any]:
        """partition -> offset saved by the newest attempt that saved one. Offsets only move
        forward across attempts (each starts from what it read here), and a process of an
        older attempt can only write under its own attempt's keys, never over newer ones."""
        store, newest = self.store, {}
        for key in store.storage.list(f"{run_id}/progress/{step_id}/"):
            body = store.read_record(key, "progress")
            if body.get("run") != run_id or body.get("step") != step_id or body.get("job", store.job) != store.job:
                raise CorruptCheckpointError(f"progress {store.storage.uri(key)} belongs to another run or step")
            attempt, partition = body.get("attempt"), body.get("partition")
            if not (isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 0
                    and isinstance(partition, str)):
                raise CorruptCheckpointError(f"progress {store.storage.uri(key)} is malformed")
            if partition not in newest or attempt > newest[partition][0]:
                newest[partition] = (attempt, body["offset"])
        return {p: offset for p, (_, offset) in newest.items()}

    def carry(self, run_id: str, step_id: str, attempt: int, offsets: dict[str, Any]) -> None:
        """Carry `offsets` into `attempt`'s keys, then drop the older attempts' progress:
        the progress tree holds one object per partition and live attempt."""
        for partition, offset in offsets.items():
            self.save(run_id, step_id, attempt, partition, offset)
        mine = f"{run_id}/progress/{step_id}/{attempt:06d}/"
        storage = self.store.storage
        storage.delete([k for k in storage.list(f"{run_id}/progress/{step_id}/")
                        if not k.startswith(mine) and re.fullmatch("[0-9]{6}", k.split("/")[3], re.ASCII)
                        and int(k.split("/")[3]) < attempt])
