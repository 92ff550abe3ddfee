"""Recovery in steady state: the billing job (totals only, a file per checkpoint) runs as
fast as it can with 1 s exactly-once checkpoints; a random subtask is killed with SIGKILL; the run measures
the seconds to the first committed output of a checkpoint taken after the kill, the
seconds until throughput is back to 95% of what it was before, and the records read
again. `plot` draws throughput and checkpoint durations over time."""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

import raystream as rs
from raystream.bench.job_files import billing_job
from raystream._runtime.control.actors import spare_count
from raystream.bench.modes import MODES
from raystream.connectors.files.names import written_by
from raystream.sinks import committed_checkpoint

WINDOW = 1.0  # seconds over which a throughput point is taken


@dataclass
class RecoveryRun:
    first_commit_s: float
    back_to_95pct_s: float | None
    records_replayed: int
    steady_events_per_s: float
    kill_at_s: float
    killed: str
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, events, attempt)
    checkpoints: list[tuple[float, float]] = field(default_factory=list)  # (t completed, duration)

    def as_json(self) -> dict[str, Any]:
        return {"first_commit_s": self.first_commit_s, "back_to_95pct_s": self.back_to_95pct_s,
                "records_replayed": self.records_replayed, "steady_events_per_s": self.steady_events_per_s,
                "killed": self.killed}


def rate_at(timeline: list[tuple[float, int, int]], i: int) -> float | None:
    """Events/s over the WINDOW before sample i, within one attempt (counters restart at a restore)."""
    t, events, attempt = timeline[i]
    for j in range(i - 1, -1, -1):
        tj, ej, aj = timeline[j]
        if aj != attempt:
            return None
        if t - tj >= WINDOW:
            return (events - ej) / (t - tj)
    return None


def measure_recovery(directory: str, events: int = 20_000_000, seed: int = 1, warmup: float = 6.0,
                     spares: bool | float = 30.0) -> RecoveryRun:
    """`spares`: `RuntimeConfig.recovery_spares` (the default keeps them after 30 s: the
    kill comes once they are up, which the run checks: on a loaded machine their
    processes take seconds to start, and a recovery then waits for them)."""
    if spares is not True and spares is not False:
        warmup = max(warmup, float(spares) + 3.0)
    out = os.path.join(directory, f"recovery-out-{spares}")
    # one file per subtask and checkpoint: a checkpoint's output is visible when it commits
    # (FileSink's default rolling would show it only when its file rolls, up to 60 s later)
    os.environ.update(BILLING_INVOICES="0", BILLING_ROLL="checkpoint")
    try:
        job = billing_job(events, MODES["exactly_once"], os.path.join(directory, "recovery-chk"), out)
    finally:
        os.environ.pop("BILLING_INVOICES")
        os.environ.pop("BILLING_ROLL")
    job = job.with_options(runtime=dataclasses.replace(job.runtime, recovery_spares=spares))
    handle = job.start()
    t0 = time.perf_counter()
    timeline: list[tuple[float, int, int]] = []
    checkpoints: list[tuple[float, float]] = []
    seen: set[int] = set()

    def poll() -> rs.JobStatus:
        s = handle.status()
        now = time.perf_counter() - t0
        step = s.steps.get("usage")
        timeline.append((now, step.records_out if step else 0, s.attempt))
        if s.checkpoints.last_id and s.checkpoints.last_id not in seen:
            seen.add(s.checkpoints.last_id)
            checkpoints.append((now, s.checkpoints.last_duration))
        if s.state in ("failed", "finished", "stopped"):
            raise SystemExit(f"the recovery run ended early ({s.state}); give it more events")
        return s

    def committed_after_kill(attempt: int) -> bool:
        """Whether a file of a checkpoint an attempt after `attempt` took is committed (a
        checkpoint that was in flight at the kill and commits after it does not count)."""
        names = os.listdir(out) if os.path.isdir(out) else []
        return any(committed_checkpoint(n) and written_by(n, 4) > attempt for n in names)

    status = poll()
    while not (status.state == "running" and status.checkpoints.completed >= 2 and timeline[-1][0] >= warmup):
        time.sleep(0.1)
        status = poll()
    if spares is not False:  # the spares have started (on a loaded machine they take seconds to)
        status = _until_spares_up(handle, poll)
    rates = [r for i in range(len(timeline)) if timeline[i][0] > warmup - 3
             and (r := rate_at(timeline, i)) is not None]
    steady = statistics.median(rates)
    rng = random.Random(seed)
    killed = rng.choice(sorted(status.pids))
    killed_in = status.attempt
    kill_at = time.perf_counter() - t0
    os.kill(status.pids[killed], signal.SIGKILL)
    first_commit = back = None
    deadline = kill_at + 60
    while time.perf_counter() - t0 < deadline and (first_commit is None or back is None):
        time.sleep(0.05)
        status = poll()
        now = timeline[-1][0]
        if first_commit is None and committed_after_kill(killed_in):
            first_commit = now - kill_at
        r = rate_at(timeline, len(timeline) - 1)
        if back is None and status.attempt > 1 and r is not None and r >= 0.95 * steady:
            back = now - kill_at
    end = time.perf_counter() - t0 + 3
    while time.perf_counter() - t0 < end:  # a few seconds more for the picture
        time.sleep(0.1)
        status = poll()
    handle.stop()
    handle.wait()
    if first_commit is None:
        raise SystemExit("no output was committed within 60 s of the kill")
    return RecoveryRun(first_commit, back, status.records_replayed, steady, kill_at, killed, timeline, checkpoints)


def _until_spares_up(handle: rs.JobHandle, poll: Callable[[], rs.JobStatus]) -> rs.JobStatus:
    """Poll until the coordinator has the idle spares the job keeps (`spare_actors` caps
    them below one a subtask), their processes started."""
    supervisor = handle._supervisor
    coordinator = supervisor.coordinator
    count = spare_count(supervisor.job.runtime, supervisor.plan)
    deadline = time.perf_counter() + 60
    while True:
        status = poll()
        try:
            if len(ray.get(coordinator.spare_pids.remote(), timeout=0.5)) >= count:
                return status
        except ray.exceptions.GetTimeoutError:
            pass  # a spare is still starting
        if time.perf_counter() > deadline:
            raise SystemExit("the recovery spares did not start within 60 s")
        time.sleep(0.1)


def plot(run: RecoveryRun, path: str, title: str) -> None:
    """Throughput and checkpoint duration over time, the kill marked (needs matplotlib:
    pip install 'raystream[bench]')."""
    try:  # optional: only the picture needs it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'raystream[bench]'") from None
    points = [(run.timeline[i][0], r) for i in range(len(run.timeline)) if (r := rate_at(run.timeline, i)) is not None]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    top.plot([t for t, _ in points], [r / 1e3 for _, r in points])
    top.axhline(0.95 * run.steady_events_per_s / 1e3, linestyle=":", color="gray", label="95% of steady")
    top.set_ylabel("thousand events/s")
    top.legend(loc="lower right")
    bottom.bar([t for t, _ in run.checkpoints], [d for _, d in run.checkpoints], width=0.3)
    bottom.set_ylabel("checkpoint s")
    bottom.set_xlabel("seconds since start")
    for ax in (top, bottom):
        ax.axvline(run.kill_at_s, color="red", label="SIGKILL")
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
