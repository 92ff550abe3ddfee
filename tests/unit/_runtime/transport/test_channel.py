"""The inbox restores per-channel order and holds back blocked channels; a keyed edge
sends each record to the subtask of its key."""
import asyncio

import pytest

from raystream._runtime.plan.physical import EdgeKind
from raystream._runtime.transport.batch import KeyedBatch, Timed
from raystream._runtime.transport.channel import BATCH, END, Inbox, OutputChannel, OutputEdge
from raystream._runtime.transport.keys import KeyRouter, UnsupportedKeyError
from raystream._runtime.transport.packing import unpack


def test_inbox_orders_by_sequence_and_blocks():
    async def scenario():
        inbox = Inbox(2)
        inbox.put(0, 1, BATCH, "c0-second")  # arrives out of order
        assert await inbox.get(timeout=0.01) is None
        done = inbox.put(0, 0, BATCH, "c0-first")
        inbox.put(1, 0, BATCH, "c1-first")
        inbox.blocked.add(1)
        got = []
        while (item := await inbox.get(timeout=0.01)) is not None:
            channel, kind, payload, fut = item
            got.append(payload)
            fut.set_result(None)
        assert got == ["c0-first", "c0-second"]  # channel 1 is blocked
        assert done.done()
        inbox.blocked.clear()
        channel, kind, payload, fut = await inbox.get(timeout=0.01)
        assert (channel, payload) == (1, "c1-first")
        inbox.put(1, 1, END, None)
        assert (await inbox.get(timeout=0.01))[1] == END
        assert inbox.max_queued_seen == 2

    asyncio.run(scenario())


class _Receiver:
    """An actor handle whose push.remote records what was sent and is done at once."""

    def __init__(self) -> None:
        self.got: list = []
        self.push = self

    def remote(self, channel, seq, kind, payload):
        self.got.append((seq, kind, unpack(payload) if kind == BATCH else payload))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _hash_edge(n: int, batch_size: int = 4) -> tuple[OutputEdge, list[_Receiver]]:
    receivers = [_Receiver() for _ in range(n)]
    return OutputEdge(EdgeKind.HASH, [OutputChannel(r, 0, 4) for r in receivers], batch_size, 60.0, 128), receivers


def test_a_keyed_edge_sends_each_record_to_its_keys_subtask_with_its_time():
    keys = [f"k{i % 5}" for i in range(12)]

    async def scenario():
        edge, receivers = _hash_edge(3)
        await edge.emit(Timed(KeyedBatch(list(keys), list(range(12))), [100 + i for i in range(12)]))
        await edge.flush_all()
        return receivers

    router = KeyRouter(3, 128)
    for target, receiver in enumerate(asyncio.run(scenario())):
        sent = [(k, v, t) for _, _, b in receiver.got for k, v, t in zip(b.batch.keys, b.batch.values, b.times)]
        assert sent == [(k, i, 100 + i) for i, k in enumerate(keys) if router.target(k) == target]
        for _, _, batch in receiver.got:  # equal keys of a message are one object: pickle wrote them once
            assert len({id(k) for k in batch.batch.keys}) == len(set(batch.batch.keys))


def test_a_keyed_edge_names_a_key_that_cannot_be_hashed():
    async def scenario():
        edge, _ = _hash_edge(2)
        await edge.emit(KeyedBatch(["a", ["not", "hashable"], "b"], [1, 2, 3]))

    with pytest.raises(UnsupportedKeyError, match=r"\['not', 'hashable'\]"):
        asyncio.run(scenario())
