"""Fault injection inside the runtime: the crash points of `raystream.testing.faults.CrashAt`
that apply to one process, and the S3 misbehaviour of `raystream.testing.faults.S3Faults`
installed into this process's boto3 clients."""
from __future__ import annotations

import logging
import os
import threading
import time

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

from raystream import _files
from raystream._storage import Storage
from raystream.testing.faults import COORDINATOR_POINTS, EXIT_CODE, SUBTASK_POINTS, CrashAt, S3Faults

logger = logging.getLogger(__name__)


class Injector:
    """The crash points that apply to one process of one attempt.

    A crash is claimed before the process exits, with a marker written only if absent
    under `<run>/faults/`, so each CrashAt of the plan fires once per run (`claims`: the
    run's storage; None, as in unit tests, fires without claiming).
    """

    def __init__(self, plan: tuple[CrashAt, ...], *, attempt: int, steps: tuple[str, ...] = (),
                 subtask: int | None = None, coordinator: bool = False,
                 claims: Storage | None = None, run_id: str = ""):
        points = COORDINATOR_POINTS if coordinator else SUBTASK_POINTS
        crashes = [(n, c) for n, c in enumerate(plan) if isinstance(c, CrashAt)]
        self._plan = [(n, c) for n, c in crashes if c.point in points and c.attempt <= attempt
                      and (coordinator or ((c.step is None or c.step in steps)
                                           and (c.subtask is None or c.subtask == subtask)))]
        self._where = "coordinator" if coordinator else f"{'+'.join(steps)}[{subtask}]"
        self._claims = claims
        self._run_id = run_id

    def __bool__(self) -> bool:
        return bool(self._plan)

    def hit(self, point: str, checkpoint: int) -> None:
        for n, c in list(self._plan):
            if c.point != point or checkpoint < c.checkpoint:
                continue
            if self._claims is not None and not self._claims.put_if_absent(
                    f"{self._run_id}/faults/{n:04d}", f"{self._where} {point} {checkpoint}".encode()):
                self._plan.remove((n, c))  # fired already, in this or an earlier attempt
                continue
            logger.warning("fault injection: %s exits at %s (checkpoint %d)", self._where, point, checkpoint)
            os._exit(EXIT_CODE)


def install_s3_faults(plan: tuple) -> None:
    """Make this process's S3 clients misbehave as the plan's S3Faults says (if any)."""
    faults = next((f for f in plan if isinstance(f, S3Faults)), None)
    if faults is not None:
        _files.set_client_hook(_S3Hooks(faults).register)


class _S3Hooks:
    def __init__(self, faults: S3Faults):
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
            raise ConnectionClosedError(endpoint_url="injected: the response to a manifest PUT was lost")


def _error_response(url: str, status: int, code: str):
    body = f"<Error><Code>{code}</Code><Message>injected by raystream.testing.faults</Message></Error>".encode()

    class _Raw:
        def stream(self, **_):
            yield body

    return AWSResponse(url, status, {}, _Raw())
