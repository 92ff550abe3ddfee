"""Metrics per step and subtask: exported through `ray.util.metrics`, so the Ray
dashboard's metrics view and Prometheus see them, and kept by the coordinator for
`handle.metrics()`.

A subtask exports (subtask/metrics.py) when the coordinator polls it (every half second) and when it ends,
as deltas of counters it keeps anyway, so nothing runs per record. The coordinator
exports the job's figures. Series (Prometheus shows them with Ray's `ray_` prefix):

    raystream_records_in, raystream_records_out       counters   job, step, subtask
    raystream_backpressure_seconds                    counter    job, chain, subtask
    raystream_state_keys                              gauge      job, step, subtask
    raystream_late_records                            counter     job, step, subtask
    raystream_snapshot_bytes, raystream_alignment_seconds
                                                      gauges     job, chain, subtask
    raystream_checkpoint_duration_seconds, raystream_checkpoints_completed,
    raystream_checkpoints_failed, raystream_restarts, raystream_records_replayed
                                                      gauges     job

A metric that cannot be exported is logged at debug level and never fails the job.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ray.util import metrics as ray_metrics

from raystream._runtime.plan.specs import SubtaskReport
from raystream.result import CheckpointStats

logger = logging.getLogger(__name__)

_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999  # datetimes of years 1 to 9999: a watermark


class JobExporter:
    """The job-wide series, exported by the coordinator."""

    def __init__(self, job: str):
        self.tags = {"job": job}
        self._series: dict[str, Any] | None = None

    def export(self, stats: CheckpointStats, restarts: int, replayed: int) -> None:
        try:
            if self._series is None:
                gauge = ray_metrics.Gauge
                self._series = {name: gauge(f"raystream_{name}", text, ("job",)) for name, text in (
                    ("checkpoint_duration_seconds", "Duration of the newest complete checkpoint."),
                    ("checkpoints_completed", "Checkpoints completed."),
                    ("checkpoints_failed", "Checkpoints that failed."),
                    ("restarts", "Restarts after failures."),
                    ("records_replayed", "Records read again after restores."))}
            s = self._series
            s["checkpoint_duration_seconds"].set(stats.last_duration, self.tags)
            s["checkpoints_completed"].set(stats.completed, self.tags)
            s["checkpoints_failed"].set(stats.failed, self.tags)
            s["restarts"].set(restarts, self.tags)
            s["records_replayed"].set(replayed, self.tags)
        except Exception:
            logger.debug("exporting job metrics failed", exc_info=True)


@dataclass
class _Seen:
    at: float
    records_in: int
    records_out: int
    in_per_s: float = 0.0
    out_per_s: float = 0.0


class MetricsTable:
    """The rows of `handle.metrics()`: one per step and subtask, with rates over the
    last two polls."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._reports: dict[tuple[str, int], SubtaskReport] = {}

    def update(self, report: SubtaskReport, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._reports[(report.chain_name, report.subtask)] = report
        for step_id, (n_in, n_out) in report.steps.items():
            key = (step_id, report.subtask)
            last = self._seen.get(key)
            seen = _Seen(now, n_in, n_out)
            if last is not None and now > last.at:
                dt = now - last.at
                seen.in_per_s = max(0.0, (n_in - last.records_in) / dt)
                seen.out_per_s = max(0.0, (n_out - last.records_out) / dt)
            self._seen[key] = seen

    def forget(self) -> None:
        """A new attempt: its subtasks start new reports (counters continue from the restore)."""
        self._reports.clear()

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for (chain, subtask), report in sorted(self._reports.items()):
            for step_id, (n_in, n_out) in report.steps.items():
                seen = self._seen.get((step_id, subtask))
                rows.append({
                    "step": step_id, "subtask": subtask, "chain": chain,
                    "records_in": n_in, "records_out": n_out,
                    "in_per_s": seen.in_per_s if seen else 0.0, "out_per_s": seen.out_per_s if seen else 0.0,
                    "backpressure_s": report.backpressure, "state_keys": report.state_keys.get(step_id, 0),
                    "snapshot_bytes": report.snapshot_bytes, "alignment_s": report.alignment,
                    "late_records": report.late.get(step_id, 0),
                    "watermark": report.watermark if report.watermark is not None and
                    _MIN_MS <= report.watermark <= _MAX_MS else None,
                })
        return rows
