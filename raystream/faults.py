"""Fault injection for tests: make a subtask or the coordinator exit hard (`os._exit`)
at a named point of the checkpoint and recovery protocols.

    job = rs.Job(..., runtime=rs.RuntimeConfig(faults=(
        rs.faults.CrashAt("sink_pre_committed", step="totals", subtask=0, checkpoint=3),
        rs.faults.CrashAt("restore", attempt=2),  # and once more while recovering
    )))

Without a plan the points cost one attribute check each, per protocol step, never per
record. Each CrashAt fires on one attempt only (`attempt`, default 1): the processes of
the next attempt are new, and so is its attempt number.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from raystream.errors import ConfigError

logger = logging.getLogger(__name__)

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
}
EXIT_CODE = 97


@dataclass(frozen=True)
class CrashAt:
    """Crash at `point` on attempt `attempt`, at checkpoint `checkpoint` or later.

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


class Injector:
    """The crash points that apply to one process of one attempt."""

    def __init__(self, plan: tuple[CrashAt, ...], *, attempt: int, steps: tuple[str, ...] = (),
                 subtask: int | None = None, coordinator: bool = False):
        points = COORDINATOR_POINTS if coordinator else SUBTASK_POINTS
        self._plan = [c for c in plan if isinstance(c, CrashAt) and c.point in points and c.attempt == attempt
                      and (coordinator or ((c.step is None or c.step in steps)
                                           and (c.subtask is None or c.subtask == subtask)))]
        self._where = "coordinator" if coordinator else f"{'+'.join(steps)}[{subtask}]"

    def __bool__(self) -> bool:
        return bool(self._plan)

    def hit(self, point: str, checkpoint: int) -> None:
        for c in self._plan:
            if c.point == point and checkpoint >= c.checkpoint:
                logger.warning("fault injection: %s exits at %s (checkpoint %d)", self._where, point, checkpoint)
                os._exit(EXIT_CODE)


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


def install_s3_faults(plan: tuple) -> None:
    """Make this process's S3 clients misbehave as the plan's S3Faults says (if any)."""
    from raystream import _files

    faults = next((f for f in plan if isinstance(f, S3Faults)), None)
    if faults is not None:
        _files.set_client_hook(_S3Hooks(faults).register)


class _S3Hooks:
    def __init__(self, faults: S3Faults):
        import threading

        self.f = faults
        self.requests = 0
        self.lost = 0
        self.local = threading.local()

    def register(self, client) -> None:
        client.meta.events.register("before-send.s3.*", self.before_send)
        client.meta.events.register("after-call.s3.PutObject", self.after_put)

    def _note(self, what: str) -> None:
        if self.f.log:
            with open(self.f.log, "a") as out:
                out.write(f"{os.getpid()} {what}\n")

    def before_send(self, request, **_):
        import time

        f = self.f
        self.local.manifest_put = request.method == "PUT" and "/manifests/" in request.url
        if f.down_while_exists and os.path.exists(f.down_while_exists):
            self._note(f"down {request.method}")
            return _error_response(request.url, 503, "ServiceUnavailable")
        self.requests += 1
        if f.error_every and self.requests % f.error_every == 0:
            self._note(f"error {request.method}")
            return _error_response(request.url, 503, "SlowDown")
        if f.put_delay and request.method == "PUT":
            self._note("slow PUT")
            time.sleep(f.put_delay)
        if f.manifest_put_delay and self.local.manifest_put:
            self._note("slow manifest PUT")
            time.sleep(f.manifest_put_delay)
        return None

    def after_put(self, **_):
        if getattr(self.local, "manifest_put", False) and self.lost < self.f.lose_manifest_responses:
            self.lost += 1
            self._note("lost manifest response")
            from botocore.exceptions import ConnectionClosedError

            raise ConnectionClosedError(endpoint_url="injected: the response to a manifest PUT was lost")


def _error_response(url: str, status: int, code: str):
    from botocore.awsrequest import AWSResponse

    body = f"<Error><Code>{code}</Code><Message>injected by raystream.faults</Message></Error>".encode()

    class _Raw:
        def stream(self, **_):
            yield body

    return AWSResponse(url, status, {}, _Raw())
