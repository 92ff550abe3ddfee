"""Running one workload in one mode and measuring it from the outside: the job's status
sampled every `POLL` seconds (events read, checkpoints as they complete) and the job's
processes through psutil (CPU seconds, resident memory)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil  # the bench extra: pip install 'raystream[bench]'
import ray

import raystream as rs
from raystream.bench.modes import MODES, Mode, Workload
from raystream.bench.synthetic import changed_state_job

POLL = 0.1


@dataclass
class Sample:
    t: float  # seconds since the job started
    events: int
    attempt: int
    rss: int = 0  # resident bytes of the job's processes


@dataclass
class Run:
    """What one run of a workload in one mode measured."""

    workload: str
    mode: str
    events: int
    events_per_s: float  # steady state: between 10% and 90% of the input
    whole_run_events_per_s: float  # from start() to the end, start-up included
    startup_s: float  # from start() to every subtask running, Ray already up
    cpu_s_per_m_events: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    checkpoints: int
    checkpoint_p50_s: float | None
    checkpoint_p99_s: float | None
    alignment_share: float | None  # of checkpoint time, spent aligning barriers
    bytes_per_checkpoint: float | None  # snapshots plus compacted bases, per checkpoint
    peak_rss_mb: float
    rss_growth_mb: float | None  # peak RSS between 50% and 90% of the input, less that between 10% and 50%
    state_keys_peak: int | None = None  # the most keys `Workload.state_step` held at once (its subtasks summed)
    ratio_to_none: float | None = None
    baseline_events_per_s: float | None = None  # the same computation in one Python process
    distribution_ratio: float | None = None  # events_per_s / baseline_events_per_s
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, events), not in the JSON


class ProcessWatch:
    """CPU seconds and the peak of the summed resident memory of a job's processes."""

    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self.procs: dict[int, psutil.Process] = {}
        self.peak_rss = 0

    def sample(self, pids: list[int]) -> int:
        """Sample the processes; returns their summed resident bytes."""
        rss = 0
        for pid in pids:
            try:
                proc = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
                times = proc.cpu_times()
                self.cpu[pid] = times.user + times.system
                rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def steady_rate(samples: list[Sample], total: int, running_at: float) -> float:
    """Events/s between the samples at 10% and 90% of the input (start-up and drain
    excluded); for a run too short for that (the counters are sampled every 0.5 s), the
    rate from the moment every subtask ran to the end."""
    lo = next((s for s in samples if s.events >= 0.1 * total), None)
    hi = next((s for s in reversed(samples) if s.events <= 0.9 * total), None)
    if lo is None or hi is None or hi.t - lo.t < 1.0:
        return total / max(samples[-1].t - running_at, 1e-9)
    return (hi.events - lo.events) / (hi.t - lo.t)


def rss_growth(samples: list[Sample], total: int) -> float | None:
    """MB by which the job's memory grew from the first to the second half of the steady
    state (near 0: flat; a queue that grows with the backlog shows here)."""
    def peak(lo: float, hi: float) -> int:
        return max((s.rss for s in samples if lo * total <= s.events <= hi * total), default=0)
    first, second = peak(0.1, 0.5), peak(0.5, 0.9)
    return (second - first) / 2**20 if first and second else None


def state_bytes(storage: str) -> int:
    """Bytes of compacted bases a run wrote (they are outside the checkpoints' snapshots)."""
    total = 0
    for root, _, files in os.walk(storage):
        if f"{os.sep}state{os.sep}" in root + os.sep:
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def state_keys(handle: rs.JobHandle, step: str) -> int:
    """The keys `step`'s subtasks hold now (handle.metrics()'s state_keys, summed)."""
    return sum(row["state_keys"] for row in handle.metrics().table.to_pylist() if row["step"] == step)


def run_workload(workload: Workload, mode: Mode, storage: str) -> Run:
    job = workload.build(mode, storage)
    watch = ProcessWatch()
    samples: list[Sample] = []
    checkpoints: dict[int, tuple[float, float, int]] = {}  # id -> (duration, alignment, bytes)
    t0 = time.perf_counter()
    handle = job.start()
    running_at = None
    keys_peak: int | None = None
    while True:
        status = handle.status()
        now = time.perf_counter() - t0
        if running_at is None and status.state != "starting":
            running_at = now
        c = status.checkpoints
        if c.last_id and c.last_id not in checkpoints:
            checkpoints[c.last_id] = (c.last_duration, c.last_alignment, c.last_bytes)
        rss = watch.sample(list(status.pids.values()) + [status.coordinator_pid])
        samples.append(Sample(now, workload.count(status), status.attempt, rss))
        if workload.state_step is not None:
            keys = state_keys(handle, workload.state_step)
            keys_peak = keys if keys_peak is None else max(keys_peak, keys)
        if status.state in ("finished", "failed", "stopped"):
            break
        time.sleep(POLL)
    result = handle.wait()
    elapsed = time.perf_counter() - t0
    running_at = elapsed if running_at is None else running_at
    samples.append(Sample(elapsed, workload.events, samples[-1].attempt))
    # the final checkpoint at the end of input is not periodic: left out of the figures
    final = max(checkpoints, default=None)
    periodic = [v for k, v in checkpoints.items() if k != final]
    durations = [d for d, _, _ in periodic]
    latencies = [x for out in result.outputs.get("out", []) if isinstance(out, dict) for x in out["latencies"]]
    n_ckpt = len(checkpoints)
    return Run(
        workload=workload.name, mode=mode.name, events=workload.events,
        events_per_s=steady_rate(samples, workload.events, running_at),
        whole_run_events_per_s=workload.events / elapsed,
        startup_s=running_at,
        cpu_s_per_m_events=watch.cpu_seconds / workload.events * 1e6,
        latency_p50_s=percentile(latencies, 0.5), latency_p99_s=percentile(latencies, 0.99),
        checkpoints=len(periodic),
        checkpoint_p50_s=percentile(durations, 0.5), checkpoint_p99_s=percentile(durations, 0.99),
        alignment_share=(sum(a for _, a, _ in periodic) / sum(durations)) if periodic and sum(durations) else None,
        bytes_per_checkpoint=((sum(b for _, _, b in checkpoints.values()) + state_bytes(storage)) / n_ckpt)
        if n_ckpt else None,
        peak_rss_mb=watch.peak_rss / 2**20, rss_growth_mb=rss_growth(samples, workload.events),
        state_keys_peak=keys_peak, timeline=[(s.t, s.events) for s in samples],
    )


def changed_state(keys: int, events: int, storage: str) -> dict[str, Any]:
    """Bytes written per exactly-once checkpoint against the pickled size of the keyed
    state that changed in its epoch (`ChangedStateSink`): per incremental checkpoint
    (median and max), and over the run (compacted bases and the first, full snapshot
    included)."""
    handle = changed_state_job(events, keys, storage).start()
    written: dict[int, int] = {}
    while True:
        status = handle.status()
        if status.checkpoints.last_id:
            written.setdefault(status.checkpoints.last_id, status.checkpoints.last_bytes)
        if status.state in ("finished", "failed", "stopped"):
            break
        time.sleep(POLL)
    result = handle.wait()
    changed: dict[int, int] = {}
    for out in result.outputs["out"]:
        for n, size in out["changed"].items():
            changed[n] = changed.get(n, 0) + size
    ids = sorted(n for n in written if n in changed and changed[n] and n != min(written))
    ratios = [written[n] / changed[n] for n in ids]
    return {"keys": keys, "events": events, "checkpoints": len(ids),
            "changed_kb_p50": statistics.median(changed[n] for n in ids) / 2**10 if ids else None,
            "written_kb_p50": statistics.median(written[n] for n in ids) / 2**10 if ids else None,
            "ratio_p50": statistics.median(ratios) if ratios else None, "ratio_max": max(ratios, default=None),
            "ratio_run": (sum(written.values()) + state_bytes(storage)) / max(1, sum(changed.values()))}


def tiny_job() -> rs.Job:
    job = rs.Job("bench-startup", parallelism=1, checkpoint=rs.CheckpointConfig(
        storage=os.path.join(os.environ.get("TMPDIR", "/tmp"), "raystream-bench-startup")))
    job.source("n", rs.sources.SequenceSource(10)).map("double", lambda x: 2 * x).sink(
        "out", rs.sinks.CollectSink())
    return job


#: Seconds between two warm runs: a notebook's next run comes seconds after the last, and
#: the driver's spare actors (`RuntimeConfig.spare_actors`) start in that time.
THINK_TIME = 3.0


def warm_startup(repeat: int = 3) -> float:
    """Seconds to run a ten-record job end to end with Ray already up and a job run just
    before (median of `repeat`, each `THINK_TIME` after the one before)."""
    tiny_job().run()
    times = []
    for _ in range(repeat):
        time.sleep(THINK_TIME)
        t0 = time.perf_counter()
        tiny_job().run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cold_startup() -> float:
    """Seconds from a new Python process's `import raystream` to the end of a ten-record
    job, starting a Ray of its own (measured in that process)."""
    out = subprocess.run([sys.executable, "-m", "raystream.bench", "--cold-probe"], capture_output=True, text=True,
                         timeout=300, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cold_s"])


def cold_probe() -> None:
    """Run in the subprocess of `cold_startup`: from the process's start (interpreter and
    imports included) to the end of the job, which starts a local Ray of its own."""
    tiny_job().run()
    print(json.dumps({"cold_s": time.time() - psutil.Process().create_time()}))


def machine() -> dict[str, Any]:
    return {"arch": platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "system": platform.system(), "ray": ray.__version__,
            "raystream": rs.__version__, "date": time.strftime("%Y-%m-%d", time.gmtime())}


def as_json(run: Run) -> dict[str, Any]:
    raw = asdict(run)
    raw.pop("timeline")
    return raw


__all__ = ["MODES", "Run", "run_workload", "warm_startup", "cold_startup", "changed_state", "machine"]
