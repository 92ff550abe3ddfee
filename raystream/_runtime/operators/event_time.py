"""`AssignTimeOp`: the operator that stamps each record with `timestamp_fn(record)` and
feeds the watermark generator (time/watermarks.py; docs/event_time.md)."""
from __future__ import annotations

from typing import Any

from raystream._runtime.operators.base import Operator
from raystream._runtime.time.watermarks import WatermarkGenerator
from raystream._runtime.transport.batch import Timed, as_records, untimed
from raystream.event_time import EventTime, to_millis
from raystream.graph import Step, StepKind


class AssignTimeOp(Operator):
    """Stamps records with their event time and feeds the generator. At a source it runs
    before the chain (with `partition` set per batch); as a step it is part of the chain.
    Its generator's newest times go into checkpoints with the source offsets; `carried`
    holds those of partitions that are gone now, kept for when they return."""

    def __init__(self, step: Step, event_time: EventTime, generator: WatermarkGenerator):
        super().__init__(step)
        self.fn = event_time.timestamp_fn
        self.generator = generator
        self.at_source = step.kind is StepKind.SOURCE
        self.partition = ""  # at a source: the partition of the batch being stamped
        self.carried: dict[str, int] = {}

    def event_times(self) -> dict[str, int]:
        return {**self.carried, **self.generator.snapshot()}

    def process(self, batch: Any) -> Any:
        batch, _ = untimed(batch)  # new times replace any the records had
        records = as_records(batch)
        self.records_in += len(records)
        fn = self.fn
        try:
            times = [to_millis(fn(r)) for r in records]
        except Exception:
            records, times = self._stamp_one_by_one(records)
        self.generator.observe(self.partition, times)
        self.records_out += len(records)
        return Timed(records, times)

    def _stamp_one_by_one(self, records: list[Any]) -> tuple[list[Any], list[int]]:
        kept, times = [], []
        for record in records:
            try:
                t = to_millis(self.fn(record))
            except Exception as exc:
                self.failed(record, exc)
                continue
            kept.append(record)
            times.append(t)
        return kept, times
