"""Deduplication: what a `dedup` step runs (`KeyedStream.dedup`, docs/guide/dedup.md).

A dedup step is a `process` step with these two functions: the first record of a key
passes and opens the key's state (the time it was seen) with a timer `within` later;
records of the key while that state lives are dropped; the timer deletes the state, so
the step keeps one entry per key seen within the last `within`, and no more. State and
timers are the process step's: keyed, checkpointed, incremental and rescaled like any.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from raystream.errors import JobDefinitionError
from raystream.process import ProcessContext
from raystream.ttl import EVENT, PROCESSING, lifetime_ms


@dataclass(frozen=True)
class Dedup:
    """`on_record` of a dedup step: passes a key's first record, drops the rest while
    its state lives (`within` milliseconds by `clock`, event or processing time)."""

    within_ms: int
    clock: str

    @classmethod
    def of(cls, step_id: str, within: Any, time: str) -> "Dedup":
        if time not in (EVENT, PROCESSING):
            raise JobDefinitionError(f"step {step_id!r}: dedup time must be 'event' or 'processing'; got {time!r}")
        return cls(lifetime_ms(within, f"step {step_id!r}: dedup within"), time)

    def __call__(self, ctx: ProcessContext, value: Any) -> None:
        if ctx.state is not None:
            return  # a duplicate within `within` of the key's first record
        # timers in seconds, never through datetimes: an event time may lie past year 9999
        if self.clock == EVENT:
            seen = ctx.millis
            ctx.set_event_timer((seen + self.within_ms) / 1000)
        else:
            seen = time.time_ns() // 1_000_000
            ctx.set_processing_timer((seen + self.within_ms) / 1000)
        ctx.state = seen
        ctx.emit(value)


def expire(ctx: ProcessContext, _when: Any) -> None:
    """`on_timer` of a dedup step: the key's window is over; its next record passes."""
    ctx.state = None
