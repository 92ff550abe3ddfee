"""The source interface: what every source implements, and the pacing helpers of the
generator sources. Connectors import it from here; users reach every source, and this
interface, through `raystream.sources`."""
from __future__ import annotations

from abc import ABC, abstractmethod
import math
import time
from typing import Any

import pyarrow as pa

from raystream.errors import JobDefinitionError


class SourcePartition(ABC):
    """One independently readable, seekable slice of a source."""

    @abstractmethod
    def next_batch(self) -> list[Any] | pa.RecordBatch | None:
        """The next records: a non-empty batch, `[]` when none is ready yet, `None` at the end."""

    @abstractmethod
    def snapshot(self) -> Any:
        """The offset to resume from: the position just after the last returned record."""

    def next_awake(self) -> float | None:
        """When (time.time()) to ask again after `next_batch` returned `[]`; None means soon."""
        return None

    def checkpoint_complete(self, offset: Any) -> None:
        """A checkpoint holding `offset` of this partition is complete (e.g. to report it
        to the system read from). Nothing may depend on it: it is not called again after
        a failure."""

    def close(self) -> None:
        """Release files or connections."""


class Source(ABC):
    """A partitioned, replayable input."""

    #: Whether `next_batch` returns Arrow record batches. Such a source is built with
    #: `RuntimeConfig.arrow_batch_size` rows a batch instead of `batch_size` records:
    #: a columnar step's cost per batch is fixed, and a batch crosses actors in one call.
    columnar: bool = False

    @abstractmethod
    def list_partitions(self) -> list[str]:
        """Stable partition keys. Called before the job starts; errors here stop the job early."""

    @abstractmethod
    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        """Open partition `key` at `resume_state` (None: where the source starts, which is
        its beginning unless the source is told to start elsewhere)."""

    def build_new_partition(self, key: str, batch_size: int) -> SourcePartition:
        """Open partition `key`, which appeared after the job first started (the checkpoint
        a run restores has no offset for it), at its beginning: nothing of it was read. A
        source whose `build_partition(key, None, ...)` may start elsewhere (Kafka's
        `start="latest"`) overrides this."""
        return self.build_partition(key, None, batch_size)


class Pacer:
    """Limits a partition to `rate` records per second (None: no limit) from where it resumed:
    for generator sources (`SequenceSource`, Nexmark)."""

    def __init__(self, rate: float | None, emitted: int):
        self.rate = rate
        self.started = time.monotonic()
        self.emitted_at_start = emitted

    def allowed(self, emitted: int, want: int) -> int:
        if self.rate is None:
            return want
        return min(want, int((time.monotonic() - self.started) * self.rate) - (emitted - self.emitted_at_start))

    def next_awake(self, emitted: int) -> float | None:
        if self.rate is None:
            return None
        due = self.started + (emitted - self.emitted_at_start + 1) / self.rate
        return time.time() + max(0.0, due - time.monotonic())


def check_rate(what: str, rate: Any) -> None:
    """JobDefinitionError unless `rate` (records per second) is None or a positive number."""
    if rate is not None and (not isinstance(rate, (int, float)) or not rate > 0 or math.isinf(rate)):
        raise JobDefinitionError(f"{what} rate must be None or a positive number; got {rate!r}")
