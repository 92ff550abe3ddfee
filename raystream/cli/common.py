"""What the commands share: loading a job file, the run options, and the error line."""
from __future__ import annotations

import os
import runpy
import sys
from typing import Any, NoReturn

import click
from rich.console import Console

from raystream.config import Guarantee
from raystream.job import Job


def load_job_file(path: str) -> dict[str, Any]:
    """Execute a job file and return its globals; its functions pickle by value."""
    if not os.path.isfile(path):
        raise click.UsageError(f"job file {path!r} does not exist")
    namespace = runpy.run_path(path, run_name="__raystream_job__")
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


def fail(console: Console, exc: Exception) -> NoReturn:
    """One red line, exit status 1."""
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    sys.exit(1)
