"""Incremental keyed state without Ray (raystream/_runtime/state/changelog.py): snapshots hold
the changes of their epoch over earlier parts, merging turns the parts into a base,
restore rebuilds exactly the live state, and retention keeps every part a kept
checkpoint needs."""
import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.state.changelog import DELETED, StateChangelog, merge_parts, materialize
from raystream._runtime.state.store import CheckpointStore
from raystream.testing.injector import Injector
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.snapshot import SubtaskState, decode
from raystream._runtime.checkpointing.subtask_side import SubtaskCheckpoints
from raystream.errors import ConfigError, CorruptCheckpointError
from raystream.windows import Sliding, Tumbling
from tests.helpers.window_ops import rows_batch, window

RUN = "run"


@dataclass
class FakeOp:
    """A keyed step that reports the keys it touched, or (`written`) their new values."""

    step_id: str
    state: dict[Any, Any] = field(default_factory=dict)
    changed: set[Any] = field(default_factory=set)
    written: dict[Any, Any] | None = None
    deletes: int = 0

    def put(self, key: Any, value: Any) -> None:
        self.state[key] = value
        if self.written is None:
            self.changed.add(key)
        else:
            self.written[key] = value

    def delete(self, key: Any) -> None:
        self.state.pop(key, None)
        if self.written is None:
            self.changed.add(key)
        else:
            self.written[key] = DELETED
            self.deletes += 1


async def inline(fn, *args):
    return fn(*args)


class Harness:
    """One subtask's checkpoint side over local storage, with merging run in process."""

    def __init__(self, tmp_path, config: rs.CheckpointConfig, fail_uploads: set[int] = frozenset()):
        self.store = CheckpointStore(str(tmp_path / "job"))
        self.store.claim_attempt(RUN)
        self.fail_uploads = fail_uploads
        self.merges = 0

        async def blocking(fn, *args):
            if fn == self.store.storage.put and int(args[0].split("/")[2]) in self.fail_uploads:
                raise OSError("disk full")
            return fn(*args)

        async def merger(root, parts, key):
            self.merges += 1
            return merge_parts(self.store.storage, parts, key)

        self.part = SubtaskCheckpoints(name="c[0]", store=self.store, run_id=RUN, attempt=1, chain="c", subtask=0,
                                       faults=Injector((), attempt=1), on_fatal=lambda e: None, blocking=blocking,
                                       config=config, merger=merger)
        self.acks: list = []

        async def ack(checkpoint_id, meta, error):
            self.acks.append((checkpoint_id, meta, error))

        self.part.attach([], ack)

    async def checkpoint(self, n: int, ops: list[FakeOp]) -> None:
        def capture():
            keyed, changelog, parts = self.part.changelog.capture(ops)
            return SubtaskState(checkpoint_id=n, chain="c", subtask=0, parallelism=1, keyed=keyed,
                                changelog=changelog, parts=parts)

        await self.part.take(n, 0.0, capture, lambda n: asyncio.sleep(0))
        await self.part._upload_tail
        for _ in range(100):  # the merge task runs inline; let it finish
            if not self.part.changelog.merging:
                break
            await asyncio.sleep(0)
        meta = self.acks[-1][1]
        if self.acks[-1][2] is None:
            self.store.commit(Manifest("job", RUN, n, 1, "exactly_once", 0.0, {"c": 1}, [meta]))

    def restore(self, n: int) -> dict[str, dict[Any, Any]]:
        meta = self.store.load_manifest(RUN, n).snapshots[0]
        state = self.store.verify_snapshot(self.store.storage.get(meta.key), meta)
        return materialize(self.store.storage, state).keyed


def test_the_first_snapshot_is_full_then_only_changes_are_written(tmp_path):
    h = Harness(tmp_path, rs.CheckpointConfig(compact_above=1 << 30))
    op = FakeOp("sum")

    async def run():
        for k in range(1000):
            op.put(k, k)
        await h.checkpoint(1, [op])
        op.put(3, -3)
        op.delete(4)
        await h.checkpoint(2, [op])

    asyncio.run(run())
    first, second = (m for _, m, _ in h.acks)
    assert second.size < first.size / 10  # two keys changed, not a thousand
    assert second.parts == (first.key,)
    snap = decode(h.store.storage.get(second.key), second.sha256, "s")
    assert snap.changelog and snap.keyed == {"sum": ({3: -3}, [4])}
    assert h.restore(2) == {"sum": op.state}


@settings(max_examples=40, deadline=None)
@given(epochs=st.lists(st.lists(st.tuples(st.integers(0, 30), st.one_of(st.none(), st.integers())), max_size=25),
                       min_size=1, max_size=14),
       base_every=st.integers(1, 4), compact_above=st.sampled_from([0, 1 << 30]),
       fail=st.sets(st.integers(1, 14), max_size=2), retain=st.integers(1, 3), stable=st.sampled_from([0, 200]))
def test_every_checkpoint_restores_exactly_the_state_it_captured(tmp_path_factory, epochs, base_every, compact_above,
                                                                 fail, retain, stable):
    """Random puts and deletes over epochs, with merging in the background or full
    rewrites, failed uploads and retention: each complete checkpoint restores exactly
    the tables it captured, and the newest still does after older ones are deleted.
    With `stable` keys that never change, the base outweighs each epoch's changes and
    snapshots hold changes; without, the state turns over and many are full (I2)."""
    h = Harness(tmp_path_factory.mktemp("c"), rs.CheckpointConfig(base_every=base_every,
                                                                    compact_above=compact_above), fail)
    a, b = FakeOp("a"), FakeOp("b", written={})  # both ways of reporting changes
    a.state.update((1000 + k, k) for k in range(stable))
    expected = {}

    async def run():
        for n, epoch in enumerate(epochs, 1):
            for key, value in epoch:
                op = a if key % 2 else b
                op.delete(key) if value is None else op.put(key, value)
            await h.checkpoint(n, [a, b])
            if h.acks[-1][2] is None:
                expected[n] = {"a": dict(a.state), "b": dict(b.state)}
                assert h.restore(n) == expected[n]
            h.store.retain(RUN, retain)

    asyncio.run(run())
    complete = sorted(expected)
    for n in complete[-retain:]:
        assert h.restore(n) == expected[n]
    assert not set(fail) & set(complete)
    # a failed upload is declined, and the snapshot after it starts anew and is not
    for n, meta, error in h.acks:
        assert (error is not None) == (n in fail), (n, error)


def test_parts_over_the_size_threshold_are_merged_in_the_background(tmp_path):
    h = Harness(tmp_path, rs.CheckpointConfig(base_every=3, compact_above=0))
    op = FakeOp("sum", state={-k: k for k in range(1, 1000)})  # keys that do not change: the parts hold changes

    async def run():
        for n in range(1, 9):
            for k in range(n * 10, n * 10 + 50):
                op.put(k, n)
            await h.checkpoint(n, [op])

    asyncio.run(run())
    assert h.merges >= 1
    assert h.store.storage.list(f"{RUN}/state/")
    newest = h.store.load_manifest(RUN, 8).snapshots[0]
    assert any("/state/" in p for p in newest.parts)  # the parts start at a merged base
    assert len(newest.parts) <= 4
    assert h.restore(8) == {"sum": op.state}


def test_a_merge_that_ends_after_its_parts_were_replaced_is_dropped(tmp_path):
    """I4: a merge still running when an upload fails must not become the base: the
    failed snapshot's changes are in no part, so the next snapshot is full."""
    h = Harness(tmp_path, rs.CheckpointConfig(base_every=1, compact_above=0), fail_uploads={3})
    op = FakeOp("sum", state={-k: k for k in range(1, 1000)})  # keys that do not change: the parts hold changes
    release = asyncio.Event()

    async def held(root, parts, key):
        await release.wait()
        return merge_parts(h.store.storage, parts, key)

    h.part.merger = held

    async def run():
        await h.checkpoint(1, [op])
        op.put(1, 1)
        await h.checkpoint(2, [op])  # due: the merge of parts 1-2 starts and waits
        assert h.part.changelog.merging
        op.put(2, 2)
        await h.checkpoint(3, [op])  # over parts 1-2; its upload fails
        release.set()
        while h.part.changelog.merging:
            await asyncio.sleep(0)
        op.put(3, 3)
        await h.checkpoint(4, [op])

    asyncio.run(run())
    assert [error is None for _, _, error in h.acks] == [True, True, False, True]
    newest = h.store.load_manifest(RUN, 4).snapshots[0]
    assert newest.parts == ()  # full: nothing it could build on holds checkpoint 3's changes
    assert h.restore(4) == {"sum": op.state}


def test_a_damaged_part_is_refused_by_its_checksum(tmp_path):
    h = Harness(tmp_path, rs.CheckpointConfig(compact_above=1 << 30))
    op = FakeOp("sum")

    async def run():
        op.put("k", 1)
        await h.checkpoint(1, [op])
        op.put("k", 2)
        await h.checkpoint(2, [op])

    asyncio.run(run())
    first = h.acks[0][1]
    h.store.storage.put(first.key, h.store.storage.get(first.key)[:-1] + b"x")
    with pytest.raises(CorruptCheckpointError, match="state part"):
        h.restore(2)


def test_state_that_turns_over_is_written_whole_and_never_merged(tmp_path):
    """Windows that fire and open: each epoch replaces every key. A part of changes as big
    as its base makes the next snapshot full (I2), so no merge reads the parts again."""
    h = Harness(tmp_path, rs.CheckpointConfig(base_every=2, compact_above=0))
    op = FakeOp("windows")
    expected = {}

    async def run():
        for n in range(1, 8):
            for k in list(op.state):
                op.delete(k)
            for k in range(n * 100, n * 100 + 100):
                op.put(k, b"rows" * 10)
            await h.checkpoint(n, [op])
            expected[n] = {"windows": dict(op.state)}

    asyncio.run(run())
    assert h.merges == 0
    assert [len(meta.parts) for _, meta, _ in h.acks] == [0, 1, 0, 1, 0, 1, 0]  # full after each turnover
    assert h.restore(6) == expected[6] and h.restore(7) == expected[7]


@pytest.mark.parametrize("story", ["large values that never change", "keys that live within an epoch"])
def test_small_changes_beside_large_state_stay_changes(tmp_path, story):
    """Review 43: a rule that counted keys wrote 10 MB every checkpoint here. Bytes decide:
    many small keys that change beside a few large ones that do not, or keys that open and
    close within an epoch (only their deletion is written), keep the parts small."""
    h = Harness(tmp_path, rs.CheckpointConfig())  # the defaults: 8 MiB, 10 parts
    small, large = FakeOp("small", written={}), FakeOp("large")

    async def run():
        if story == "large values that never change":
            for k in range(20):
                large.put(k, bytes(500_000))
        else:
            for k in range(1000):
                large.put(k, bytes(10_000))
        for n in range(1, 13):
            if story == "large values that never change":
                for k in range(1000):
                    small.put(k, n)
            else:
                for k in range(600):
                    small.put((n, k), n)
                    small.delete((n, k))
            await h.checkpoint(n, [small, large])

    asyncio.run(run())
    sizes = [meta.size for _, meta, _ in h.acks]
    assert sizes[0] > 9_000_000 and max(sizes[1:]) < 100_000, sizes  # changes only, after the first
    assert h.restore(12) == {"small": small.state, "large": large.state}


def test_without_incremental_every_snapshot_is_full(tmp_path):
    changelog = StateChangelog(incremental=False, base_every=10, compact_above=0)
    op = FakeOp("sum")
    op.put(1, 1)
    keyed, is_changelog, parts = changelog.capture([op])
    assert (keyed, is_changelog, parts) == ({"sum": {1: 1}}, False, [])
    assert not op.changed


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="base_every"):
        rs.CheckpointConfig(base_every=0)
    with pytest.raises(ConfigError, match="compact_above"):
        rs.CheckpointConfig(compact_above=-1)


@settings(max_examples=30, deadline=None)
@given(epochs=st.lists(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(-5, 5), st.integers(0, 60)),
                                max_size=12), min_size=1, max_size=10),
       marks=st.lists(st.integers(0, 70), min_size=10, max_size=10),
       base_every=st.integers(1, 3), compact_above=st.sampled_from([0, 1 << 30]), sliding=st.booleans())
def test_window_state_written_as_arrow_rows_restores_the_per_key_layout(tmp_path_factory, epochs, marks, base_every,
                                                                        compact_above, sliding):
    """Windows held window-major go into snapshots as Arrow rows (state/window_entries.py),
    full or changed keys only; every checkpoint, through merges or full rewrites and a
    pickle round trip, restores exactly the per-key layout the step held when it captured."""
    h = Harness(tmp_path_factory.mktemp("w"), rs.CheckpointConfig(base_every=base_every, compact_above=compact_above))
    op = window(Sliding(0.012, 0.004) if sliding else Tumbling(0.010), lateness=30)  # fired windows stay a while
    expected = {}

    async def run():
        for n, (rows, mark) in enumerate(zip(epochs, marks), 1):
            if rows:
                op.process(rows_batch(rows))
            op.on_watermark(max(mark, op.watermark or 0))
            await h.checkpoint(n, [op])
            expected[n] = {"w": op.state}
            assert h.restore(n) == expected[n]

    asyncio.run(run())
    assert op._tables is not None  # the rows stayed window-major: Arrow rows in every snapshot
