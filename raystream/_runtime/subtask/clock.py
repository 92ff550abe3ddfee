"""The clocks of one subtask's chain: how watermarks and timers reach its operators and
what goes downstream because of them. `ChainClock` holds no Ray handle; the subtask
sends the messages it returns.

Watermarks (docs/event_time.md):
1. From the inputs: each channel's newest watermark is kept (`InputWatermarks`); when
   their minimum over the active channels advances (or, all of them idle, the greatest
   of theirs), every operator of the chain gets `on_watermark` in order, what fires goes
   through the rest of the chain, and the watermark goes downstream after those records.
2. From a generator (a source with event time, or an event-time step at `gen_index`):
   the operators before it still see the input watermarks, which stop there; those
   after it see the generator's, at most every `interval` seconds (and at once at the
   end of the input). An idle generator sends IDLE, after the greatest of its idle
   partitions' watermarks if that was not sent yet; its next watermark makes it active.
3. The end of a bounded input (not a stop) is the end of time: MAX_TIME fires every
   window and timer before the final barrier, so their results are in the last
   checkpoint. An input channel that ended counts as MAX_TIME for the minimum.
4. Processing time: an operator's `next_timer` says when the wall clock fires it.
"""
from __future__ import annotations

import time
from typing import Any

from raystream._runtime.transport.batch import batch_len
from raystream._runtime.transport.channel import BATCH, WATERMARK
from raystream._runtime.operators.base import Operator, run_chain
from raystream._runtime.time.timers import now_ms
from raystream._runtime.time.watermarks import IDLE, MAX_TIME, MIN_TIME, InputWatermarks, WatermarkGenerator

Message = tuple[int, Any]  # (BATCH, batch) or (WATERMARK, mark or IDLE)


class ChainClock:
    def __init__(self, ops: list[Operator], n_inputs: int, generator: WatermarkGenerator | None,
                 gen_index: int | None, interval: float):
        self.ops = ops
        self.inputs = InputWatermarks(n_inputs) if n_inputs else None
        self.generator = generator
        self.gen_index = gen_index
        self.interval = interval
        self.sent = MIN_TIME  # the newest watermark sent downstream
        self._inputs_applied = MIN_TIME  # with a generator: the newest input watermark its operators before it saw
        self.sent_idle = False
        self._due = 0.0  # monotonic time before which the generator does not send again
        self.ended = False  # MAX_TIME has been reached

    @property
    def watermark(self) -> int | None:
        if self.sent > MIN_TIME:
            return self.sent
        return self.inputs.current if self.inputs is not None and self.inputs.current > MIN_TIME else None

    # --- watermarks from the inputs -------------------------------------------------------

    def on_input(self, channel: int, mark: int | None) -> list[Message]:
        was_idle = self.inputs.is_idle
        out = self._from_inputs(self.inputs.on_watermark(channel, mark))
        if was_idle and not self.inputs.is_idle and self.sent_idle and self.gen_index is None and not out:
            # an input is active again below the watermark sent (all idle raised it to the
            # greatest): say so, as a generator does, or downstream goes on without this
            # subtask and its records come late (review of stop 36)
            self.sent_idle = False
            out = [(WATERMARK, self.sent)]
        return out

    def on_input_end(self, channel: int) -> None:
        """An ended channel holds nothing back; its end does not fire anything by itself
        (a bounded input sent MAX_TIME before its end; a stopped one must not fire)."""
        self.inputs.on_end(channel)

    def _from_inputs(self, result: int | None | bool) -> list[Message]:
        if result is False:
            return []
        if result is IDLE:  # every input idle: the greatest of their watermarks first (InputWatermarks)
            mark = self.inputs.current
            if self.gen_index is None:
                return (self._advance(mark, 0, forward=True) if mark > self.sent else []) + self._idle()
            if mark <= self._inputs_applied:
                return []
            result = mark
        if self.gen_index is None:
            return self._advance(result, 0, forward=True)
        self._inputs_applied = result
        out = self._advance(result, 0, forward=False, hi=self.gen_index)
        if result == MAX_TIME:  # the end of the input passes through the generator
            out += self.end_of_input()
        return out

    # --- watermarks from the generator ----------------------------------------------------

    def tick(self, force: bool = False) -> list[Message]:
        """After a batch, or when the deadline came: send the generator's watermark if due."""
        if self.generator is None or self.ended:
            return []
        now = time.monotonic()
        if not force and now < self._due:
            return []
        mark = self.generator.watermark(now)
        if mark is IDLE:  # 2: the greatest of the idle partitions' watermarks goes first
            last = self.generator.watermark_when_idle()
            out = self._advance(last, self.gen_index + 1, forward=True) if last > self.sent else []
            return out + self._idle()
        if mark <= self.sent:
            if not self.sent_idle:
                return []
            self.sent_idle = False
            return [(WATERMARK, self.sent)]  # active again
        self._due = now + self.interval
        return self._advance(mark, self.gen_index + 1, forward=True)

    def end_of_input(self) -> list[Message]:
        """3: a bounded input ended: MAX_TIME through the chain (after the generator, if any)."""
        if self.ended:
            return []
        if self.generator is not None:
            self.generator.end_all()
            return self.tick(force=True)
        return self._advance(MAX_TIME, 0, forward=True)

    def _idle(self) -> list[Message]:
        if self.sent_idle:
            return []
        self.sent_idle = True
        return [(WATERMARK, IDLE)]

    def _advance(self, mark: int, lo: int, *, forward: bool, hi: int | None = None) -> list[Message]:
        out: list[Message] = []
        ops = self.ops
        hi = len(ops) if hi is None else hi
        for i in range(lo, hi):
            fired = ops[i].on_watermark(mark)
            if mark == MAX_TIME:  # the end of time fires processing-time timers too
                fired_too = ops[i].on_time(MAX_TIME)
                if batch_len(fired_too):
                    self._through(out, i, fired_too)
            if batch_len(fired):
                self._through(out, i, fired)
        if forward:
            if mark == MAX_TIME:
                self.ended = True
            if mark > self.sent or self.sent_idle:
                self.sent = max(mark, self.sent)
                self.sent_idle = False
                out.append((WATERMARK, self.sent))
        return out

    def _through(self, out: list[Message], i: int, batch: Any) -> None:
        batch = run_chain(self.ops[i + 1:], batch)
        if batch_len(batch):
            out.append((BATCH, batch))

    # --- processing time ------------------------------------------------------------------

    def on_time(self) -> list[Message]:
        out: list[Message] = []
        now = now_ms()
        for i, op in enumerate(self.ops):
            t = op.next_timer()
            if t is not None and t <= now:
                fired = op.on_time(now)
                if batch_len(fired):
                    self._through(out, i, fired)
        return out

    def next_deadline(self) -> float | None:
        """When (monotonic) the subtask must wake up for this clock; None: only for input."""
        deadlines = []
        now = time.monotonic()
        if self.generator is not None and not self.ended:
            mark = self.generator.watermark(now)
            if (mark is IDLE) != self.sent_idle or (mark is not IDLE and mark > self.sent):
                deadlines.append(self._due)
            idle = self.generator.idle_deadline()
            if idle is not None:
                deadlines.append(idle)
        wall = now_ms()
        for op in self.ops:
            t = op.next_timer()
            if t is not None:
                deadlines.append(now + (t - wall) / 1000)
        return min(deadlines) if deadlines else None
