"""Connecting this process to Ray: the cluster named by RAY_ADDRESS, with its token, or a
local Ray started here.

Ray 2.60 starts clusters with token authentication. A client connecting to "auto" picks
up a token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), but one
connecting to an explicit address, or calling the Jobs API, sends none unless
RAY_AUTH_MODE=token is set, and fails with a raw AuthenticationError. `use_cluster_token`
does for every address what Ray does for "auto". Ray writes ~/.ray/auth_token readable by
every user of the machine (0644); `protect_token_files` makes it owner-only.

What a local Ray started here listens on, and who can reach it: `LOCAL_RAY_LISTENERS`.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import ray
from ray._raylet import AuthenticationTokenLoader, Config

from raystream._runtime.control import quiet
from raystream.errors import ClusterConnectionError

logger = logging.getLogger(__name__)

_AUTH_MODE = "RAY_AUTH_MODE"
_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"

#: What listens in a local Ray started by raystream: process -> (reachable from other
#: machines, what it serves). Ray 2.60 on Linux rewrites the node address 127.0.0.1 to the
#: machine's routable one and then opens its servers on every interface; only the
#: dashboard (not started: include_dashboard=False) could be kept on 127.0.0.1. "token":
#: Ray refuses a call without the cluster's token. docs/security.md mirrors this table and
#: tests/integration/test_listening.py checks the running processes against it.
LOCAL_RAY_LISTENERS: dict[str, tuple[bool, str]] = {
    "gcs_server": (True, "the GCS (gRPC; token)"),
    "raylet": (True, "node manager and object manager (gRPC; token)"),
    "driver": (True, "the driver's core worker (gRPC; token)"),
    "worker": (True, "each worker's core worker (gRPC; token)"),
    "dashboard agent": (True, "the metrics export /metrics (Prometheus HTTP; NO token), agent HTTP and gRPC (token)"),
    "runtime env agent": (True, "runtime environments (HTTP; token)"),
    "dashboard": (True, "the dashboard process's own /metrics (Prometheus HTTP, port 44227; NO token); no UI, "
                        "no Jobs API"),
    "autoscaler monitor": (True, "the autoscaler's /metrics (Prometheus HTTP, port 44217; NO token)"),
}


def _token_files() -> list[Path]:
    """The token files Ray reads: the one RAY_AUTH_TOKEN_PATH names, and ~/.ray/auth_token
    (where `ray get-auth-token --generate` and a local Ray write one)."""
    files = [Path.home() / ".ray" / "auth_token"]
    if os.environ.get(_TOKEN_PATH):
        files.insert(0, Path(os.path.expanduser(os.environ[_TOKEN_PATH])))
    return files


def protect_token_files() -> None:
    """Make Ray's token files owner-only: Ray 2.60 writes ~/.ray/auth_token with the umask
    (0644 as a rule), so every user of the machine could read the token and run code on the
    cluster. A file of this user loses its group and other bits (INFO); a file of another
    user is left alone, with a warning that names it and the fix."""
    for path in _token_files():
        try:
            info = path.stat()
        except OSError:  # none there (or unreadable: Ray says so when it needs it)
            continue
        mode = stat.S_IMODE(info.st_mode)
        if not mode & 0o077:
            continue
        if info.st_uid != os.geteuid():
            logger.warning("Ray's token file %s can be read by other users (mode %04o) and belongs to another user: "
                           "its owner should run `chmod 600 %s`", path, mode, path)
            continue
        try:
            os.chmod(path, mode & 0o700)
        except OSError as exc:
            logger.warning("Ray's token file %s can be read by other users (mode %04o) and could not be made "
                           "owner-only (%s): run `chmod 600 %s`", path, mode, exc, path)
            continue
        logger.info("made Ray's token file %s owner-only (mode %04o, was %04o)", path, mode & 0o700, mode)


def use_cluster_token() -> bool:
    """Send the token at hand to clusters; True when token authentication is on. An
    explicit RAY_AUTH_MODE wins. (Ray has no public switch for this: Config.initialize
    makes this process read the environment again, as Ray itself does for "auto".)"""
    protect_token_files()
    mode = os.environ.get(_AUTH_MODE)
    if mode is not None:
        return mode.lower() == "token"
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return False
    os.environ[_AUTH_MODE] = "token"
    Config.initialize("")
    return True


def connection_error(address: str, exc: BaseException, *, has_token: bool) -> ClusterConnectionError:
    """One line: what failed and what to set."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 5:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    if "Authentication" in text or "InvalidAuthToken" in text or "401" in text:
        what = "the cluster refused this client's token" if has_token else "the cluster wants a token and none is set"
        fix = ("set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head prints it), "
               "or copy it to ~/.ray/auth_token")
    else:
        what = "nothing answered there"
        fix = "check the address (the head's HOST:6379, or http://HOST:8265 for the Jobs API) and that the head runs"
    return ClusterConnectionError(f"cannot connect to the Ray cluster at {address}: {what}; {fix}")


#: Seconds to wait for the GCS at RAY_ADDRESS to accept a connection.
PROBE_TIMEOUT = 15.0


def reachable(address: str, timeout: float = PROBE_TIMEOUT) -> None:
    """ConnectionError unless something accepts a TCP connection at `address` (HOST:PORT,
    or ray://HOST:PORT); other forms ("auto", a session) are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray this process is connected to; else RAY_ADDRESS; else start a local Ray.

    A local Ray started here runs no dashboard and asks for 127.0.0.1, which Ray 2.60 keeps
    only for the dashboard (`LOCAL_RAY_LISTENERS` says what listens where). It is always a
    new one ("local"): Ray would otherwise join the last cluster that `ray start` ran on
    this machine, even one that is gone.
    """
    if not ray.is_initialized():
        quiet.before_ray_starts()
        _init(num_cpus)
    quiet.after_ray_started()  # also when the user started Ray


def _init(num_cpus: int | None = None) -> None:
    address = os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        has_token = use_cluster_token()
        try:
            reachable(address)  # Ray itself retries an address where nothing listens for minutes
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            raise connection_error(address, exc, has_token=has_token) from None
        return
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    protect_token_files()  # ray.init writes ~/.ray/auth_token when there is none
