"""The coordinator's side of the checkpoint protocol (C1, C5-C7) with fake actor handles,
a virtual clock and a real checkpoint store in a temporary directory."""
import asyncio

import pytest

from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.checkpointing.coordinator_side import Checkpointer
from raystream.testing.injector import Injector
from raystream._runtime.state.snapshot import SnapshotMeta
from raystream.config import CheckpointConfig
from raystream.result import CheckpointStats

RUN = "run"
KEYS = [("src", 0), ("src", 1), ("sink", 0)]


class Method:
    def __init__(self, log, name, key):
        self.log, self.name, self.key = log, name, key

    def remote(self, *args):
        self.log.append((self.name, self.key, args))
        return f"ref:{self.name}:{self.key}:{len(self.log)}"


class FakeActor:
    def __init__(self, log, key):
        for name in ("trigger_checkpoint", "next_snapshot", "notify_complete", "notify_aborted"):
            setattr(self, name, Method(log, name, key))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


async def inline(fn, *args):
    return fn(*args)


@pytest.fixture
def world(tmp_path):
    store = CheckpointStore(str(tmp_path / "job"))
    store.claim_attempt(RUN)
    log: list = []
    clock = Clock()

    def make(blocking=inline, first_after=None, **config):
        cp = Checkpointer(
            job_name="job", guarantee="exactly_once", config=CheckpointConfig(**config), store=store, run_id=RUN,
            attempt=1, actors={k: FakeActor(log, k) for k in KEYS}, sources=KEYS[:2],
            chains={"src": 2, "sink": 1}, next_id=1, stats=CheckpointStats(), faults=Injector((), attempt=1),
            clock=clock, blocking=blocking, first_after=first_after)
        cp.start_snapshot_calls()
        return cp

    return make, store, log, clock


def calls(log, name):
    return [(key, args) for n, key, args in log if n == name]


def ack_all(cp, checkpoint_id, error_from=None):
    async def go():
        for key in KEYS:
            meta = SnapshotMeta(key[0], key[1], CheckpointStore.snapshot_key(RUN, checkpoint_id, 1, key[0], key[1]), "0" * 64, 10)
            await cp.on_ack(checkpoint_id, meta, "upload failed" if key == error_from else None)
    asyncio.run(go())


def test_a_checkpoint_starts_every_interval_and_commits_when_every_subtask_acknowledged(world):
    make, store, log, clock = world
    cp = make(interval=1.0)
    cp.tick()
    assert calls(log, "trigger_checkpoint") == []  # not due yet
    clock.now = 1.0
    cp.tick()
    assert calls(log, "trigger_checkpoint") == [(("src", 0), (1, False)), (("src", 1), (1, False))]
    cp.tick()  # one checkpoint at a time
    assert len(calls(log, "trigger_checkpoint")) == 2
    clock.now = 1.25
    ack_all(cp, 1)
    assert store.manifest_ids(RUN) == [1]
    assert store.load_manifest(RUN, 1).completed_total == 1
    assert sorted(k for k, _ in calls(log, "notify_complete")) == sorted(KEYS)
    assert cp.stats.completed == 1 and cp.stats.last_id == 1 and cp.stats.last_duration == pytest.approx(0.25)
    assert set(cp.refs[1]) == set(KEYS)  # the object-store copies of the complete checkpoint


def test_after_a_failure_the_first_checkpoint_comes_sooner_then_every_interval(world):
    make, store, log, clock = world
    cp = make(interval=1.0, first_after=0.1)  # C1: committed output resumes soon after a recovery
    cp.tick()
    assert calls(log, "trigger_checkpoint") == []
    clock.now = 0.1
    cp.tick()
    assert [args for _, args in calls(log, "trigger_checkpoint")] == [(1, False), (1, False)]
    clock.now = 0.2
    ack_all(cp, 1)
    clock.now = 1.05
    cp.tick()
    assert len(calls(log, "trigger_checkpoint")) == 2  # the next one an interval after the first started
    clock.now = 1.1
    cp.tick()
    assert [args for _, args in calls(log, "trigger_checkpoint")][2:] == [(2, False), (2, False)]
    assert make(interval=0.05, first_after=0.1).last_start == clock.now  # never later than the interval


def test_a_checkpoint_that_outlives_its_timeout_is_aborted_and_its_late_acks_count_for_nothing(world):
    make, store, log, clock = world
    cp = make(interval=1.0, timeout=5.0)
    clock.now = 1.0
    cp.tick()
    clock.now = 6.5
    cp.tick()
    assert cp.pending is None and cp.stats.failed == 1 and cp.failure is None
    ack_all(cp, 1)
    assert store.manifest_ids(RUN) == []
    assert calls(log, "notify_complete") == []
    assert sorted(k for k, args in calls(log, "notify_aborted") if args == (1,)) == sorted(KEYS)  # C6a


def test_a_declined_checkpoint_is_aborted_and_the_next_one_gets_a_new_id(world):
    make, store, log, clock = world
    cp = make(interval=1.0)
    clock.now = 1.0
    cp.tick()
    ack_all(cp, 1, error_from=("src", 1))
    assert cp.stats.failed == 1 and store.manifest_ids(RUN) == []
    clock.now = 2.0
    cp.tick()
    assert calls(log, "trigger_checkpoint")[-1][1] == (2, False)
    ack_all(cp, 2)
    assert store.manifest_ids(RUN) == [2] and cp.consecutive_failures == 0


def test_more_failures_in_a_row_than_tolerable_end_the_attempt(world):
    make, store, log, clock = world
    cp = make(interval=1.0, timeout=2.0, tolerable_failures=1)
    for n in (1, 2):
        clock.now += 1.0
        cp.tick()
        clock.now += 3.0
        cp.tick()
        if n == 1:
            assert cp.failure is None  # one failure is tolerated
    assert cp.failure is not None and "2 checkpoints failed in a row (tolerable_failures=1)" in cp.failure


def test_the_final_checkpoint_starts_once_every_source_finished_and_its_failure_ends_the_attempt(world):
    make, store, log, clock = world
    cp = make(interval=100.0)
    cp.source_finished(("src", 0))
    cp.tick()
    assert calls(log, "trigger_checkpoint") == []
    cp.source_finished(("src", 1))
    cp.tick()
    assert calls(log, "trigger_checkpoint") == [(("src", 0), (1, True)), (("src", 1), (1, True))]
    ack_all(cp, 1, error_from=("sink", 0))
    assert cp.failure is not None and cp.failure.startswith("the final checkpoint failed")


def test_a_committed_final_checkpoint_starts_no_other(world):
    make, store, log, clock = world
    cp = make(interval=1.0)
    for key in KEYS[:2]:
        cp.source_finished(key)
    cp.tick()
    ack_all(cp, 1)
    assert cp.final_committed and store.manifest_ids(RUN) == [1]
    clock.now = 50.0
    cp.tick()
    assert len(calls(log, "trigger_checkpoint")) == 2


def test_after_close_no_acknowledgement_publishes_anything(world):
    make, store, log, clock = world
    cp = make(interval=1.0)
    clock.now = 1.0
    cp.tick()
    asyncio.run(cp.close())
    ack_all(cp, 1)
    assert store.manifest_ids(RUN) == [] and calls(log, "notify_complete") == []


def test_an_attempt_that_was_replaced_publishes_nothing(world):
    make, store, log, clock = world
    cp = make(interval=1.0)
    store.claim_attempt(RUN)  # attempt 2 took over
    clock.now = 1.0
    cp.tick()
    ack_all(cp, 1)
    assert store.manifest_ids(RUN) == []
    assert cp.failure == "attempt 1 was replaced by a newer attempt; it publishes nothing"


def test_retention_keeps_the_newest_manifests(world):
    make, store, log, clock = world
    cp = make(interval=1.0, retain=2)
    for n in range(1, 5):
        clock.now += 1.0
        cp.tick()
        ack_all(cp, n)
    assert store.manifest_ids(RUN) == [3, 4]
    assert sorted(cp.refs) == [3, 4]


def test_the_timeout_spares_a_manifest_write_in_flight_and_nothing_else(world):
    """A checkpoint whose manifest is being written is not aborted (it would be complete and
    aborted at once); the previous checkpoint's retention (C7) does not hold the next
    checkpoint's timeout off."""
    make, store, log, clock = world
    gates = {"commit": asyncio.Event(), "retain": asyncio.Event()}

    async def blocking(fn, *args):
        gate = gates.get(getattr(fn, "__name__", ""))
        if gate is not None:
            await gate.wait()
        return fn(*args)

    async def scenario():
        cp = make(blocking=blocking, interval=1, timeout=5)

        async def ack(n):
            for key in KEYS:
                await cp.on_ack(n, SnapshotMeta(key[0], key[1], f"{RUN}/s/{n}/{key}", "0" * 64, 10), None)

        clock.now = 1.0
        cp.tick()
        acks = asyncio.ensure_future(ack(1))
        await asyncio.sleep(0.01)
        clock.now = 100.0  # far past the timeout, with the manifest write held
        cp.tick()
        assert cp.pending.checkpoint_id == 1 and cp.stats.failed == 0
        gates["commit"].set()
        await asyncio.sleep(0.01)
        assert store.manifest_ids(RUN) == [1] and cp.stats.completed == 1 and cp.stats.failed == 0
        clock.now = 200.0  # checkpoint 2 starts while 1's retention is held
        cp.tick()
        clock.now = 300.0
        cp.tick()
        assert cp.pending is None and cp.stats.failed == 1  # 2 timed out
        gates["retain"].set()
        await acks

    asyncio.run(scenario())


def test_a_checkpoint_aborted_while_its_fence_is_read_is_never_published(world):
    """The timeout aborts checkpoint 1 while F3 reads the attempts, and checkpoint 2 starts:
    1's manifest must not be written afterwards, nor 2's pending state taken for 1's."""
    make, store, log, clock = world
    gate = asyncio.Event()

    async def blocking(fn, *args):
        if getattr(fn, "__name__", "") == "is_current" and not gate.is_set():
            await gate.wait()
        return fn(*args)

    async def scenario():
        cp = make(blocking=blocking, interval=1, timeout=5)
        clock.now = 1.0
        cp.tick()
        acks = asyncio.ensure_future(asyncio.gather(*(
            cp.on_ack(1, SnapshotMeta(k[0], k[1], f"{RUN}/s/1/{k}", "0" * 64, 10), None) for k in KEYS)))
        await asyncio.sleep(0.01)
        clock.now = 10.0
        cp.tick()  # 1 times out
        clock.now = 11.0
        cp.tick()  # 2 starts
        assert cp.pending.checkpoint_id == 2
        gate.set()
        await acks
        assert store.manifest_ids(RUN) == [] and cp.pending.checkpoint_id == 2 and cp.stats.completed == 0
        assert calls(log, "notify_complete") == []

    asyncio.run(scenario())
