"""The quiet terminal: Ray's notices about what raystream handles are dropped unless -v."""
import logging

import pytest

from raystream._runtime.control import quiet

DIED = ("A worker died or was killed while executing a task by an unexpected system error. To troubleshoot the "
        "problem, check the logs for the dead worker. Worker PID: 123 Worker exit type: SYSTEM_ERROR")


@pytest.fixture
def level():
    """Set the raystream logger's level (as -v does) for one test."""
    logger = logging.getLogger("raystream")
    before = logger.level
    yield logger.setLevel  # setLevel, not an attribute: it also clears the logger's cache
    logger.setLevel(before)


@pytest.fixture
def printed():
    lines = []
    yield lines, quiet.filtered(lambda data, *args, **kwargs: lines.extend(data["lines"]))


def test_raylet_notices_about_dead_workers_are_dropped_and_everything_else_kept(printed, level):
    lines, print_kept = printed
    level(logging.WARNING)
    print_kept({"pid": "raylet", "lines": [DIED], "is_err": False}, ignore_prefix=False)
    print_kept({"pid": "raylet", "lines": ["WARNING: 14 PYTHON worker processes have been started on node", "other"]})
    print_kept({"pid": 4242, "lines": [DIED, "a user's print"]})  # a worker's own output is never touched
    assert lines == ["other", DIED, "a user's print"]


def test_with_verbose_nothing_is_dropped(printed, level):
    lines, print_kept = printed
    level(logging.INFO)
    print_kept({"pid": "raylet", "lines": [DIED]})
    assert lines == [DIED]


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_token_warning_is_filtered_from_rays_logger_only_when_quiet(level):
    quiet.before_ray_starts()
    quiet.before_ray_starts()  # idempotent
    token_logger = logging.getLogger(quiet._TOKEN_LOGGER)
    assert sum(isinstance(f, quiet._TokenWarning) for f in token_logger.filters) == 1
    keep = Keep()
    token_logger.addHandler(keep)  # Ray's loggers do not propagate to the root, where caplog listens
    try:
        level(logging.WARNING)
        token_logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
        token_logger.warning("something else")
        level(logging.INFO)
        token_logger.warning("Token authentication is enabled for this Ray cluster (verbose)")
    finally:
        token_logger.removeHandler(keep)
    assert keep.messages == ["something else", "Token authentication is enabled for this Ray cluster (verbose)"]


def test_the_ray_internals_the_filter_wraps_exist_in_this_ray():
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    assert callable(worker.print_to_stdstream)
    assert hasattr(global_worker_stdstream_dispatcher, "handlers") and hasattr(global_worker_stdstream_dispatcher, "_lock")
