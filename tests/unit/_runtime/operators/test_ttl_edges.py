"""State time-to-live without Ray, at its edges (raystream/_runtime/operators/ttl.py,
time/expiry.py): a read never removes a value; one pending cleanup timer per key however
often it is deleted and written again; the end of a bounded input expires every key,
whatever timers write then; a processing-time timer's write under an event-time TTL."""
from __future__ import annotations

from typing import Any

import raystream as rs
from raystream._runtime.operators import ttl as ttl_ops
from raystream.graph import Step, StepKind
from tests.unit._runtime.operators.test_ttl import TTL_MS, TTL_S, changelog_after_full, feed


def process_op(on_record: Any, on_timer: Any = None, ttl: Any = TTL_S, clock: str = "event") -> Any:
    step = Step("p", StepKind.PROCESS, ("k",), fn=on_record, on_timer=on_timer, ttl=rs.TTL(ttl, time=clock))
    return ttl_ops.TtlProcessOp(step)


# --- a read changes nothing -----------------------------------------------------------

def read_or_write(ctx: rs.ProcessContext, value: str) -> None:
    if value == "boom":
        ctx.state  # noqa: B018 - read, then fail
        raise ValueError("boom")
    if value == "w":
        ctx.state = "v"
    ctx.emit(ctx.state)


def test_a_process_read_of_an_expired_key_leaves_it_for_earlier_records():
    errors = []
    op = process_op(read_or_write)
    op.on_error = lambda step_id, record, exc: errors.append(record)
    feed(op, [("a", "w", 1_000)])  # there for reads before 6 s
    assert feed(op, [("a", "r", 10_000)]) == [("a", None)]  # expired for a read at 10 s
    assert feed(op, [("a", "boom", 10_000)]) == [] and errors == [("a", "boom")]
    # no watermark yet: a record at 2 s is not late, and reads the key's newest write
    assert feed(op, [("a", "r", 2_000)]) == [("a", "v")]
    assert op.state["a"].value == "v" and op.state["a"].touched == 1_000
    # the timer removes it, and the next incremental snapshot holds the deletion
    log = changelog_after_full(op)
    op.on_watermark(5_999)
    assert "a" in op.state
    op.on_watermark(6_000)
    assert op.state == {}
    keyed, changes, _ = log.capture([op])
    assert changes and list(keyed[op.step_id][1]) == ["a"]
