"""Driver side: connect to (or start) Ray, plan the job, hand it to a coordinator actor."""
from __future__ import annotations

import logging
import os
import uuid
from typing import Any, Callable

from raystream._runtime.plan import build_plan
from raystream.errors import RaystreamError, SourceError
from raystream.job import Job
from raystream.result import JobHandle

logger = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray this process is connected to; else RAY_ADDRESS; else start a local Ray.

    A local Ray started here binds its node address to 127.0.0.1 and runs no dashboard.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def start_job(job: Job, progress: Callable[[Any], None] | None = None) -> JobHandle:
    """Plan `job`, list its source partitions (errors stop it here), and start its coordinator."""
    source_partitions: dict[str, list[str]] = {}
    for step in job.steps.values():
        if step.kind == "source":
            try:
                source_partitions[step.step_id] = list(step.source.list_partitions())
            except RaystreamError:
                raise
            except Exception as exc:
                raise SourceError(f"source {step.step_id!r} could not list its partitions: {exc}") from exc
    plan = build_plan(job, source_partitions)

    ensure_ray()
    import ray

    from raystream._runtime.coordinator import JobCoordinator, actor_name

    run_id = uuid.uuid4().hex[:8]
    coordinator = JobCoordinator.options(
        name=actor_name(job.name, run_id, "coordinator"), max_restarts=0,
    ).remote(job, plan, run_id)
    run_ref = coordinator.run.remote()

    def on_exit() -> None:
        ray.kill(coordinator, no_restart=True)

    return JobHandle(job.name, coordinator, run_ref, on_exit)
