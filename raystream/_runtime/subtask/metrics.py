"""A subtask's metrics series, exported through `ray.util.metrics` when the coordinator
polls the subtask and when it ends, as deltas of counters the subtask keeps anyway
(nothing runs per record). The series and what they mean: raystream/_runtime/control/metrics.py.
A metric that cannot be exported is logged at debug level and never fails the job.
"""
from __future__ import annotations

import logging
from typing import Any

from ray.util import metrics as ray_metrics

from raystream._runtime.plan.specs import SubtaskReport

logger = logging.getLogger(__name__)

_STEP_TAGS = ("job", "step", "subtask")
_CHAIN_TAGS = ("job", "chain", "subtask")


class SubtaskExporter:
    """The series of one subtask, created in its process on the first export."""

    def __init__(self, job: str, chain: str, subtask: int):
        self.job, self.chain, self.subtask = job, chain, str(subtask)
        self._series: dict[str, Any] | None = None
        self._sent: dict[str, tuple[int, int]] = {}
        self._blocked = 0.0
        self._late: dict[str, int] = {}

    def _make(self) -> dict[str, Any]:
        return {
            "in": ray_metrics.Counter("raystream_records_in", "Records into a step.", _STEP_TAGS),
            "out": ray_metrics.Counter("raystream_records_out", "Records out of a step.", _STEP_TAGS),
            "blocked": ray_metrics.Counter("raystream_backpressure_seconds",
                                           "Seconds a subtask waited on slower receivers.", _CHAIN_TAGS),
            "keys": ray_metrics.Gauge("raystream_state_keys", "Keys of a keyed step's state.", _STEP_TAGS),
            "bytes": ray_metrics.Gauge("raystream_snapshot_bytes", "Size of the newest snapshot.", _CHAIN_TAGS),
            "alignment": ray_metrics.Gauge("raystream_alignment_seconds",
                                           "Barrier alignment of the newest checkpoint.", _CHAIN_TAGS),
            "late": ray_metrics.Counter("raystream_late_records", "Records too late for their window.",
                                        _STEP_TAGS),
        }

    def export(self, report: SubtaskReport) -> None:
        try:
            if self._series is None:
                self._series = self._make()
            s = self._series
            chain_tags = {"job": self.job, "chain": self.chain, "subtask": self.subtask}
            for step_id, (n_in, n_out) in report.steps.items():
                tags = {"job": self.job, "step": step_id, "subtask": self.subtask}
                sent_in, sent_out = self._sent.get(step_id, (0, 0))
                if n_in > sent_in:
                    s["in"].inc(n_in - sent_in, tags)
                if n_out > sent_out:
                    s["out"].inc(n_out - sent_out, tags)
                self._sent[step_id] = (max(n_in, sent_in), max(n_out, sent_out))
            for step_id, n in report.late.items():
                tags = {"job": self.job, "step": step_id, "subtask": self.subtask}
                sent = self._late.get(step_id, 0)
                if n > sent:
                    s["late"].inc(n - sent, tags)
                    self._late[step_id] = n
            for step_id, keys in report.state_keys.items():
                s["keys"].set(keys, {"job": self.job, "step": step_id, "subtask": self.subtask})
            if report.backpressure > self._blocked:
                s["blocked"].inc(report.backpressure - self._blocked, chain_tags)
                self._blocked = report.backpressure
            s["bytes"].set(report.snapshot_bytes, chain_tags)
            s["alignment"].set(report.alignment, chain_tags)
        except Exception:  # metrics must never fail a job
            logger.debug("exporting subtask metrics failed", exc_info=True)
