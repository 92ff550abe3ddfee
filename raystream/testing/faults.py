"""Fault injection for tests: make a subtask or the coordinator exit hard (`os._exit`)
at a named point of the checkpoint and recovery protocols.

    job = rs.Job(..., runtime=rs.RuntimeConfig(faults=(
        rs.faults.CrashAt("sink_pre_committed", step="totals", subtask=0, checkpoint=3),
        rs.faults.CrashAt("restore", attempt=2),  # and once more while recovering
    )))

Without a plan the points cost one attribute check each, per protocol step, never per
record. Each CrashAt fires once per run, on attempt `attempt` (default 1) or a later one:
the process that reaches it first claims it in the run's storage (`<run>/faults/<n>`), then
exits. So a plan's crashes all happen even when something else (a lost node, a worker that
dies on its own) restarts the job before they are reached.
"""
from __future__ import annotations

from dataclasses import dataclass

from raystream.errors import ConfigError

#: Subtask points.
SUBTASK_POINTS = {
    "mid_alignment": "a barrier has arrived on some inputs of a step with several, not on all",
    "batch_before_barrier": "a source emitted a batch while a barrier was due, not yet the barrier",
    "sink_pre_committed": "a sink pre-committed its transaction; the checkpoint is not complete",
    "snapshot_uploaded": "the snapshot is in durable storage; not yet acknowledged",
    "sink_committed": "a sink committed a transaction of a complete checkpoint",
    "restore": "a new subtask read its snapshot; sinks have not recovered yet",
}
#: Coordinator points.
COORDINATOR_POINTS = {
    "acks_complete": "every acknowledgement is in; the manifest is not written",
    "manifest_writing": "the manifest bytes are written; not yet published under their key",
    "manifest_written": "the manifest is committed; no subtask has been told",
    "stopping": "a stop reached the coordinator; the sources have not been told",
}
EXIT_CODE = 97


@dataclass(frozen=True)
class CrashAt:
    """Crash once at `point`: on attempt `attempt` or later, at checkpoint `checkpoint`
    or later, in the first process of the run to reach it.

    Subtask points take `step` (a step id in the subtask's chain; None: any) and
    `subtask` (None: any).
    """

    point: str
    step: str | None = None
    subtask: int | None = None
    checkpoint: int = 2
    attempt: int = 1

    def __post_init__(self) -> None:
        if self.point not in SUBTASK_POINTS and self.point not in COORDINATOR_POINTS:
            known = ", ".join(sorted(SUBTASK_POINTS) + sorted(COORDINATOR_POINTS))
            raise ConfigError(f"unknown crash point {self.point!r}; known points: {known}")


@dataclass(frozen=True)
class S3Faults:
    """S3 misbehaving, injected into every raystream process's boto3 client.

    - error_every: every n-th request of a process fails with 503 SlowDown (boto3 retries
      it; the retry is the next request, so no request fails twice in a row);
    - put_delay: seconds added to every PUT;
    - manifest_put_delay: seconds before each manifest PUT is sent, so that it lands late
      (a slow commit point);
    - lose_manifest_responses: in each process, the first N manifest PUTs reach S3 but
      their responses are lost (the call raises as if the connection dropped);
    - down_while_exists: every request fails while this local file exists.
    Every injected fault appends a line to `log` when it is set, so tests can count them.
    """

    error_every: int = 0
    put_delay: float = 0.0
    manifest_put_delay: float = 0.0
    lose_manifest_responses: int = 0
    down_while_exists: str | None = None
    log: str | None = None
