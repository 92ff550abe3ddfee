"""The parts a subtask is made of, without Ray: its side of the checkpoint protocol
(SubtaskCheckpoints), its record policies and its source reader."""
import asyncio
import dataclasses

import pytest

import raystream as rs
from raystream._runtime.state.store import CheckpointStore
from raystream.testing.injector import Injector
from raystream._runtime.operators.plain import SinkOp, build_operator
from raystream._runtime.operators.base import run_chain
from raystream._runtime.subtask.record_policies import RecordPolicies
from raystream._runtime.state.snapshot import SinkState, SubtaskState, decode
from raystream._runtime.subtask.source_reader import SourceReader
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.checkpointing.subtask_side import SubtaskCheckpoints
from raystream.errors import StaleAttemptError
from raystream.graph import Step
from raystream.sinks import CollectSink, FileSink, SinkContext, read_files
from raystream.sources import SequenceSource

RUN = "run"


async def inline(fn, *args):
    return fn(*args)


def file_sink_op(tmp_path, attempt=1):
    step = Step("out", "sink", ("in",), sink=FileSink(str(tmp_path / "out"), roll="checkpoint"))
    return SinkOp(step, SinkContext("out", 0, 1, transactional=True, run_id=RUN, attempt=attempt))


def part(tmp_path, *, blocking=inline, attempt=1):
    store = CheckpointStore(str(tmp_path / "job"))
    store.claim_attempt(RUN)
    fatal: list[BaseException] = []
    checkpoints = SubtaskCheckpoints(name="c[0]", store=store, run_id=RUN, attempt=attempt, chain="c", subtask=0,
                                     faults=Injector((), attempt=attempt), on_fatal=fatal.append, blocking=blocking)
    acks: list = []

    async def ack(checkpoint_id, meta, error):
        acks.append((checkpoint_id, meta, error))

    sink = file_sink_op(tmp_path, attempt)
    checkpoints.attach([sink], ack)
    return checkpoints, store, sink, acks, fatal


def state(n):
    return SubtaskState(checkpoint_id=n, chain="c", subtask=0, parallelism=1, counters={"out": (n, 0)})


def test_take_pre_commits_then_captures_then_forwards_and_acks_in_checkpoint_order(tmp_path):
    delays = [0.05]

    async def slow_first(fn, *args):  # the first upload is slower than the second
        await asyncio.sleep(delays.pop() if delays else 0)
        return fn(*args)

    checkpoints, store, sink, acks, _ = part(tmp_path, blocking=slow_first)
    order = []

    async def go():
        sink.process([{"id": 1}])
        forward = lambda n: asyncio.sleep(0, order.append(("forward", n)))  # noqa: E731
        await checkpoints.take(1, 0.0, lambda: order.append(("capture", list(sink.pending))) or state(1), forward)
        checkpoints.abort(1)  # C6a: decided before 2 starts; FileSink keeps its transaction pending
        await checkpoints.take(2, 0.5, lambda: state(2), forward, source_records=7)
        await checkpoints._upload_tail
        snapshots = [await checkpoints.next_snapshot(), await checkpoints.next_snapshot()]
        return snapshots

    snapshots = asyncio.run(go())
    assert order[0][0] == "capture" and order[0][1][0][0] == 1  # the pre-committed transaction is in the state
    assert order[1] == ("forward", 1)
    assert [a[0] for a in acks] == [1, 2] and all(a[2] is None for a in acks)
    assert acks[1][1].source_records == 7 and acks[1][1].alignment == 0.5
    for (n, meta, _), data in zip(acks, snapshots):
        assert decode(data, meta.sha256, "x").checkpoint_id == n  # the object-store copy is the same snapshot
        assert store.storage.get(meta.key) == data  # and so is the durable one


def test_a_pre_commit_waits_until_the_earlier_checkpoints_are_settled(tmp_path):
    """C6a: barrier 2 may arrive before the notification of 1 (committed or aborted).
    The sinks pre-commit 2 only once 1 is settled, and a writer may take back the
    transaction of an aborted checkpoint (SinkWriter.abort)."""
    checkpoints, _, sink, acks, _ = part(tmp_path)
    taken_back = []
    sink.writer.abort = lambda txn: taken_back.append(txn) or True

    async def go():
        sink.process([{"id": 1}])
        await checkpoints.take(1, 0.0, lambda: state(1), lambda n: asyncio.sleep(0))
        sink.process([{"id": 2}])
        captured = lambda: dataclasses.replace(state(2), sinks={"out": SinkState(None, list(sink.pending))})  # noqa: E731
        second = asyncio.ensure_future(checkpoints.take(2, 0.0, captured, lambda n: asyncio.sleep(0)))
        await asyncio.sleep(0.05)
        assert not second.done() and [c for c, _ in sink.pending] == [1]  # 2 is not pre-committed yet
        checkpoints.abort(1)
        await second
        return [c for c, _ in sink.pending]

    assert asyncio.run(go()) == [2] and len(taken_back) == 1  # 1's transaction went back to the writer
    assert acks[1][1].sink_from == 2


def test_a_failed_upload_declines_the_checkpoint(tmp_path):
    async def failing(fn, *args):
        raise OSError("disk full")

    checkpoints, _, _, acks, _ = part(tmp_path, blocking=failing)

    async def go():
        await checkpoints.take(1, 0.0, lambda: state(1), lambda n: asyncio.sleep(0))
        await checkpoints._upload_tail

    asyncio.run(go())
    assert acks[0][0] == 1 and acks[0][2] == "OSError: disk full"


def test_commit_makes_the_transactions_of_complete_checkpoints_visible_and_wakes_the_end(tmp_path):
    checkpoints, _, sink, _, fatal = part(tmp_path)

    async def go():
        sink.process([{"id": 1}])
        await checkpoints.take(1, 0.0, lambda: state(1), lambda n: asyncio.sleep(0))
        sink.process([{"id": 2}])
        second = asyncio.ensure_future(checkpoints.take(2, 0.0, lambda: state(2), lambda n: asyncio.sleep(0)))
        await checkpoints.commit(1)  # C6 of 1 settles it: 2's pre-commit goes on (C6a)
        await second
        waiting = asyncio.ensure_future(checkpoints.wait_committed(lambda: None))
        await asyncio.sleep(0)
        assert read_files(str(tmp_path / "out")) == [{"id": 1}]
        assert not waiting.done()
        await checkpoints.commit(2)
        await asyncio.wait_for(waiting, 1.0)

    asyncio.run(go())
    assert sorted(r["id"] for r in read_files(str(tmp_path / "out"))) == [1, 2]
    assert sink.pending == [] and fatal == []


def test_a_replaced_attempt_commits_nothing_and_stops(tmp_path):
    checkpoints, store, sink, _, fatal = part(tmp_path)

    async def go():
        sink.process([{"id": 1}])
        await checkpoints.take(1, 0.0, lambda: state(1), lambda n: asyncio.sleep(0))
        store.claim_attempt(RUN)  # F3: a newer attempt took over
        await checkpoints.commit(1)

    asyncio.run(go())
    assert read_files(str(tmp_path / "out")) == []
    assert len(sink.pending) == 1 and isinstance(fatal[0], StaleAttemptError)


def test_wait_committed_raises_when_the_subtask_fails_meanwhile(tmp_path):
    checkpoints, _, _, _, _ = part(tmp_path)
    error = RuntimeError("peer died")

    async def go():
        await checkpoints.take(1, 0.0, lambda: state(1), lambda n: asyncio.sleep(0))
        waiting = asyncio.ensure_future(checkpoints.wait_committed(lambda: error))
        await asyncio.sleep(0)
        checkpoints.interrupt()
        await waiting

    with pytest.raises(RuntimeError, match="peer died"):
        asyncio.run(go())


def spec_for(steps, errors=rs.ErrorPolicy.fail(), audit=None):
    return SubtaskSpec("j", "+".join(s.step_id for s in steps), steps, 0, 1, 0, rs.RuntimeConfig(),
                       rs.Guarantee.EXACTLY_ONCE, "unused", RUN, 1, errors=errors, audit=audit)


def test_dead_letters_carry_the_record_and_its_source_position_and_the_rest_goes_on():
    dead = CollectSink()
    steps = [Step("src", "source", (), source=SequenceSource(3)), Step("inv", "map", ("src",), fn=lambda x: 1 / x)]
    ops = [build_operator(steps[1])]
    policies = RecordPolicies(spec_for(steps, rs.ErrorPolicy.dead_letter(dead)), ops, None)
    policies.source_at = {"partition": "0", "offset": 0}
    out = run_chain(ops, [0, 1, 2])
    policies.flush_dead_letters()
    assert out == [1.0, 0.5]
    (letter,) = policies.dead_letters.writer.close()
    assert letter["step_id"] == "inv" and letter["record"] == 0 and letter["error"].startswith("ZeroDivisionError")
    assert letter["source"] == {"partition": "0", "offset": 0}


def test_audit_tallies_count_what_the_source_emits_and_the_sink_receives():
    steps = [Step("src", "source", (), source=SequenceSource(3)), Step("out", "sink", ("src",), sink=CollectSink())]
    ops = [build_operator(steps[1], SinkContext("out", 0, 1))]
    policies = RecordPolicies(spec_for(steps, audit=rs.Audit(source_id=lambda r: r, sink_id=lambda r: r)), ops, None)
    policies.count_source([0, 1, 2])
    run_chain(ops, [0, 1, 2])
    audit = policies.audit_state()
    assert audit["source:src"] == audit["sink:out"] and audit["source:src"][0] == 3


def test_the_source_reader_reads_its_partitions_round_robin_from_their_offsets():
    step = Step("src", "source", (), source=SequenceSource(12, partitions=3))
    reader = SourceReader(step, ["0", "2"], batch_size=2)
    reader.open({"0": 2}, emitted=2, all_partitions=["0", "1", "2"])  # partition 0 read 2 records before
    seen = []

    async def emit(partition, before, after, batch):
        seen.append((partition, before, after, list(batch)))

    async def drain():
        while not reader.exhausted:
            await reader.read_round(emit)

    asyncio.run(drain())
    assert seen[:2] == [("0", 2, 4, [6, 9]), ("2", 0, 2, [2, 5])]
    assert sorted(r for *_, batch in seen for r in batch) == [2, 5, 6, 8, 9, 11]
    assert reader.emitted == 2 + 6 and reader.offsets() == {"0": 4, "2": 4}


def test_barriers_go_out_after_the_current_batch_not_after_the_round():
    """C1: `between` runs after each batch, and the offsets it would checkpoint hold that
    batch and none after it; once it says the final barrier is out, nothing more is read
    (simulation of stop 35: with 4 partitions of slow batches a barrier waited a round,
    and checkpoints took 12-19 s instead of 3)."""
    step = Step("src", "source", (), source=SequenceSource(40, partitions=4))
    reader = SourceReader(step, ["0", "1", "2", "3"], batch_size=2)
    reader.open({}, all_partitions=["0", "1", "2", "3"])
    seen, offsets_at_barrier = [], []

    async def emit(partition, before, after, batch):
        seen.append(partition)

    async def between():
        if len(seen) == 1:  # a barrier was asked for while the first batch went through
            offsets_at_barrier.append(dict(reader.offsets()))
        return len(seen) == 3  # the final one goes out after the third batch

    assert asyncio.run(reader.read_round(emit, between))
    assert offsets_at_barrier == [{"0": 2, "1": 0, "2": 0, "3": 0}]
    assert seen == ["0", "1", "2"]  # partition 3 was not read after the final barrier
