"""Checks of job definitions, shared by `Job` and the stream classes: each raises
JobDefinitionError naming the step to fix."""
from __future__ import annotations

import re
from typing import Any, Callable

from raystream.config import Resources
from raystream.errors import JobDefinitionError
from raystream.event_time import EventTime

#: Step ids and job names (they name checkpoint folders and files): use `fullmatch`, since
#: `$` with `match` also accepts a trailing newline ("billing\n").
STEP_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\Z")


def check_step_id(step_id: object) -> str:
    if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id):
        raise JobDefinitionError(
            f"step id must be a string of letters, digits, '_', '-' or '.' (at most 100, "
            f"starting with a letter or digit); got {step_id!r}"
        )
    return step_id


def check_fn(step_id: str, what: str, fn: object) -> Callable[..., Any]:
    if not callable(fn):
        raise JobDefinitionError(f"step {step_id!r}: {what} must be callable; got {type(fn).__name__} {fn!r}")
    return fn  # type: ignore[return-value]


def check_resources(step_id: str, resources: object) -> Resources | None:
    if resources is not None and not isinstance(resources, Resources):
        raise JobDefinitionError(f"step {step_id!r}: resources must be a raystream.Resources; got {resources!r}")
    return resources


def check_event_time(step_id: str, event_time: object, *, allow_none: bool = False) -> None:
    if event_time is None and allow_none:
        return
    if not isinstance(event_time, EventTime):
        raise JobDefinitionError(f"step {step_id!r}: event_time must be a raystream.EventTime; got {event_time!r}")


def check_parallelism(where: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobDefinitionError(f"{where}: parallelism must be an integer >= 1; got {value!r}")
    return value


