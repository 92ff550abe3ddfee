"""Keyed steps with a state time-to-live (raystream/ttl.py, docs/guide/ttl.md): `reduce`,
`stateful_map` and `process`, each keeping when every key was last written and removing
the keys not written within the TTL by timers (time/expiry.py).

A removal is a change to the key like a write (I1, changelog.py): `reduce` and
`stateful_map` write DELETED for it, `process` marks the key changed, so the next
incremental snapshot holds the deletion. Until its timer fires, an expired key reads as
absent: the step's function sees it as never written. A read removes nothing (a record of
an earlier time, not late, still reads the value): only the timer does, or a write.

The TTL's time of a write or read (`when`): by event time the record's time (of an event
timer, its time; of a processing timer, the newest event time of its key: the latest of
the watermark, its newest write and its calls since it had processing timers,
`KeyState.seen`), by processing time the wall clock.
A late record (behind the watermark) reads as at the watermark: absent once the watermark
passed the key's time plus the TTL, whether or not its timer removed it yet (a removal
may lag: time/expiry.py), so what it reads does not depend on the cleanup's timing.
"""
from __future__ import annotations

from typing import Any

from raystream._runtime.operators.base import KeyedOp
from raystream._runtime.operators.plain import ReduceOp, StatefulMapOp, _without
from raystream._runtime.operators.process import EVENT, Collector, ProcessOp
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.state.changelog import DELETED
from raystream._runtime.time.expiry import Expiring, Expiry, other_clock
from raystream._runtime.time.timers import now_ms
from raystream._runtime.time.watermarks import MAX_TIME, MIN_TIME
from raystream._runtime.transport.batch import KeyedBatch, timed
from raystream.graph import Step, StepKind
from raystream.process import ProcessContext



class _Expiring:
    """What the three TTL steps share (a mixin before their step's operator): the
    Expiry, its clock's times, restore, and removal by the timers."""

    expiry: Expiry
    _retouch = False

    def _setup(self, step: Step) -> None:
        self.expiry = Expiry(step.ttl)
        if self.expiry.event:
            self.watermark = MIN_TIME  # kept in snapshots: after a restore, an old watermark fires nothing again

    def _floor(self, now: int | None) -> int:
        """The earliest time a record reads at: the watermark by event time (`now` None)."""
        return self.watermark if now is None else MIN_TIME

    def _now(self, times: list[int] | None) -> int | None:
        """The wall clock for a batch by processing time; None by event time (the records' times)."""
        if not self.expiry.event:
            return now_ms()
        if times is None:  # job.py refuses such a job before it starts
            raise RecordFailure(self.step_id, "<batch>", ValueError("a TTL by event time got records without one"))
        return None

    def state_meta(self) -> Any:
        return self.expiry.meta()

    def restore_meta(self, metas: list[Any]) -> None:
        KeyedOp.restore_meta(self, metas)  # type: ignore[arg-type]
        self._retouch = other_clock(metas, self.expiry.clock)

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)  # type: ignore[misc]
        if self.expiry.event:
            self.watermark = MIN_TIME if watermark is None else watermark
        self._wrap(state)
        self._fresh(self.expiry.restored(state, self._retouch))

    def _wrap(self, state: dict[Any, Any]) -> None:
        """Values restored from the step without a TTL become entries without a time."""

    def _fresh(self, keys: list[Any]) -> None:
        """Keys whose time was set now: in the next snapshot."""
        if self.written is not None:
            for key in keys:
                self.written[key] = self.state[key]
        else:
            self.changed.update(keys)

    def _remove(self, key: Any, entry: Any) -> None:
        """The key's value expired."""
        del self.state[key]
        self.written[key] = DELETED
        self.deletes += 1

    def _expire(self, now: int) -> None:
        for key, entry in self.expiry.due(self.state, now):
            self._remove(key, entry)

    def _end(self) -> None:
        """The end of a bounded input (MAX_TIME, docs/guide/ttl.md): after the timers that
        fire at it, every value is removed, whatever its time (a write at the end, or a
        record's time within a TTL of MAX_TIME, lives past it otherwise)."""
        for key, entry in list(self.state.items()):
            if isinstance(entry, Expiring) or entry.value is not None:
                self._remove(key, entry)
        self.expiry.clear()

    def on_watermark(self, watermark: int) -> Any:
        if not self.expiry.event or watermark <= self.watermark:
            out = super().on_watermark(watermark)  # type: ignore[misc]
        else:
            out = super().on_watermark(watermark)  # type: ignore[misc]
            self.watermark = watermark
            if self.expiry.pending:
                self._fresh(self.expiry.first_watermark(self.state, watermark))
            self._expire(watermark)
        if watermark == MAX_TIME:
            self._end()
        return out

    def on_time(self, now: int) -> Any:
        out = super().on_time(now)  # type: ignore[misc]
        if now == MAX_TIME:  # the end of input, after on_watermark(MAX_TIME): processing timers wrote since
            self._end()
        elif not self.expiry.event:
            self._expire(now)
        return out

    def next_timer(self) -> int | None:
        mine, theirs = self.expiry.next_time(), super().next_timer()  # type: ignore[misc]
        return theirs if mine is None else mine if theirs is None else min(mine, theirs)


class TtlReduceOp(_Expiring, ReduceOp):
    """`reduce` with a TTL: an expired key's next record starts a new acc."""

    def __init__(self, step: Step):
        super().__init__(step)
        self._setup(step)

    def _wrap(self, state: dict[Any, Any]) -> None:
        for key, value in state.items():
            if not isinstance(value, Expiring):
                state[key] = Expiring(value, None)

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        now = self._now(times)
        expiry, fn, state, written = self.expiry, self.fn, self.state, self.written
        every = not self.emit_last
        floor = self._floor(now)
        ms, armed = expiry.ms, expiry.armed  # Expiry.live and .touch, inlined: this runs per record
        out: list[Any] = []
        for i, (key, value) in enumerate(zip(keys, values)):
            when = times[i] if now is None else now
            if when < floor:  # a late record reads and writes as at the watermark
                when = floor
            entry = state.get(key)
            try:
                if entry is None:
                    acc = value
                else:
                    touched = entry.touched
                    live = touched is None or when < touched + ms
                    acc = fn(entry.value, value) if live else value
            except Exception as exc:
                self._bad.append(i)
                self.failed((key, value), exc)
                continue
            if entry is None:
                entry = state[key] = Expiring(acc, when)
            else:
                entry.value = acc
                if entry.touched is None or when > entry.touched:
                    entry.touched = when
            if key not in armed:
                expiry.arm(key, entry.touched)
            written[key] = entry  # I1; pickled as it is at the snapshot, which is taken at once
            if every:
                out.append(acc)
        if self._bad:
            keys, times = _without(keys, self._bad), self._kept_times(times)
        if not every:
            keys, out, times = self._last(keys, times)
        return timed(KeyedBatch(keys, out), times)

    def _last(self, keys: list[Any], times: list[int] | None) -> tuple[list[Any], list[Any], list[int] | None]:
        """emit="last": each key's newest acc, in the order of the keys' last records."""
        last = list(dict.fromkeys(reversed(keys)))[::-1]
        state = self.state
        out = [state[k].value for k in last]
        if times is not None:
            times = list(map(dict(zip(keys, times)).__getitem__, last))
        return last, out, times


class TtlStatefulMapOp(_Expiring, StatefulMapOp):
    """`stateful_map` with a TTL: `fn` gets None for an expired key."""

    def __init__(self, step: Step):
        super().__init__(step)
        self._setup(step)

    _wrap = TtlReduceOp._wrap

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        now = self._now(times)
        expiry, fn, state, written = self.expiry, self.fn, self.state, self.written
        floor = self._floor(now)
        ms, armed = expiry.ms, expiry.armed  # Expiry.live and .touch, inlined: this runs per record
        out: list[Any] = []
        out_keys: list[Any] = []
        for i, (key, value) in enumerate(zip(keys, values)):
            when = times[i] if now is None else now
            if when < floor:  # a late record reads and writes as at the watermark
                when = floor
            entry = state.get(key)
            try:
                if entry is None:
                    new_state, output = fn(None, value)
                else:
                    touched = entry.touched
                    live = touched is None or when < touched + ms
                    new_state, output = fn(entry.value if live else None, value)
            except Exception as exc:
                self._bad.append(i)
                self.failed((key, value), exc)
                continue
            if new_state is None:
                state.pop(key, None)
                written[key] = DELETED
                self.deletes += 1
            else:
                if entry is None:
                    entry = state[key] = Expiring(new_state, when)
                else:
                    entry.value = new_state
                    if entry.touched is None or when > entry.touched:
                        entry.touched = when
                if key not in armed:
                    expiry.arm(key, entry.touched)
                written[key] = entry
            out_keys.append(key)
            out.append(output)
        return timed(KeyedBatch(out_keys, out), self._kept_times(times))


class TtlProcessOp(_Expiring, ProcessOp):
    """`process` with a TTL on `ctx.state`: a key's value not assigned within the TTL is
    removed and reads as None; its timers stay and fire."""

    def __init__(self, step: Step):
        super().__init__(step)
        self._setup(step)

    def _remove(self, key: Any, ks: Any) -> None:
        ks.value = ks.touched = None
        self.changed.add(key)  # I1
        if ks.empty():
            del self.state[key]

    def _expired(self, ks: Any, when: int) -> bool:
        """Whether the key's value reads as None for a call at `when`. A read changes
        nothing: the value stays until a write replaces it or its timer removes it, so a
        record of an earlier time (not late) still reads it."""
        return ks is not None and ks.touched is not None and not self.expiry.live(ks, when)

    def _wrote(self, key: Any, when: int) -> None:
        ks = self.state.get(key)
        if ks is None:
            return
        if ks.value is None:  # deleted: its timer, if any, finds nothing to remove
            ks.touched = None
        elif when == MIN_TIME:  # event time, and no record or watermark yet (after a restore)
            ks.touched = None  # counts as written at the first watermark, as a restored key
            self.expiry.pending[key] = None
        else:
            self.expiry.touch(key, ks, when)

    def _apply_keyed(self, keys: list[Any], values: list[Any], times: list[int] | None) -> Any:
        now = self._now(times)
        self.timed = times is not None
        out = Collector()
        fn = self.fn
        floor = self._floor(now)
        for i, (key, value) in enumerate(zip(keys, values)):
            t = times[i] if times is not None else None
            when = t if now is None else now
            if when < floor:  # a late record reads and writes as at the watermark
                when = floor
            ks = self.state.get(key)
            ctx = ProcessContext(self, key, ks, t, None, out, expired=self._expired(ks, when))
            try:
                fn(ctx, value)
            except Exception as exc:
                self._bad.append(i)
                ctx.discard()
                self.failed((key, value), exc)
                continue
            ctx.close()
            if ctx.wrote_state():
                self._wrote(key, when)
            if now is None:
                self._saw(key, when)
        return out.batch(self.timed)

    def _key_time(self, ks: Any) -> int:
        """Event time: a processing-time timer's time for the TTL (docs/guide/ttl.md)."""
        return max(self.watermark, MIN_TIME if ks.seen is None else ks.seen,
                   MIN_TIME if ks.touched is None else ks.touched)

    def _saw(self, key: Any, when: int) -> None:
        """Event time: a call for the key at `when`. While the key has processing-time
        timers, its newest such time is kept (`seen`, in snapshots): a processing-time
        timer's write counts from the later of it and the watermark, since the watermark
        alone may lag the key's records by more than the TTL (before the first watermark
        it is MIN_TIME), which left such a write expired for the key's next records."""
        ks = self.state.get(key)
        if ks is None:
            return
        if not ks.processing_timers:
            ks.seen = None
        elif ks.seen is None or when > ks.seen:
            ks.seen = when

    def _timer_context(self, key: Any, ks: Any, t: int, clock: str, out: Collector) -> tuple[ProcessContext, int]:
        """ProcessOp's, with the value read as expired when the TTL says so at the timer's time."""
        if self.expiry.event:
            when = t if clock == EVENT else self._key_time(ks)
        else:
            when = now_ms()  # not the timers' `now`: MAX_TIME at the end of input, never a write's time
        ctx = ProcessContext(self, key, ks, t, clock, out, out_time=t if clock == EVENT else self.watermark,
                             expired=self._expired(ks, when))
        return ctx, when

    def _timer_ran(self, key: Any, ctx: ProcessContext, when: int) -> None:
        if ctx.wrote_state():
            self._wrote(key, when)
        if self.expiry.event:
            self._saw(key, when)


_TTL_OPERATORS: dict[StepKind, type[KeyedOp]] = {
    StepKind.REDUCE: TtlReduceOp,
    StepKind.STATEFUL_MAP: TtlStatefulMapOp,
    StepKind.PROCESS: TtlProcessOp,
}


def build_ttl_operator(step: Step) -> KeyedOp:
    """The operator of a step with a TTL (step.ttl)."""
    return _TTL_OPERATORS[step.kind](step)
