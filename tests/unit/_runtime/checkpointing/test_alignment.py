"""Barrier alignment blocks exactly the channels it must, and only under exactly-once."""
from raystream._runtime.checkpointing.alignment import Alignment


def test_aligned_blocks_until_every_channel_delivered_the_barrier():
    a = Alignment(3, aligned=True)
    assert a.on_barrier(0, 1) is None and a.blocked == {0}
    assert a.on_barrier(2, 1) is None and a.blocked == {0, 2}
    done = a.on_barrier(1, 1)
    assert done.checkpoint_id == 1 and done.waited >= 0
    assert a.blocked == set() and a.last == 1


def test_ended_channels_count_as_arrived():
    a = Alignment(2, aligned=True)
    a.on_barrier(0, 5)
    assert a.on_end(1).checkpoint_id == 5
    assert a.on_barrier(0, 6).checkpoint_id == 6  # the ended channel never blocks again


def test_newer_barrier_abandons_older_alignment_and_stale_ones_are_ignored():
    a = Alignment(2, aligned=True)
    a.on_barrier(0, 1)
    assert a.on_barrier(1, 2) is None  # checkpoint 1 was aborted; align 2 now
    assert a.blocked == {1}
    assert a.on_barrier(1, 1) is None  # stale
    assert a.on_barrier(0, 2).checkpoint_id == 2


def test_unaligned_blocks_nothing_but_still_waits_for_every_barrier():
    """Snapshotting at the first barrier would lose the records still in flight on the
    other channels: their sources' offsets are past them, the snapshot would not be."""
    a = Alignment(2, aligned=False)
    assert a.on_barrier(1, 1) is None
    assert a.blocked == set()
    assert a.on_barrier(0, 1).checkpoint_id == 1
    assert a.on_barrier(0, 2) is None and a.on_barrier(1, 2).checkpoint_id == 2

