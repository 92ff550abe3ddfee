"""Keeping Ray's messages about what raystream handles out of the terminal and the notebook.

In the driver Ray prints a warning that token authentication is on (at each start of
a local Ray), and for every worker that dies the raylet's multi-line "A worker died or
was killed" message, plus a warning whenever many actors start at once. raystream
starts many actors by design, recovers from the deaths and prints one line per
recovery itself (`Recovery.line`), so these are dropped from what the driver prints, and
so is what raystream's actors write to stderr (a failed actor's traceback, the warnings
of a step: a job's failure is one line of raystream's; the user's own tasks keep theirs); Ray's log files (under its session directory) keep them all. Off a
terminal Ray's prefixes carry no ANSI codes. With `-v` (the `raystream` logger at INFO
or below) nothing is dropped.

Ray has no public switch for this: the filter wraps the handler Ray registers on its
log dispatcher and the function its error listener prints with, both private to Ray
2.60 (the version pyproject.toml pins); tests/unit/_runtime/control/test_quiet.py checks they exist.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from ray._private import worker as ray_worker
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

logger = logging.getLogger(__name__)

_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_WARNING = "Token authentication is enabled for this Ray cluster"
_RAYLET_NOISE = ("A worker died or was killed", "PYTHON worker processes have been started")
_HANDLER = "ray_print_logs"


def verbose() -> bool:
    return logging.getLogger("raystream").isEnabledFor(logging.INFO)


class _TokenWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not record.getMessage().startswith(_TOKEN_WARNING)


def drop_line(data: dict[str, Any], line: str) -> bool:
    """Whether a line Ray would print in the driver is one raystream handles."""
    return data.get("pid") == "raylet" and any(noise in line for noise in _RAYLET_NOISE)


def filtered(print_logs: Callable[..., None]) -> Callable[..., None]:
    def print_kept(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if not verbose() and data.get("is_err") and str(data.get("actor_name") or "").startswith("raystream:"):
            return  # stderr of raystream's actors (a failed actor's traceback, warnings): in Ray's log files
        if not verbose() and data.get("pid") == "raylet":
            lines = [line for line in data.get("lines", []) if not drop_line(data, line)]
            if not lines:
                return
            data = {**data, "lines": lines}
        print_logs(data, *args, **kwargs)

    print_kept.raystream_filter = True  # type: ignore[attr-defined]
    return print_kept


def before_ray_starts() -> None:
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in a log file or a pipe
    token_logger = logging.getLogger(_TOKEN_LOGGER)
    if not any(isinstance(f, _TokenWarning) for f in token_logger.filters):
        token_logger.addFilter(_TokenWarning())


def after_ray_started() -> None:
    """Filter both ways Ray prints worker and raylet messages in the driver: the handler on
    its log dispatcher (worker output), and the function its error listener calls (a
    worker's death)."""
    if not getattr(ray_worker.print_to_stdstream, "raystream_filter", False):
        ray_worker.print_to_stdstream = filtered(ray_worker.print_to_stdstream)
    with dispatcher._lock:
        dispatcher.handlers = [
            (name, handler if name != _HANDLER or getattr(handler, "raystream_filter", False) else filtered(handler))
            for name, handler in dispatcher.handlers
        ]
