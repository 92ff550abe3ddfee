"""A real hash edge (`OutputEdge`) without Ray: what it sends to each subtask, for unit
tests of keyed exchanges."""
from __future__ import annotations

import asyncio
from typing import Any

from raystream._runtime.plan.physical import EdgeKind
from raystream._runtime.transport.channel import OutputChannel, OutputEdge


class _Receiver:
    """An actor handle's `push.remote`: records the payloads per channel."""

    def __init__(self) -> None:
        self.got: dict[int, list[Any]] = {}
        self.push = self

    def remote(self, channel: int, seq: int, kind: int, payload: Any) -> Any:
        self.got.setdefault(channel, []).append(payload)

        async def done() -> None:
            return None
        return done()


def hash_edge(batch: Any, parallelism: int, max_parallelism: int = 128) -> list[list[Any]]:
    """The messages a hash edge sends to each of `parallelism` subtasks for `batch`."""
    receiver = _Receiver()
    channels = [OutputChannel(receiver, i, 4) for i in range(parallelism)]
    edge = OutputEdge(EdgeKind.HASH, channels, batch_size=1 << 20, linger=1.0, max_parallelism=max_parallelism)

    async def run() -> None:
        await edge.emit(batch)
        await edge.flush_all()
        await edge.drain()
    asyncio.run(run())
    return [receiver.got.get(i, []) for i in range(parallelism)]
