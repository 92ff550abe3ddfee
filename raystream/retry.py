"""How connectors retry transient failures: a refused or dropped connection to a database
or a broker, which a later try may find up again."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from raystream.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """`attempts` tries in all; after a failed try wait `backoff` seconds, doubling up to
    `max_backoff`. The default gives a server about 15 s to come back."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 1:
            raise ConfigError(f"Retry attempts must be an integer >= 1; got {self.attempts!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"Retry {name} must be a number >= 0; got {value!r}")

    def call(self, what: str, fn: Callable[[], T], transient: tuple[type[BaseException], ...]) -> T:
        """`fn()`, tried again after each `transient` error; the last error propagates."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except transient as exc:
                if attempt == self.attempts:
                    raise
                logger.warning("%s failed (try %d of %d), retrying in %.1f s: %s",
                               what, attempt, self.attempts, delay, first_line(exc))
            time.sleep(delay)  # a backoff between tries, not a wait for a condition
            delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")


def first_line(exc: BaseException) -> str:
    """An error's message, first line only (psycopg and librdkafka add detail lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
