"""`raystream run`: a job on local Ray or the cluster at RAY_ADDRESS, with a live progress
table, a summary, and optional chaos (SIGKILLs of random subtasks)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Iterator

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from raystream.cli.common import SAVEPOINT_PREFIX, error_line, load_job_file, make_console, run_options, verbose_option
from raystream.errors import RaystreamError
from raystream.job import Job
from raystream.result import CheckpointStats, JobResult, JobStatus

logger = logging.getLogger(__name__)


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
            self.console.print(f"chaos: SIGKILL {name} (pid {pid})")
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
        table = Table(title=f"{status.job_name}: {status.state}, {status.elapsed:.0f}s, {status.subtasks} subtasks")
        for column in ("step", "in/s", "out/s", "in", "out"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for step_id, m in status.steps.items():
            rate_in = rate_out = 0.0
            if previous is not None and step_id in previous[1].steps:
                dt = max(now - previous[0], 1e-6)
                p = previous[1].steps[step_id]
                rate_in, rate_out = (m.records_in - p.records_in) / dt, (m.records_out - p.records_out) / dt
            table.add_row(step_id, f"{rate_in:,.0f}", f"{rate_out:,.0f}", f"{m.records_in:,}", f"{m.records_out:,}")
        self.live.update(Group(table, Text(checkpoint_line(status.checkpoints, status.restarts,
                                                            status.records_replayed))))


def checkpoint_line(cp: CheckpointStats, restarts: int, replayed: int) -> str:
    """One line: the checkpoints so far and the newest one, then restarts if any."""
    if cp.completed == 0:
        line = "no checkpoint yet" + (f" ({cp.failed} failed)" if cp.failed else "")
    else:
        line = (f"checkpoints {cp.completed} done, {cp.failed} failed; the last, #{cp.last_id}: "
                f"{cp.last_duration * 1000:.0f} ms, alignment {cp.last_alignment * 1000:.0f} ms, "
                f"{cp.last_bytes:,} bytes")
    return line + (f"; restarts {restarts}, {replayed:,} records replayed" if restarts else "")


def print_summary(console: Console, result: JobResult) -> None:
    console.print(checkpoint_line(result.checkpoints, result.restarts, result.records_replayed))
    table = Table(title=f"{result.job_name}: {result.state} in {result.duration:.2f}s")
    for column in ("step", "records in", "records out"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step_id, m in result.steps.items():
        table.add_row(step_id, f"{m.records_in:,}", f"{m.records_out:,}")
    console.print(table)


@contextlib.contextmanager
def starting(console: Console, job: Job) -> Iterator[None]:
    """What the 5-20 s before a job runs are spent on: a spinner on a terminal, else a line."""
    where = f"the Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "a local Ray"
    what = f"starting {job.name} on {where}"
    if console.is_terminal:
        with console.status(what + "..."):
            yield
    else:
        make_console(stderr=True).print(what)
        yield


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command()
@verbose_option
@click.argument("jobfile", type=click.Path(dir_okay=False))
@run_options
@click.option("--chaos", type=click.IntRange(min=0), default=0,
              help="SIGKILL this many random subtask processes while the job runs (local Ray only).")
@click.option("--seed", type=int, help="Random seed of --chaos (printed when not given).")
def run(jobfile: str, parallelism: int | None, guarantee: str | None, checkpoint_interval: float | None,
        checkpoint_storage: str | None, resume: bool, from_uri: str | None, allow_non_restored_state: bool,
        chaos: int, seed: int | None) -> None:
    """Run the job defined in JOBFILE until its sources end."""
    console = make_console()
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
            namespace["setup"](resume or bool(from_uri))  # a continued run keeps its inputs
        with starting(console, job):
            handle = job.start(resume=resume, from_checkpoint=from_uri,
                               allow_non_restored_state=allow_non_restored_state)
        with Progress(console) as progress:
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
        if result.savepoint:  # plain, unwrapped: `jobs stop --savepoint` reads it from the logs
            click.echo(SAVEPOINT_PREFIX + result.savepoint)
        if monkey is not None:
            console.print(f"chaos: killed {len(monkey.killed)} subtask processes: "
                          + ", ".join(f"{name} (pid {pid})" for name, pid in monkey.killed))
        report = namespace.get("report")
        if callable(report) and report(result) is False:
            sys.exit(1)
    except RaystreamError as exc:
        error_line(console, exc)
        sys.exit(1)


