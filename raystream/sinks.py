"""Sinks: where records go, exactly once.

The interface a sink implements (`Sink`, `SinkWriter`, `SinkContext`) and its two-phase
commit protocol are in `raystream.sink_api`; `FileSink` is in `raystream.connectors.files.sink`, and
`PostgresSink` (loaded on first use, with psycopg) in `raystream.connectors.postgres.sink`.
"""
from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from raystream.connectors.files.compaction import Compaction, compact_files
from raystream.errors import JobDefinitionError, SinkError
from raystream.connectors.files.reading import read_files, read_table
from raystream.connectors.files.sink import FileSink, FileTxn, committed_checkpoint, json_lines, parquet_bytes
from raystream.sink_api import Sink, SinkContext, SinkWriter, as_records

__all__ = ["Sink", "SinkContext", "SinkWriter", "as_records", "FileSink", "FileTxn", "committed_checkpoint",
           "json_lines", "parquet_bytes", "read_files", "read_table", "compact_files", "Compaction", "PrintSink", "CollectSink"]  # and PostgresSink, lazily

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """Sinks whose libraries are optional load on first use: `rs.sinks.PostgresSink`."""
    if name == "PostgresSink":
        from raystream.connectors.postgres.sink import PostgresSink
        return PostgresSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- PrintSink and CollectSink -----------------------------------------------------------


class PrintSink(Sink):
    """Prints each record on the standard output of its subtask (Ray forwards it to the driver).

    Printing cannot be taken back: records replayed after a failure print again.
    """

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return _PrintWriter(context.step_id)


class _PrintWriter(SinkWriter):
    def __init__(self, step_id: str):
        self._step_id = step_id

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        print("\n".join(f"{self._step_id}: {r!r}" for r in as_records(batch)), flush=True)


class CollectSink(Sink):
    """Collects records into the job result: `result.outputs[step_id]`.

    keep="all" collects every record; keep="last" takes `(key, value)` records and keeps
    the latest value per key (a table of the final state); it refuses other records, Arrow
    rows among them (collect those with keep="all"). The collection is writer
    state, checkpointed with the job, so it is exactly-once too. Meant for tests and
    notebooks: everything is held in memory and sent to the driver at the end.
    """

    def __init__(self, *, keep: str = "all"):
        if keep not in ("all", "last"):
            raise JobDefinitionError(f"CollectSink keep must be 'all' or 'last'; got {keep!r}")
        self.keep = keep

    def combine_writer_states(self, step_id: str, states: list[Any]) -> Any:
        if self.keep == "last":  # key groups never overlap, so no key is in two states
            return {k: v for state in states if state for k, v in state.items()}
        return [r for state in states if state for r in state]

    def build_writer(self, context: SinkContext) -> SinkWriter:
        if self.keep == "last":
            return _LatestWriter(context.resume_state)
        return _CollectWriter(context.resume_state)


class _CollectWriter(SinkWriter):
    def __init__(self, resume_state: list[Any] | None):
        self._records: list[Any] = list(resume_state or [])

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        self._records.extend(as_records(batch))

    def snapshot(self) -> list[Any]:
        return self._records

    def close(self) -> list[Any]:
        return self._records


class _LatestWriter(SinkWriter):
    def __init__(self, resume_state: dict[Any, Any] | None):
        self._latest: dict[Any, Any] = dict(resume_state or {})

    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        records = as_records(batch)
        # dict.update takes any two-item iterable as a pair: an Arrow row with two columns
        # (a dict) or a two-character string would update the wrong key silently
        bad = next((r for r in records if not (isinstance(r, (tuple, list)) and len(r) == 2)), None)
        if bad is not None:
            rows = " (Arrow rows are dicts: collect them with keep='all')" if isinstance(bad, dict) else ""
            raise SinkError(f"CollectSink(keep='last') takes (key, value) records; got {bad!r}{rows}")
        try:
            self._latest.update(records)
        except (TypeError, ValueError) as exc:
            raise SinkError(f"CollectSink(keep='last') takes (key, value) records: {exc}") from None

    def snapshot(self) -> dict[Any, Any]:
        return self._latest

    def close(self) -> list[tuple[Any, Any]]:
        return list(self._latest.items())
