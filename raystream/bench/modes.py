"""What every benchmark workload is made of: the modes it runs in (guarantee, checkpoint
interval, and for billing whether it deduplicates) and the `Workload` record (how to
build its job, count its events and time its single-process baseline)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import raystream as rs


@dataclass(frozen=True)
class Mode:
    name: str  # "none" | "exactly_once" | "at_least_once" | "at_most_once" | "at_least_once+dedup" | "exactly_once+ttl"
    guarantee: str
    interval: float
    dedup: bool = False  # a dedup step by event id before the stateful steps (billing only)
    ttl: float | None = None  # seconds of processing time: the keyed state's time-to-live (state_ttl only)


MODES = {
    "none": Mode("none", "exactly_once", 1e9),  # only the final checkpoint at the end of input
    "exactly_once": Mode("exactly_once", "exactly_once", 1.0),
    "at_least_once": Mode("at_least_once", "at_least_once", 1.0),
    "at_most_once": Mode("at_most_once", "at_most_once", 1.0),
}

#: The pair billing_dedup runs, whatever --modes says: the article's claim is that the
#: second costs less than the first for the same output.
DEDUP_MODES = {
    "exactly_once": MODES["exactly_once"],
    "at_least_once+dedup": Mode("at_least_once+dedup", "at_least_once", 1.0, dedup=True),
}


#: The pair state_ttl runs: keys that come and go, held forever against held for TTL_SECONDS.
TTL_SECONDS = 1.0
TTL_MODES = {
    "exactly_once": MODES["exactly_once"],
    "exactly_once+ttl": Mode("exactly_once+ttl", "exactly_once", 1.0, ttl=TTL_SECONDS),
}


@dataclass
class Workload:
    name: str
    events: int
    build: Callable[[Mode, str], rs.Job]  # (mode, checkpoint storage) -> job
    count: Callable[[rs.JobStatus], int]  # events read so far
    baseline: Callable[[], float]  # seconds of the single-process loop
    latency: bool = False  # its sink sees creation times
    modes: dict[str, Mode] | None = None  # the modes it always runs in; None: the suite's --modes
    state_step: str | None = None  # a keyed step whose keys (state_keys) are sampled through the run



def records_in(step: str, per: int = 1) -> Callable[[rs.JobStatus], int]:
    return lambda s: s.steps[step].records_in * per if step in s.steps else 0


def records_out(step: str, per: int = 1) -> Callable[[rs.JobStatus], int]:
    return lambda s: s.steps[step].records_out * per if step in s.steps else 0
