"""FileSink's writer with `roll="checkpoint"`: one file per subtask and checkpoint,
staged as `_pending-...` and renamed to `part-...` when the checkpoint is complete."""
from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa

from raystream._storage import Storage, open_storage
from raystream.connectors.files.commits import FileTxn, SinkSettings, json_lines, promote
from raystream.connectors.files.names import SEP as _SEP
from raystream.connectors.files.names import writer_fields
from raystream.connectors.files.parquet_parts import parquet_files
from raystream.connectors.files.rolling_writer import RollingWriter
from raystream.errors import SinkError
from raystream.sink_api import SinkContext, SinkWriter


class FileWriter(SinkWriter):
    """Names: `_pending-<step>@<subtask>@<run>@<attempt>@<token>-<seq>.<fmt>` while
    staged, `part-<step>@<subtask>@<run>@<checkpoint>@<attempt>@<token>-<seq>.<fmt>` once
    committed, and `part-<step>@<subtask>@<run>@direct@...` when written directly
    (at-least-once). <attempt> is the attempt that wrote the data."""

    def __init__(self, sink: SinkSettings, context: SinkContext):
        self._sink = sink
        self._ctx = context
        self._store: Storage = open_storage(sink.directory)
        self._tag, self._attempt = writer_fields(context.step_id, context.subtask, context.run_id, context.attempt)
        self._token = uuid.uuid4().hex[:8]  # this writer's files never collide with another's
        self._parts: list[bytes | list[Any] | pa.RecordBatch] = []  # JSON lines already encoded
        self._rows = 0
        self._seq = 0
        self._txn = FileTxn()
        self.files_committed = 0

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        # JSON lines are encoded batch by batch, so a pre-commit only joins and writes them
        self._parts.append(json_lines(batch) if self._sink.format == "jsonl" else batch)
        self._rows += batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)
        if self._rows >= self._sink.rows_per_file:
            self._write_file()

    def _write_file(self) -> None:
        """Write the buffer: staged under `_pending-` (transactional) or final at once."""
        if not self._rows:
            return
        # Parquet: a file each for rows no one table holds (windows fired per kind of key)
        datas = [b"".join(self._parts)] if self._sink.format == "jsonl" else \
            parquet_files(self._parts, f"sink step {self._ctx.step_id!r}")
        self._parts, self._rows = [], 0
        for data in datas:
            stem = f"{self._token}-{self._seq:06d}.{self._sink.format}"
            self._seq += 1
            if self._ctx.transactional:
                name = f"_pending-{self._tag}{self._attempt}{stem}"
                self._put(name, data)
                self._txn.files.append((name, stem))
            else:
                self._put(f"part-{self._tag}direct{_SEP}{stem}", data)
                self.files_committed += 1

    def _put(self, name: str, data: bytes) -> None:
        try:
            self._store.put(name, data)
        except Exception as exc:
            raise SinkError(f"FileSink could not write {self._store.uri(name)}: {exc}") from exc

    def pre_commit(self, checkpoint_id: int) -> FileTxn | None:
        self._write_file()
        if not self._ctx.transactional:
            return None
        # The final names carry run and checkpoint, so a fall-back can retract them.
        files = [(pending, f"part-{self._tag}{checkpoint_id:012d}{_SEP}{self._attempt}{stem}")
                 for pending, stem in self._txn.files]
        self._txn = FileTxn()
        return FileTxn(files, self._sink.directory) if files else None

    def commit(self, txn: FileTxn) -> None:
        self.files_committed += promote(self._store, self._sink.directory, txn)

    def recover(self, txns: list[Any], checkpoint_id: int) -> None:
        """T4, for this subtask and the old subtasks it takes over (j % parallelism): as a
        rolling writer recovers, which also takes the transactions and open files of a
        checkpoint taken with rolling on (the default: this sink was switched to
        roll="checkpoint" since)."""
        rolling = RollingWriter(self._sink, self._ctx)
        rolling.recover(txns, checkpoint_id)
        self.files_committed += rolling.files_committed

    def close(self) -> dict[str, int]:
        if not self._ctx.transactional:
            self._write_file()
        elif self._rows or self._txn.files:
            raise SinkError(f"FileSink {self._tag} closed with data that no checkpoint covered")
        return {"files": self.files_committed}
