"""Whether a schedule of the simulation depends on anything but its seed.

A failing seed is only worth its number if RAYSTREAM_SIM_SEED=<seed> plays the same
schedule again. `fingerprint` plays one and digests what happened and what it left: its
outcome, the trace, the world's log, the committed output (local files, S3 objects,
PostgreSQL rows) and the checkpoint storage's keys (their bytes carry wall-clock times
and the output directory, which no decision reads).

Run as a module, it prints `<seed> <fingerprint>` per seed:

    python -m tests.simulation.replay --out DIR [--perturb] SEED...

`--perturb` changes everything a schedule must not depend on: the seeds run in reverse
order (what one schedule leaves in the process meets the next), the wall clock jumps
ahead by up to a minute at every read, the garbage collector runs at a hair trigger,
another thread takes uuid4s all along, and the output directory has a longer name. Run
it under another PYTHONHASHSEED as well (test_replay.py does both).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import random
import re
import sys
import threading
import time
import uuid
from typing import Any

from .sim import Scenario, SimFailure, play_schedule

_HEX = re.compile(r"\b[0-9a-f]{12,}\b")


def fingerprint(seed: int, out_dir: str) -> str:
    """Play schedule `seed` writing under `out_dir`; a digest of what it did and left."""
    scenario = Scenario(seed, out_dir)
    try:
        play_schedule(scenario)
        outcome = "ok"
    except SimFailure as exc:
        outcome = str(exc).split("\n", 1)[0]
    t = scenario.trace

    def plain(text: str) -> str:  # snapshot checksums cover the output directory's name
        return _HEX.sub("<hex>", text.replace(out_dir, "<out>"))

    h = hashlib.sha256()
    for part in (outcome, t.attempts, t.crashes, t.coordinators, t.compactions, t.commits, t.refused, t.rewinds,
                 t.missing_staged, t.sink_errors, t.late, *scenario.world.log):
        h.update(plain(json.dumps(part, default=str)).encode() + b"\n")
    for root, dirs, files in os.walk(out_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read().replace(out_dir.encode(), b"<out>")
            h.update(os.path.relpath(path, out_dir).encode() + b"\0" + hashlib.sha256(data).digest())
    for (bucket, key), data in sorted(scenario.s3.objects.items()):
        h.update(f"{bucket}/{key}".encode() + b"\0" + hashlib.sha256(data).digest())
    if scenario.pg is not None:
        for table in sorted(scenario.pg.tables):
            h.update(json.dumps([table, scenario.pg.rows(table)], default=str, sort_keys=True).encode())
    h.update("\n".join(sorted(scenario.storage.objects)).encode())
    return f"{h.hexdigest()[:16]} {outcome[:120]}"


def _perturb() -> None:
    """What a schedule must not depend on, changed for the rest of this process."""
    jumps = random.Random()  # unseeded: each run of the process jumps differently
    ahead = [0.0]
    for name in ("time", "monotonic", "perf_counter"):
        real = getattr(time, name)

        def read(real: Any = real) -> float:
            ahead[0] += jumps.choice([0.0, 0.001, 0.5, 7.0, 60.0])
            return real() + ahead[0]

        setattr(time, name, read)
    time.time_ns = lambda: int(time.time() * 1e9)
    gc.set_threshold(25, 2, 2)

    def take_uuids() -> None:  # a Ray or pytest helper thread of the same process
        while True:
            uuid.uuid4()
            time.sleep(0.0005)

    threading.Thread(target=take_uuids, daemon=True).start()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="a directory for the schedules' output")
    parser.add_argument("--perturb", action="store_true")
    parser.add_argument("seeds", type=int, nargs="+")
    args = parser.parse_args(argv)
    os.fsync = lambda fd: None  # power loss is not simulated (as test_protocol.py)
    logging.disable(logging.WARNING)  # the protocol's warnings about injected faults: thousands of lines
    seeds = args.seeds
    out = args.out
    if args.perturb:
        _perturb()
        seeds = seeds[::-1]
        out = os.path.join(out, "a-directory-with-a-longer-name")
    for seed in seeds:
        print(seed, fingerprint(seed, os.path.join(out, f"out-{seed}")), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
