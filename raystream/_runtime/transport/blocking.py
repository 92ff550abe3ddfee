"""Blocking I/O from async code. Protocol code takes a `Blocking` callable instead of
calling the thread pool itself, so the simulation and unit tests can run it inline."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

Blocking = Callable[..., Awaitable[Any]]


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking storage I/O off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
