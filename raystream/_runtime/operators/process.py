"""The `process` step: user code with keyed state and timers (docs/event_time.md), and
the `Collector` of one call's outputs that windows use too."""
from __future__ import annotations

from typing import Any

from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.time.expiry import DropsTTL
from raystream._runtime.time.timers import TimerQueue, now_ms
from raystream._runtime.time.watermarks import MIN_TIME
from raystream._runtime.transport.batch import KeyedBatch, timed
from raystream.graph import Step
from raystream.process import KeyState, ProcessContext


class Collector:
    """Outputs of one call, with their times when the stream has event time."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.times: list[int] = []

    def add(self, key: Any, value: Any, t: int) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.times.append(t)

    def batch(self, with_times: bool) -> Any:
        if not self.keys:
            return []
        return timed(KeyedBatch(self.keys, self.values), self.times if with_times else None)


EVENT, PROCESSING = "event", "processing"


class ProcessOp(DropsTTL, KeyedOp):
    """`on_record(ctx, value)` per record and `on_timer(ctx, when)` per due timer; both
    emit with `ctx.emit(output)`, which becomes `(key, output)`. State per key is a
    `KeyState`: the user's value and the key's timers."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.on_timer = step.on_timer
        self.watermark = MIN_TIME
        self.timed = True  # whether outputs carry times; set from the first batch
        self.event_timers = TimerQueue()
        self.processing_timers = TimerQueue()

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)
        self.watermark = MIN_TIME if watermark is None else watermark
        for key, ks in state.items():
            for t in ks.event_timers:
                self.event_timers.push(t, key)
            for t in ks.processing_timers:
                self.processing_timers.push(t, key)


    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        self.timed = times is not None
        out = Collector()
        fn = self.fn
        for i, (key, value) in enumerate(zip(keys, values)):
            t = times[i] if times is not None else None
            ctx = ProcessContext(self, key, self.state.get(key), t, None, out)
            try:
                fn(ctx, value)
            except Exception as exc:
                self._bad.append(i)
                ctx.discard()
                self.failed((key, value), exc)
                continue
            ctx.close()
        return out.batch(self.timed)

    def register(self, key: Any, t: int, clock: str) -> None:
        (self.event_timers if clock == EVENT else self.processing_timers).push(t, key)

    def _fire(self, queue: TimerQueue, now: int, clock: str) -> Any:
        out = Collector()
        for t, key, _ in queue.pop_due(now):
            self.changed.add(key)  # I1: a timer changes its key's state
            ks = self.state.get(key)
            timers = None if ks is None else (ks.event_timers if clock == EVENT else ks.processing_timers)
            if not timers or t not in timers:
                continue  # deleted, or fired already
            timers.discard(t)
            ctx, when = self._timer_context(key, ks, t, clock, out)
            if self.on_timer is not None:
                try:
                    self.on_timer(ctx, ctx.timestamp)
                except Exception as exc:
                    ctx.discard()
                    self.failed((key, f"<{clock} timer at {t}>"), exc)
            ctx.close()
            if ks.empty():
                self.state.pop(key, None)
            else:
                self._timer_ran(key, ctx, when)
        self.records_out += len(out.keys)
        return out.batch(self.timed)

    def _timer_context(self, key: Any, ks: KeyState, t: int, clock: str, out: Collector) -> tuple[ProcessContext, Any]:
        """The context `on_timer` runs in for the timer at `t`, and what `_timer_ran` needs."""
        # outputs of an event timer happen at its time; of a processing timer, at the watermark
        return ProcessContext(self, key, ks, t, clock, out, out_time=t if clock == EVENT else self.watermark), None

    def _timer_ran(self, key: Any, ctx: ProcessContext, when: Any) -> None:
        """After `on_timer` ran for a key that keeps state (a TTL records its write here)."""

    def on_watermark(self, watermark: int) -> Any:
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        return self._fire(self.event_timers, watermark, EVENT)

    def on_time(self, now: int) -> Any:
        return self._fire(self.processing_timers, now, PROCESSING)

    def next_timer(self) -> int | None:
        return self.processing_timers.next_time()


class DedupOp(ProcessOp):
    """A `dedup` step (raystream/dedup.py), without a ProcessContext per record: a key's
    first record passes and its entry `KeyState(first seen ms, timer)` opens, the same
    state a process step running `Dedup` keeps (so savepoints and rescaling treat it as
    one); later records of the key pass nothing; the timer deletes the entry."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.within_ms = step.fn.within_ms
        self.clock = step.fn.clock

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        self.timed = times is not None
        event = self.clock == EVENT
        if event and times is None:  # job.py refuses such a job before it starts
            raise RecordFailure(self.step_id, "<batch>", ValueError("dedup by event time got records without one"))
        now = None if event else now_ms()
        state, out = self.state, Collector()
        for i, key in enumerate(keys):
            if key in state:
                continue  # a duplicate within `within` of the key's first record
            seen = times[i] if event else now
            expiry = seen + self.within_ms
            state[key] = KeyState(seen, {expiry}, None) if event else KeyState(seen, None, {expiry})
            self.register(key, expiry, self.clock)
            out.add(key, values[i], times[i] if times is not None else 0)
        return out.batch(self.timed)

    def _fire(self, queue: TimerQueue, now: int, clock: str) -> Any:
        for t, key, _ in queue.pop_due(now):
            ks = self.state.get(key)
            if ks is not None and t in (ks.event_timers if clock == EVENT else ks.processing_timers):
                del self.state[key]  # expired: the key's next record passes
                self.changed.add(key)  # I1
        return []
