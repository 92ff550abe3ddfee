"""The inbox restores per-channel order and holds back blocked channels."""
import asyncio

from raystream._runtime.transport.channel import BATCH, END, Inbox


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
