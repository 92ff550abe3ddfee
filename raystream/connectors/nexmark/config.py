"""The generator's configuration, shared by the per-record and the columnar generator.

Its checks keep every setting in the domain where both generators agree event for event:
integer ratios and counts (a float ratio would make Python's `%` and numpy's differ) and
finite times.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from raystream.errors import JobDefinitionError
from raystream.source_api import check_rate


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class NexmarkConfig:
    """`events`: how many (None: unbounded); `event_rate`: events per second of event
    time; `rate`: events per second of wall time over all partitions (None: as fast as
    possible); `hot_*_ratio`: 1 in ratio goes to a random id, the rest to a hot one."""

    events: int | None = 100_000
    partitions: int = 2
    seed: int = 0
    event_rate: float = 10_000.0
    base_time: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in milliseconds
    out_of_order: float = 0.0  # seconds
    rate: float | None = None
    hot_auction_ratio: int = 2
    hot_seller_ratio: int = 4
    hot_bidder_ratio: int = 4
    active_people: int = 1000
    in_flight_auctions: int = 100

    def __post_init__(self) -> None:
        if self.events is not None and (not _is_int(self.events) or self.events < 0):
            raise JobDefinitionError(f"NexmarkConfig events must be None or an integer >= 0; got {self.events!r}")
        if not _is_int(self.partitions) or self.partitions < 1:
            raise JobDefinitionError(f"NexmarkConfig partitions must be an integer >= 1; got {self.partitions!r}")
        if not isinstance(self.event_rate, (int, float)) or not 0 < self.event_rate < math.inf \
                or not isinstance(self.out_of_order, (int, float)) or not 0 <= self.out_of_order < math.inf:
            raise JobDefinitionError("NexmarkConfig event_rate must be > 0 and out_of_order >= 0 (finite numbers); "
                                     f"got {self.event_rate!r} and {self.out_of_order!r}")
        if not _is_int(self.seed):
            raise JobDefinitionError(f"NexmarkConfig seed must be an integer; got {self.seed!r}")
        if not _is_int(self.base_time) or abs(self.base_time) >= 2**62:  # times are int64 milliseconds
            raise JobDefinitionError(f"NexmarkConfig base_time must be an integer number of milliseconds below 2**62; "
                                     f"got {self.base_time!r}")
        for name, least in (("hot_auction_ratio", 1), ("hot_seller_ratio", 1), ("hot_bidder_ratio", 1),
                            ("active_people", 1), ("in_flight_auctions", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < least:
                raise JobDefinitionError(f"NexmarkConfig {name} must be an integer >= {least}; got {value!r}")
        check_rate("NexmarkConfig", self.rate)

    @classmethod
    def from_env(cls, **defaults: Any) -> "NexmarkConfig":
        """Settings from NEXMARK_EVENTS, NEXMARK_PARTITIONS, NEXMARK_RATE, NEXMARK_SEED and
        NEXMARK_OUT_OF_ORDER, over `defaults` (how the jobs in jobs/nexmark are sized)."""
        env = os.environ
        values = dict(defaults)
        for name, field, cast in (("EVENTS", "events", int), ("PARTITIONS", "partitions", int),
                                  ("RATE", "rate", float), ("SEED", "seed", int),
                                  ("OUT_OF_ORDER", "out_of_order", float)):
            if env.get(f"NEXMARK_{name}"):
                values[field] = cast(env[f"NEXMARK_{name}"])
        return cls(**values)
