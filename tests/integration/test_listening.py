"""What a local Ray started by raystream listens on, measured on its processes: each
listener one that `connect.LOCAL_RAY_LISTENERS` lists (the table docs/security.md
mirrors), reachable from other machines only where the table says so, no dashboard, the
metrics export answering without a token as documented, and the token file Ray writes made
owner-only.

The Ray runs in a process of its own, started as a user's program starts it (`ensure_ray`),
with a HOME of its own, so its processes are known by their ids and the token file it
writes is its own.
"""
from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import selectors
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from raystream._runtime.control import connect
from tests.helpers.support import wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]

DRIVER = """
import json, sys
import ray
from raystream._runtime.control.connect import ensure_ray

ensure_ray(num_cpus=1)

@ray.remote
class Probe:
    def ping(self):
        return 1

probe = Probe.remote()
ray.get(probe.ping.remote())  # a worker with an actor listens too
print(json.dumps({"metrics_export_port": ray._private.worker.global_worker.node.metrics_export_port}), flush=True)
sys.stdin.readline()
ray.shutdown()
"""


@dataclass(frozen=True)
class Listener:
    kind: str  # a key of connect.LOCAL_RAY_LISTENERS, or the process name when none fits
    pid: int
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.kind} (pid {self.pid}) on {self.ip}:{self.port}"


@dataclass
class LocalRay:
    driver: subprocess.Popen
    home: pathlib.Path
    metrics_export_port: int

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.driver.pid)
        return [root, *root.children(recursive=True)]

    def listeners(self) -> list[Listener]:
        found = []
        for proc in self.processes():
            try:
                kind = kind_of(proc, self.driver.pid)
                sockets = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            found += [Listener(kind, proc.pid, s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN]
        return found


@pytest.fixture(scope="module", autouse=True)
def _ray() -> None:
    """Not the in-process Ray of the other integration modules: this module's runs below."""


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory) -> Iterator[LocalRay]:
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a user's shell: no cluster, no token
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=home, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        ready = json.loads(read_line(driver, timeout=120))
        ray = LocalRay(driver, home, ready["metrics_export_port"])
        tree = ray.processes()
        wait_until(lambda: any(s.port == ray.metrics_export_port for s in ray.listeners()), "the metrics export")
        yield ray
    finally:
        tree = tree or _tree(driver.pid)
        try:
            driver.stdin.close()  # the driver shuts its Ray down
            driver.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(driver.pid, signal.SIGKILL)  # the session this fixture started, and nothing else
            driver.wait()
        for proc in tree:  # what outlived the driver
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=1):
                line = proc.stdout.readline()
                if line.startswith("{"):
                    return line
                if not line:
                    break
            if proc.poll() is not None:
                break
    raise AssertionError(f"the driver started no local Ray (exit code {proc.poll()})")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kind_of(proc: psutil.Process, driver_pid: int) -> str:
    """Which of Ray's processes this is, in the words of connect.LOCAL_RAY_LISTENERS."""
    if proc.pid == driver_pid:
        return "driver"
    name = proc.name()
    cmdline = " ".join(proc.cmdline())
    named = {"gcs_server": "gcs_server", "raylet": "raylet", "ray::DashboardAgent": "dashboard agent",
             "ray::RuntimeEnvAgent": "runtime env agent"}
    if name in named:
        return named[name]
    scripts = {"ray/dashboard/dashboard.py": "dashboard", "ray/autoscaler/_private/monitor.py": "autoscaler monitor",
               "ray/_private/log_monitor.py": "log monitor"}
    for script, kind in scripts.items():
        if script in cmdline:
            return kind
    return "worker" if name.startswith("ray::") else name


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def test_every_listener_is_one_the_documentation_lists_with_where_it_can_be_reached(local_ray):
    listeners = local_ray.listeners()
    assert {s.kind for s in listeners} >= {"driver", "gcs_server", "raylet", "dashboard agent", "worker"}
    listed = connect.LOCAL_RAY_LISTENERS
    unlisted = [str(s) for s in listeners if s.kind not in listed]
    assert not unlisted, "not in connect.LOCAL_RAY_LISTENERS (and docs/security.md): " + "; ".join(unlisted)
    reachable = [str(s) for s in listeners if not loopback(s.ip) and not listed[s.kind][0]]
    assert not reachable, "reachable from other machines, and documented as loopback only: " + "; ".join(reachable)


def test_the_dashboard_is_not_started(local_ray):
    assert not [s for s in local_ray.listeners() if s.port == 8265]  # include_dashboard=False


def test_the_metrics_export_answers_without_a_token_as_documented(local_ray):
    export = [s for s in local_ray.listeners() if s.port == local_ray.metrics_export_port]
    assert export and {s.kind for s in export} == {"dashboard agent"}
    assert "NO token" in connect.LOCAL_RAY_LISTENERS["dashboard agent"][1]
    with urllib.request.urlopen(f"http://127.0.0.1:{local_ray.metrics_export_port}/metrics", timeout=10) as reply:
        assert reply.status == 200  # no token asked: what docs/security.md warns about


def test_the_token_file_ray_wrote_for_the_local_ray_is_owner_only(local_ray):
    token = local_ray.home / ".ray" / "auth_token"
    assert token.exists()  # Ray 2.60 turns token authentication on for a new local Ray
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
