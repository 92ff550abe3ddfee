"""Connecting this process to Ray: the cluster named by RAY_ADDRESS, with its token, or a
local Ray started here.

Ray 2.60 starts clusters with token authentication. A client connecting to "auto" picks
up a token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), but one
connecting to an explicit address, or calling the Jobs API, sends none unless
RAY_AUTH_MODE=token is set, and fails with a raw AuthenticationError. `use_cluster_token`
does for every address what Ray does for "auto".
"""
from __future__ import annotations

import logging
import os

import ray
from ray._raylet import AuthenticationTokenLoader, Config

from raystream._runtime import quiet
from raystream.errors import ClusterConnectionError

logger = logging.getLogger(__name__)

_AUTH_MODE = "RAY_AUTH_MODE"


def use_cluster_token() -> bool:
    """Send the token at hand to clusters; True when token authentication is on. An
    explicit RAY_AUTH_MODE wins. (Ray has no public switch for this: Config.initialize
    makes this process read the environment again, as Ray itself does for "auto".)"""
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


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray this process is connected to; else RAY_ADDRESS; else start a local Ray.

    A local Ray started here binds its node address to 127.0.0.1 and runs no dashboard.
    It is always a new one ("local"): Ray would otherwise join the last cluster that
    `ray start` ran on this machine, even one that is gone.
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
