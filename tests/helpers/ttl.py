"""The TTL operator tests' steps, reference and clock (tests/unit/_runtime/operators/test_ttl*.py)."""
from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterator
from unittest import mock

import raystream as rs
from raystream._runtime.operators import ttl as ttl_ops
from raystream._runtime.operators.plain import ReduceOp, StatefulMapOp
from raystream._runtime.operators.process import ProcessOp
from raystream._runtime.state.changelog import StateChangelog
from raystream._runtime.state.snapshot import PartRef, encode
from raystream._runtime.time import expiry as expiry_mod
from raystream.graph import Step, StepKind

TTL_S = 5
TTL_MS = TTL_S * 1000
KINDS = ["reduce", "stateful_map", "process"]


# --- the steps' functions: each output shows what the step read ----------------------

def remember(state: Any, value: int) -> tuple[Any, Any]:
    """stateful_map: outputs the state it read; deletes on multiples of 5."""
    return (None if value % 5 == 0 else (state or 0) + value), state


def on_record(ctx: rs.ProcessContext, value: int) -> None:
    """process: outputs the state it read; on multiples of 7 only reads, of 5 deletes."""
    ctx.emit(ctx.state)
    if value % 7 == 0:
        return
    ctx.state = None if value % 5 == 0 else (ctx.state or 0) + value


def op_of(kind: str, ttl: Any = None, clock: str = "event", **step: Any) -> Any:
    fn = {"reduce": operator.add, "stateful_map": remember, "process": on_record}[kind]
    ttl = None if ttl is None else rs.TTL(ttl, time=clock)
    s = Step(kind, StepKind(kind), ("k",), fn=fn, ttl=ttl, **step)
    if ttl is not None:
        return ttl_ops.build_ttl_operator(s)
    return {"reduce": ReduceOp, "stateful_map": StatefulMapOp, "process": ProcessOp}[kind](s)


def values(op: Any) -> dict[Any, Any]:
    """The live values of the op's state (a process step's keys with only timers left out)."""
    out = {}
    for key, entry in op.state.items():
        v = getattr(entry, "value", entry)
        if v is not None or not hasattr(entry, "event_timers"):
            out[key] = v
    return out


@contextlib.contextmanager
def wall_clock(start: int) -> Iterator[list[int]]:
    """The wall clock of the TTL steps, set by the test: `clock[0]` ms."""
    clock = [start]
    with mock.patch.object(ttl_ops, "now_ms", lambda: clock[0]), \
            mock.patch.object(expiry_mod, "now_ms", lambda: clock[0]):
        yield clock


# --- the reference ------------------------------------------------------------------

class Reference:
    """A key's value is there for a read at `when` while when < its newest write's time
    plus the TTL; the clock (watermark, or wall clock) removes it once it reaches that,
    and nothing else does but a write. A late record reads and writes at the clock."""

    def __init__(self, kind: str, ttl_ms: int):
        self.kind, self.ttl_ms = kind, ttl_ms
        self.state: dict[Any, tuple[Any, int]] = {}  # key -> (value, newest write's time)
        self.now = -(2**63)

    def read(self, key: Any, when: int) -> Any:
        """A read changes nothing: an expired value stays (for records of earlier times)
        until a write replaces it or the clock removes it."""
        entry = self.state.get(key)
        return None if entry is None or max(when, self.now) >= entry[1] + self.ttl_ms else entry[0]

    def write(self, key: Any, value: Any, when: int) -> None:
        if value is None:
            self.state.pop(key, None)
            return
        old = self.state.get(key)
        self.state[key] = (value, when if old is None else max(old[1], when))

    def record(self, key: Any, value: int, when: int) -> Any:
        when = max(when, self.now)  # a late record reads and writes as at the clock
        current = self.read(key, when)
        if self.kind == "reduce":
            acc = value if current is None else current + value
            self.write(key, acc, when)
            return acc
        if self.kind == "process" and value % 7 == 0:
            return current
        self.write(key, None if value % 5 == 0 else (current or 0) + value, when)
        return current

    def clock(self, now: int) -> None:
        self.now = now
        self.state = {k: e for k, e in self.state.items() if e[1] + self.ttl_ms > now}

    def assert_held_by(self, op: Any, kind: str) -> None:
        """The op holds the reference's values; and maybe more keys whose time passed the
        clock: a key deleted and written again with an earlier time is removed by the
        pending timer of its earlier life (time/expiry.py), reading as absent until then."""
        held, expected = values(op), {k: v for k, (v, _) in self.state.items()}
        assert {k: held.get(k, "missing") for k in expected} == expected, kind
        for key in held.keys() - expected.keys():
            assert op.state[key].touched + self.ttl_ms <= self.now < op.expiry.armed[key], kind


def changelog_after_full(op: Any) -> StateChangelog:
    """A changelog whose next capture of `op` is incremental."""
    log = StateChangelog(incremental=True, base_every=100, compact_above=0)
    keyed, changes, _ = log.capture([op])
    assert not changes
    data, sha = encode(keyed)
    log.added(PartRef("base", sha, len(data), 1, True))
    return log
