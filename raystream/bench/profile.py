"""`python -m raystream.bench.profile WORKLOAD [--mode M] [--seconds S] [--scale X] [--out DIR]`

Where a workload's time goes, subtask by subtask: runs one workload of the suite in one
mode, and once a tenth of its input is read, samples every subtask process (and the
coordinator) with py-spy for `--seconds` (100 samples a second, without pausing them).
Prints each process's share of the samples in which it was on a CPU and the functions it
was in most (self time, the innermost frame, and the raystream functions it spent the
most time under), and leaves py-spy's collapsed stacks in `--out` for a flame graph.

py-spy reads other processes' memory: it needs ptrace permission (root, or
`kernel.yama.ptrace_scope=0`). It is in the dev extra (`pip install -e ".[dev]"`).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from raystream.bench.measure import MODES
from raystream.bench.workloads import workloads

RATE = 100  # samples a second


@dataclass
class Profile:
    """One process's samples: its stacks (outermost frame first) and how often each came."""

    name: str
    stacks: collections.Counter = field(default_factory=collections.Counter)

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def self_time(self, top: int) -> list[tuple[str, float]]:
        """The innermost frames most sampled, each with its share of the samples."""
        counts: collections.Counter = collections.Counter()
        for stack, n in self.stacks.items():
            counts[stack[-1]] += n
        return [(frame, n / max(1, self.samples)) for frame, n in counts.most_common(top)]

    def under(self, top: int, prefix: str = "raystream") -> list[tuple[str, float]]:
        """The frames in `prefix`'s files under which the most samples came, each counted
        once per sample however deep it recurs."""
        counts: collections.Counter = collections.Counter()
        for stack, n in self.stacks.items():
            for frame in set(stack):
                if f"({prefix}" in frame or f"/{prefix}/" in frame:
                    counts[frame] += n
        return [(frame, n / max(1, self.samples)) for frame, n in counts.most_common(top)]


def read_collapsed(name: str, path: str) -> Profile:
    """py-spy's `--format raw` output: one line per distinct stack, frames joined by ";"
    (outermost first), then a space and the count."""
    profile = Profile(name)
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                profile.stacks[tuple(_short(f) for f in stack.split(";"))] += int(count)
    return profile


def _short(frame: str) -> str:
    """`fn (path/to/raystream/x/y.py:12)` -> `fn (raystream/x/y.py)`: one entry per function."""
    fn, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/raystream/", "/site-packages/", "/lib/python"):
        if marker in path:
            path = path[path.index(marker) + 1:]
            break
    return f"{fn} ({path})"


def sample(pids: dict[str, int], seconds: float, out: str) -> list[Profile]:
    """py-spy on each process at once for `seconds`; their profiles."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: pip install py-spy (it is in the dev extra)")
    procs = {name: subprocess.Popen(
        [spy, "record", "--nonblocking", "--format", "raw", "--rate", str(RATE), "--duration", str(int(seconds)),
         "--pid", str(pid), "--output", os.path.join(out, f"{name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name, pid in pids.items()}
    profiles = []
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=seconds + 60)
        path = os.path.join(out, f"{name}.txt")
        if proc.returncode != 0 or not os.path.exists(path):
            print(f"{name}: py-spy failed: {err.strip()[-300:]}")
            continue
        profiles.append(read_collapsed(name, path))
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m raystream.bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload")
    parser.add_argument("--mode", default="exactly_once", choices=sorted(MODES))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--scale", type=float, default=3.0, help="input sizes times this (long enough to sample)")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--out", help="where py-spy's collapsed stacks go (default: a new temporary directory)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="raystream-profile-")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="raystream-profile-") as directory:
        found = workloads(directory, args.scale)
        if args.workload not in found:
            raise SystemExit(f"unknown workload {args.workload!r}; one of: {', '.join(found)}")
        workload = found[args.workload]
        handle = workload.build(MODES[args.mode], os.path.join(directory, "checkpoints")).start()
        deadline = time.monotonic() + 300
        while True:
            status = handle.status()
            if status.state != "running" and status.state != "starting":
                raise SystemExit(f"the job ended ({status.state}) before a tenth of its input: raise --scale")
            if status.state == "running" and workload.count(status) >= 0.1 * workload.events:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the job read less than a tenth of its input in 300 s")
            time.sleep(0.05)
        before = workload.count(status)
        t0 = time.perf_counter()
        profiles = sample({**status.pids, "coordinator": status.coordinator_pid}, args.seconds, out)
        rate = (workload.count(handle.status()) - before) / (time.perf_counter() - t0)
        handle.stop()
        handle.wait()  # stop() only asks: the job still writes its checkpoints until it ends
    print(f"{args.workload}, {args.mode}: {rate:,.0f} events/s while sampled ({args.seconds:.0f} s at {RATE}/s; "
          "shares are of each process's samples on a CPU)")
    for profile in sorted(profiles, key=lambda p: -p.samples):
        busy = profile.samples / (RATE * args.seconds)
        print(f"\n{profile.name}: on a CPU {busy:.0%} of the time")
        print("  self:  " + "\n         ".join(f"{share:5.1%}  {frame}" for frame, share in profile.self_time(args.top)))
        print("  under: " + "\n         ".join(f"{share:5.1%}  {frame}" for frame, share in profile.under(args.top)))
    print(f"\ncollapsed stacks: {out}")


if __name__ == "__main__":
    main()
