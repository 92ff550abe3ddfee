"""Starting and stopping a real Ray head for a test module: `ray start --head --block`
on free ports with the dashboard and Jobs API on 127.0.0.1 and token authentication on
(Ray 2.60's default), in its own temp dir and process session. It is stopped by the ids
of the processes it started: SIGTERM to `ray start`, then SIGKILL to whatever of its
process tree is left (an autoscaler's fake worker nodes are in it). Never `ray stop`,
which stops every Ray on the machine."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.helpers.support import free_port, wait_until

RAYSTREAM = [sys.executable, "-m", "raystream.cli"]


@dataclass
class Head:
    gcs: str  # HOST:PORT, for RAY_ADDRESS
    jobs_api: str  # http://HOST:PORT
    pid: int


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing of this test process's own Ray."""
    # The session's key file stays (RAYSTREAM_CHECKPOINT_KEY_FILE): a user's shell has one in ~/.raystream.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "RAYSTREAM_CHECKPOINT_KEY"}
    env.update(extra)
    return env


@contextmanager
def ray_head(log_dir: Path, *args: str, env: dict[str, str] | None = None, gcs_port: int = 0) -> Iterator[Head]:
    gcs, dashboard = gcs_port or free_port(), free_port()
    ports = {f"--{name}": free_port() for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
    log = open(log_dir / "head.log", "w")
    temp_dir = tempfile.mkdtemp(prefix="rshead")  # short: Ray's socket paths live under it
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
         f"--temp-dir={temp_dir}", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         *(f"{k}={v}" for k, v in ports.items()), *args],
        stdout=log, stderr=subprocess.STDOUT, env=env or user_env(), start_new_session=True)
    try:
        wait_until(lambda: subprocess.run([*RAYSTREAM, "jobs", "list", "--address", f"http://127.0.0.1:{dashboard}"],
                                          env=user_env(), capture_output=True).returncode == 0,
                   "the head's Jobs API", timeout=90)
        yield Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", proc.pid)
    finally:
        tree = _tree(proc.pid)
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this module started, and nothing else
            proc.wait()
        for p in tree + _tree(proc.pid):  # processes that outlived their parent (fake worker nodes)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
