"""What the commands share: the console, loading a job file, the run options, and the
error line."""
from __future__ import annotations

import contextlib
import logging
import os
import runpy
import sys
import traceback
from typing import Any, Iterator, NoReturn

import click
from rich.console import Console
from rich.text import Text

from raystream.config import Guarantee
from raystream.errors import JobDefinitionError, RaystreamError
from raystream.job import Job, loading_job_file

logger = logging.getLogger(__name__)

_verbosity = 0


def configure_logging(verbose: int) -> None:
    """Plain lines by default (one per recovery, say); -v adds INFO and where each line came
    from, -vv DEBUG. `raystream -v run` and `raystream run -v` both count."""
    global _verbosity
    _verbosity = max(_verbosity, verbose)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if _verbosity else "%(message)s"
    logging.basicConfig(level=logging.WARNING - 10 * min(_verbosity, 2), format=fmt, force=True)


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        configure_logging(value)


#: `-v` after a command: `raystream run job.py -v`.
verbose_option = click.option("-v", "--verbose", count=True, expose_value=False, callback=_verbose_callback,
                              help="More logging (-vv for debug).")

#: Off a terminal (a log, a pipe, CI), lines are as long as they are: no wrap at 80 columns.
_PLAIN_WIDTH = 250


def make_console(stderr: bool = False) -> Console:
    """A console that prints what it is given literally: a message with brackets (a line
    of the user's code, a URL) is never read as rich markup."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else _PLAIN_WIDTH
    return Console(markup=False, highlight=False, stderr=stderr, width=width)


def load_job_file(path: str) -> dict[str, Any]:
    """Execute a job file and return its globals; its functions pickle by value. The file
    defines `job` and runs nothing when imported (docs/guide/jobs.md: the job file convention)."""
    if not os.path.isfile(path):
        raise click.UsageError(f"job file {path!r} does not exist")
    try:
        with loading_job_file(path):
            namespace = runpy.run_path(path, run_name="__raystream_job__")
    except RaystreamError:  # a definition error: its own one line
        raise
    except SyntaxError as exc:  # the file, the line and what is wrong: no runpy frames
        where = f"{exc.filename or path}:{exc.lineno}" if exc.lineno else (exc.filename or path)
        raise JobDefinitionError(f"{where}: {exc.msg}") from None
    except Exception as exc:  # the job file's own code failed: where, and what (-v: the traceback)
        logger.info("importing %s failed", path, exc_info=True)
        mine = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f"{path}:{mine[-1].lineno}" if mine else path
        raise JobDefinitionError(f"{where}: {type(exc).__name__}: {exc} (-v shows the traceback)") from None
    if not isinstance(namespace.get("job"), Job):
        raise click.UsageError(f"{path} must define `job = raystream.Job(...)` at module level")
    return namespace


_RUN_OPTIONS = [
    click.option("--parallelism", type=click.IntRange(min=1), help="Default parallelism of every step."),
    click.option("--guarantee", type=click.Choice([g.value for g in Guarantee]), help="Processing guarantee."),
    click.option("--checkpoint-interval", type=click.FloatRange(min=0, min_open=True),
                 help="Seconds between checkpoints."),
    click.option("--checkpoint-storage", help="Checkpoint directory, file:///dir or s3://bucket/prefix."),
    click.option("--resume", is_flag=True, help="Continue the newest run of the job from its newest checkpoint."),
    click.option("--from", "from_uri", metavar="URI",
                 help="Start a new run from a savepoint or retained checkpoint (a manifest URI, a run, a job root)."),
    click.option("--allow-non-restored-state", is_flag=True,
                 help="With --from: drop the state of steps this job no longer has instead of refusing."),
]


def run_options(command: Any) -> Any:
    """The options of `run`, which `submit` passes on to the run on the cluster."""
    for option in reversed(_RUN_OPTIONS):
        command = option(command)
    return command


def run_args(parallelism: int | None = None, guarantee: str | None = None, checkpoint_interval: float | None = None,
             checkpoint_storage: str | None = None, resume: bool = False, from_uri: str | None = None,
             allow_non_restored_state: bool = False) -> list[str]:
    """The command-line arguments of `raystream run` for these options."""
    args = []
    for flag, value in (("--parallelism", parallelism), ("--guarantee", guarantee),
                        ("--checkpoint-interval", checkpoint_interval), ("--checkpoint-storage", checkpoint_storage),
                        ("--from", from_uri)):
        if value is not None:
            args += [flag, str(value)]
    return args + (["--resume"] if resume else []) + (["--allow-non-restored-state"] if allow_non_restored_state else [])


#: The line `raystream run` prints when a stopped job leaves a savepoint; `jobs stop
#: --savepoint` and `jobs rescale` find it in the logs of a submitted job.
SAVEPOINT_PREFIX = "savepoint: "


def error_line(console: Console, exc: BaseException | str) -> None:
    """`error: <message>`, the label red on a terminal, the message literally as it is."""
    console.print(Text.assemble(("error:", "bold red"), " ", str(exc)))


def fail(console: Console, exc: BaseException | str) -> NoReturn:
    """One red line, exit status 1."""
    error_line(console, exc)
    sys.exit(1)


@contextlib.contextmanager
def one_line_errors(console: Console, what: str) -> Iterator[None]:
    """Any error while doing `what` (reading a checkpoint storage, say) becomes one line;
    -v logs its traceback. S3 without credentials, or no such bucket, is not a crash."""
    try:
        yield
    except RaystreamError as exc:
        fail(console, exc)
    except Exception as exc:
        logger.info("%s failed", what, exc_info=True)
        fail(console, f"{what} failed: {type(exc).__name__}: {exc} (-v shows the traceback)")
