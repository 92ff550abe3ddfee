"""The sink interface: a sink builds one `SinkWriter` per subtask of its step, from a
`SinkContext`, and the runtime calls `write_batch` with micro-batches (a list of records
or a `pyarrow.RecordBatch`). Under exactly-once the writer takes part in the two-phase
commit of docs/protocol.md (T1-T4, with what each built-in sink does at each step);
under at-least-once (`context.transactional` is False) it writes directly. The methods
below say what each step asks of a writer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream._arrow_values import python_rows
from raystream.errors import RestoreError


@dataclass(frozen=True)
class SinkContext:
    """What a writer is built for: its step, its subtask, and how to behave."""

    step_id: str
    subtask: int
    parallelism: int
    transactional: bool = False
    resume_state: Any = None
    run_id: str = ""  # the job run this writer belongs to: names its output for retraction
    attempt: int = 0  # the attempt of the run this writer belongs to; later attempts recover its data
    job_name: str = ""  # names the writer's transactions in an external system (PostgresSink's gids)


class SinkWriter(ABC):
    """Writes the records of one subtask of a sink step."""

    @abstractmethod
    def write_batch(self, batch: list[Any] | pa.RecordBatch) -> None:
        """Take a micro-batch of records."""

    def pre_commit(self, checkpoint_id: int) -> Any:
        """T1, at the barrier of `checkpoint_id`. Transactional: make everything written
        since the previous pre-commit durable but invisible, and return a small picklable
        transaction describing it (None when there is nothing); it goes into the
        checkpoint. Otherwise: make everything written so far durable and return None (the
        checkpoint's source offsets are past those records: a buffer still in memory
        would be lost in a crash)."""
        return None

    def commit(self, txn: Any) -> None:
        """T3, once the transaction's checkpoint is complete: make it visible. It may run
        more than once for one transaction (after a failure), so it is idempotent. Every
        earlier transaction of the writer is committed, or its checkpoint known aborted
        (`abort`), before the next `pre_commit`."""

    def abort(self, txn: Any) -> bool:
        """The checkpoint of `txn` was aborted: its manifest will never exist (C6a). Return
        True after taking the transaction back into the open epoch (its data then goes
        into the next pre-commit, and the transaction must never be committed), or False
        to keep it pending: it is committed with the next complete checkpoint, whose
        snapshots list it again (the default). Called before the next `pre_commit`."""
        return False

    def recover(self, txns: list[Any], checkpoint_id: int) -> None:
        """T4, when the subtask is restored from `checkpoint_id`: commit `txns` (its
        transactions that may not have been committed), abort everything else this
        subtask staged in earlier attempts (`context.attempt`), and retract what earlier
        attempts of this subtask committed for later checkpoints of the same run.

        Data of this attempt or a later one is never touched: a recover that lands late
        (a slow request of a process already replaced) destroys nothing. Retraction
        matters only when a newer checkpoint was refused and the job falls back past it:
        its output is recomputed, so the committed copy must go (a sink that cannot
        retract duplicates that range in this one case). Touch only this writer's own
        (step, subtask, run) data. When a transaction in `txns` can no longer be
        committed because its staged data is gone, raise `StagedDataMissingError`: the
        job then falls back to the checkpoint before and retracts."""
        for txn in txns:
            self.commit(txn)

    def snapshot(self) -> Any:
        """Writer state to checkpoint (handed back as `SinkContext.resume_state`)."""
        return None

    def close(self) -> Any:
        """Flush at the end of the stream; the return value goes into the job result."""
        return None


class Sink(ABC):
    """An output of the job."""

    @abstractmethod
    def build_writer(self, context: SinkContext) -> SinkWriter:
        """The writer of one subtask."""

    def check(self, *, job_name: str, step_id: str, parallelism: int, exactly_once: bool, job: Any = None) -> None:
        """Called in the driver before the job starts: raise SinkError saying what to fix
        when the sink cannot work (an unreachable server, a missing table). `job` is the
        whole job (a `raystream.graph.JobGraph`), for limits its sinks share."""

    def combine_writer_states(self, step_id: str, states: list[Any]) -> Any:
        """The resume state of one writer that takes over several old subtasks' writers
        (after the sink's parallelism changed). A sink whose writers keep state overrides
        this; the default accepts at most one state that is not None."""
        present = [s for s in states if s is not None]
        if len(present) > 1:
            raise RestoreError(
                f"sink {step_id!r} ({type(self).__name__}) keeps writer state per subtask and does not combine "
                f"{len(present)} of them: restore it at the parallelism it was checkpointed with, or implement "
                f"{type(self).__name__}.combine_writer_states")
        return present[0] if present else None


def as_records(batch: Any) -> list[Any]:
    return python_rows(batch) if isinstance(batch, pa.RecordBatch) else batch
