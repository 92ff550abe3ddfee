"""The `raystream` command line.

    raystream run JOBFILE [--parallelism N] [--guarantee G] [--checkpoint-interval S]
                          [--checkpoint-storage URI] [--resume] [--chaos N] [--seed S]
    raystream submit JOBFILE --address http://HEAD:8265 [run options] [--no-follow]
    raystream jobs list|status|logs|stop [ID] --address http://HEAD:8265
    raystream checkpoints audit URI

JOBFILE is a Python file that defines `job` (a raystream.Job). It may also define
`setup(resume)`, called before the run, and `report(result)`, called with the JobResult
after it; a report that returns False makes the command exit with status 1.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import runpy
import signal
import sys
import threading
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from raystream.audit import audit_checkpoints
from raystream.config import Guarantee
from raystream.errors import RaystreamError
from raystream.job import Job
from raystream.result import CheckpointStats, JobResult, JobStatus

logger = logging.getLogger(__name__)


def load_job_file(path: str) -> dict[str, Any]:
    """Execute a job file and return its globals; its functions pickle by value."""
    if not os.path.isfile(path):
        raise click.UsageError(f"job file {path!r} does not exist")
    namespace = runpy.run_path(path, run_name="__raystream_job__")
    if not isinstance(namespace.get("job"), Job):
        raise click.UsageError(f"{path} must define `job = raystream.Job(...)` at module level")
    return namespace


class ChaosMonkey(threading.Thread):
    """Kills random subtask processes of a running job with SIGKILL, one after another:
    each kill waits until the job has recovered from the previous one and completed a
    checkpoint since, so every kill hits a running job."""

    def __init__(self, handle: Any, kills: int, seed: int, console: Console):
        super().__init__(daemon=True, name="raystream-chaos")
        self.handle, self.kills, self.console = handle, kills, console
        self.rng = random.Random(seed)
        self.killed: list[tuple[str, int]] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def _wait_for_checkpoint_after(self, restarts: int, checkpoints: int) -> JobStatus | None:
        while not self._stop_event.wait(0.2):
            status = self.handle.status()
            if status.state in ("finished", "failed", "stopped"):
                return None
            if status.state == "running" and status.restarts >= restarts and \
                    status.checkpoints.completed > checkpoints and status.pids:
                return status
        return None

    def run(self) -> None:
        restarts, checkpoints = 0, 0
        while len(self.killed) < self.kills:
            status = self._wait_for_checkpoint_after(restarts, checkpoints)
            if status is None or self._stop_event.wait(self.rng.uniform(0.0, 1.0)):
                return
            name = self.rng.choice(sorted(status.pids))
            pid = status.pids[name]
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append((name, pid))
            self.console.print(f"chaos: SIGKILL {name} (pid {pid})", highlight=False)
            restarts, checkpoints = status.restarts + 1, status.checkpoints.completed


class Progress:
    """Live per-step rates on a terminal; silent otherwise (the summary still prints)."""

    def __init__(self, console: Console):
        self.console = console
        self.live: Live | None = None
        self.last: tuple[float, JobStatus] | None = None

    def __enter__(self) -> "Progress":
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, status: JobStatus) -> None:
        now = time.monotonic()
        previous, self.last = self.last, (now, status)
        if self.live is None:
            return
        table = Table(title=f"{status.job_name}: {status.state}, {status.elapsed:.0f}s, {status.subtasks} subtasks",
                      caption=checkpoint_line(status.checkpoints, status.restarts, status.records_replayed))
        for column in ("step", "in/s", "out/s", "in", "out"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for step_id, m in status.steps.items():
            rate_in = rate_out = 0.0
            if previous is not None and step_id in previous[1].steps:
                dt = max(now - previous[0], 1e-6)
                p = previous[1].steps[step_id]
                rate_in, rate_out = (m.records_in - p.records_in) / dt, (m.records_out - p.records_out) / dt
            table.add_row(step_id, f"{rate_in:,.0f}", f"{rate_out:,.0f}", f"{m.records_in:,}", f"{m.records_out:,}")
        self.live.update(table)


def checkpoint_line(cp: CheckpointStats, restarts: int, replayed: int) -> str:
    return (f"checkpoints {cp.completed} done, {cp.failed} failed, last #{cp.last_id} "
            f"({cp.last_duration * 1000:.0f} ms, alignment {cp.last_alignment * 1000:.0f} ms, "
            f"{cp.last_bytes:,} bytes); restarts {restarts}; replayed {replayed:,}")


def print_summary(console: Console, result: JobResult) -> None:
    console.print(checkpoint_line(result.checkpoints, result.restarts, result.records_replayed), highlight=False)
    table = Table(title=f"{result.job_name}: {result.state} in {result.duration:.2f}s")
    for column in ("step", "records in", "records out"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step_id, m in result.steps.items():
        table.add_row(step_id, f"{m.records_in:,}", f"{m.records_out:,}")
    console.print(table)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """raystream: exactly-once stream processing on Ray."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_RUN_OPTIONS = [
    click.option("--parallelism", type=click.IntRange(min=1), help="Default parallelism of every step."),
    click.option("--guarantee", type=click.Choice([g.value for g in Guarantee]), help="Processing guarantee."),
    click.option("--checkpoint-interval", type=click.FloatRange(min=0, min_open=True),
                 help="Seconds between checkpoints."),
    click.option("--checkpoint-storage", help="Checkpoint directory, file:///dir or s3://bucket/prefix."),
    click.option("--resume", is_flag=True, help="Continue the newest run of the job from its newest checkpoint."),
]


def run_options(command: Any) -> Any:
    """The options of `run`, which `submit` passes on to the run on the cluster."""
    for option in reversed(_RUN_OPTIONS):
        command = option(command)
    return command


def run_args(parallelism: int | None, guarantee: str | None, checkpoint_interval: float | None,
             checkpoint_storage: str | None, resume: bool) -> list[str]:
    args = []
    for flag, value in (("--parallelism", parallelism), ("--guarantee", guarantee),
                        ("--checkpoint-interval", checkpoint_interval), ("--checkpoint-storage", checkpoint_storage)):
        if value is not None:
            args += [flag, str(value)]
    return args + (["--resume"] if resume else [])


@main.command()
@click.argument("jobfile", type=click.Path(dir_okay=False))
@run_options
@click.option("--chaos", type=click.IntRange(min=0), default=0,
              help="SIGKILL this many random subtask processes while the job runs (local Ray only).")
@click.option("--seed", type=int, help="Random seed of --chaos (printed when not given).")
def run(jobfile: str, parallelism: int | None, guarantee: str | None, checkpoint_interval: float | None,
        checkpoint_storage: str | None, resume: bool, chaos: int, seed: int | None) -> None:
    """Run the job defined in JOBFILE until its sources end."""
    console = Console()
    try:
        namespace = load_job_file(jobfile)
        job: Job = namespace["job"]
        checkpoint = job.checkpoint
        if checkpoint_interval is not None:
            checkpoint = dataclasses.replace(checkpoint, interval=checkpoint_interval)
        if checkpoint_storage is not None:
            checkpoint = dataclasses.replace(checkpoint, storage=checkpoint_storage)
        job = job.with_options(parallelism=parallelism, guarantee=guarantee, checkpoint=checkpoint)
        if callable(namespace.get("setup")):
            namespace["setup"](resume)
        with Progress(console) as progress:
            handle = job.start(resume=resume)
            # SIGTERM (a Ray Jobs stop, a container shutdown) stops the job as Ctrl-C does;
            # set after Ray started, whose own handler would otherwise end the process.
            signal.signal(signal.SIGTERM, _interrupt)
            monkey = None
            if chaos:
                seed = seed if seed is not None else random.randrange(2**31)
                console.print(f"chaos: {chaos} kills, seed {seed}")
                monkey = ChaosMonkey(handle, chaos, seed, console)
                monkey.start()
            try:
                result = handle.wait(progress=progress, interval=0.5)
            except KeyboardInterrupt:
                console.print("stopping: the sources end now, and the job checkpoints and finishes")
                handle.stop()
                result = handle.wait()
            finally:
                if monkey is not None:
                    monkey.stop()
        print_summary(console, result)
        if monkey is not None:
            console.print(f"chaos: killed {len(monkey.killed)} subtask processes: "
                          + ", ".join(f"{name} (pid {pid})" for name, pid in monkey.killed))
        report = namespace.get("report")
        if callable(report) and report(result) is False:
            sys.exit(1)
    except RaystreamError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(1)


@main.group()
def checkpoints() -> None:
    """Inspect a job's checkpoints."""


@checkpoints.command("audit")
@click.argument("uri")
@click.option("--run", "run_id", help="The run to audit (default: the newest with a checkpoint).")
def audit_command(uri: str, run_id: str | None) -> None:
    """Compare what sinks committed with what sources emitted, per checkpoint.

    URI is the job's checkpoint root: <checkpoint storage>/<job name>."""

    console = Console()
    try:
        lines = audit_checkpoints(uri, run_id)
    except RaystreamError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    if not lines:
        console.print(f"no committed checkpoint under {uri}")
        sys.exit(1)
    table = Table(title=f"audit of run {lines[0].run_id}")
    for column in ("checkpoint", "source records", "sink records", "ids", "verdict"):
        table.add_column(column, justify="right")
    for line in lines:
        ids = "same" if line.source_digest == line.sink_digest else "DIFFERENT"
        table.add_row(str(line.checkpoint_id), f"{line.source_records:,}", f"{line.sink_records:,}", ids,
                      "match" if line.matches else "[bold red]MISMATCH[/]")
    console.print(table)
    sys.exit(0 if all(line.matches for line in lines) else 1)


# --- jobs on a Ray cluster (the Jobs API) ---------------------------------------------------

_ADDRESS = click.option("--address", envvar="RAY_API_SERVER_ADDRESS", metavar="URL",
                        help="The cluster's Jobs API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS).")


def _cluster(address: str | None) -> Any:
    # Imported here so that `raystream --help` and `raystream run` on a laptop do not load the Jobs API client.
    from raystream._runtime.submission import Cluster

    if not logging.getLogger().isEnabledFor(logging.INFO):  # the Jobs API client chats at INFO; -v shows it
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("ray.dashboard"):
                logging.getLogger(name).setLevel(logging.WARNING)
    return Cluster(address or "")


def _fail(console: Console, exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    sys.exit(1)


@main.command()
@click.argument("jobfile", type=click.Path(dir_okay=False))
@_ADDRESS
@run_options
@click.option("--no-follow", is_flag=True, help="Print the submission id and return; do not follow the logs.")
def submit(jobfile: str, address: str | None, no_follow: bool, **options: Any) -> None:
    """Run JOBFILE on a Ray cluster: prints the submission id, then follows the job's logs
    until it ends (exit status 0 when it succeeded). JOBFILE's folder is shipped along."""
    from raystream._runtime.submission import follow_until_done

    console = Console()
    try:
        cluster = _cluster(address)
        submission_id = cluster.submit(jobfile, run_args(**options))
    except Exception as exc:  # RaystreamError, or the Jobs API's own (RuntimeError, HTTP errors)
        _fail(console, exc)
    console.print(f"submitted {submission_id}", highlight=False)
    if no_follow:
        return
    status = asyncio.run(follow_until_done(cluster, submission_id, lambda text: console.out(text, end="")))
    console.print(f"{submission_id}: {status}", highlight=False)
    sys.exit(0 if status == "SUCCEEDED" else 1)


@main.group()
def jobs() -> None:
    """Act on jobs submitted to a Ray cluster."""


@jobs.command("list")
@_ADDRESS
def jobs_list(address: str | None) -> None:
    """The cluster's submitted jobs, newest last."""
    console = Console()
    try:
        submitted = _cluster(address).list()
    except Exception as exc:
        _fail(console, exc)
    for job in submitted:  # one plain line each, so ids can be copied and lines grepped
        click.echo(f"{job.submission_id}  {job.status:9s}  {job.entrypoint}")


@jobs.command("status")
@click.argument("submission_id")
@_ADDRESS
def jobs_status(submission_id: str, address: str | None) -> None:
    """The status of one submitted job: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    try:
        click.echo(_cluster(address).status(submission_id))
    except Exception as exc:
        _fail(Console(), exc)


@jobs.command("logs")
@click.argument("submission_id")
@_ADDRESS
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs(submission_id: str, address: str | None, follow: bool) -> None:
    """The logs of one submitted job."""
    from raystream._runtime.submission import follow_until_done

    try:
        cluster = _cluster(address)
        if follow:
            asyncio.run(follow_until_done(cluster, submission_id, lambda text: click.echo(text, nl=False)))
        else:
            click.echo(cluster.logs(submission_id), nl=False)
    except Exception as exc:
        _fail(Console(), exc)


@jobs.command("stop")
@click.argument("submission_id")
@_ADDRESS
def jobs_stop(submission_id: str, address: str | None) -> None:
    """Stop a submitted job."""
    try:
        stopped = _cluster(address).stop(submission_id)
    except Exception as exc:
        _fail(Console(), exc)
    click.echo(f"{submission_id}: {'stopping' if stopped else 'already ended'}")


if __name__ == "__main__":
    main()
