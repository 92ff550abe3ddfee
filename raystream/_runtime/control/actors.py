"""Starting actors: the subtask actors of an attempt, and spares started before they
are needed.

A new Ray actor costs about a second here: a Python process that imports Ray and
raystream. A job needs a coordinator and one actor per subtask, and a recovery needs an
actor per subtask again, so some are kept ready:
- the driver keeps one blank coordinator for its next job (`driver.CoordinatorSpare`),
  started when a job ends with as many blank subtask actors (`SubtaskSpares`) as that
  job had subtasks, up to `RuntimeConfig.spare_actors`; the first attempt of the next
  job uses them;
- a coordinator also starts a blank actor per subtask for the attempt after a crash
  (`RuntimeConfig.recovery_spares`), by default once its job has run 30 s and has a
  checkpoint to recover to: starting them costs about a CPU-second each, which a
  long-running job pays once and a short one never.
A spare has never been configured, so it holds nothing of an earlier job or attempt and
the protocols do not change: R1 still kills every actor of an attempt that ended, and a
new attempt's actors are still new to it. Spares are owned by their coordinator and die
with it. Only subtasks that ask Ray for no resources (the default) use spares: an idle
spare that held CPUs would keep them from other work.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import ray

from raystream._runtime.transport.blocking import in_thread
from raystream._runtime.plan.physical import SubtaskKey
from raystream._runtime.plan.physical import PhysicalPlan
from raystream._runtime.subtask.actor import SubtaskActor
from raystream._runtime.control.wiring import Wiring
from raystream.config import RuntimeConfig

logger = logging.getLogger(__name__)


def uses_spares(options: dict[str, Any]) -> bool:
    """Whether a subtask with these Ray options can run on a spare (it asks for nothing)."""
    return not options.get("num_cpus") and not options.get("resources") and not options.get("memory")


def spare_count(runtime: RuntimeConfig, plan: PhysicalPlan) -> int:
    """How many spares serve a job: one per subtask that can use one, up to the setting."""
    return min(runtime.spare_actors,
               sum(c.parallelism for c in plan.chains if uses_spares(c.actor_resources(runtime))))


def new_subtask_actor(name: str | None = None, **options: Any) -> Any:
    """A blank subtask actor; Ray never restarts it (R1 replaces every actor instead)."""
    return SubtaskActor.options(name=name, max_restarts=0, max_task_retries=0, **options).remote()


class SubtaskSpares:
    """Blank subtask actors of one coordinator."""

    def __init__(self, count: int = 0):
        self.count = count
        self.idle: list[Any] = []

    def fill(self) -> None:
        """Start spares until there are `count` (their processes start in the background)."""
        while len(self.idle) < self.count:
            self.idle.append(new_subtask_actor(num_cpus=0))
        while len(self.idle) > self.count:
            ray.kill(self.idle.pop(), no_restart=True)

    def take(self, options: dict[str, Any]) -> Any | None:
        """An idle spare for a subtask with these options, or None."""
        if self.idle and uses_spares(options):
            return self.idle.pop(0)
        return None


_WAITING_CHECK = 1.0  # seconds between checks whether subtasks that have not started lack resources
_DEATH_TIMEOUT = 30.0  # seconds to wait for Ray to report a killed attempt's actors dead


async def start_subtasks(plan: PhysicalPlan, runtime: RuntimeConfig, wiring: Wiring, spares: SubtaskSpares,
                         attempt: int, name: Callable[[SubtaskKey], str], waiting: Callable[[str], None],
                         ) -> tuple[dict[SubtaskKey, Any], dict[str, int]] | str:
    """An actor configured for every subtask of `attempt`, a spare where one is ready (a
    spare that died while idle, with its node, is replaced by a new actor); says through
    `waiting` when some wait for resources. Returns (actors, pid per subtask name), or
    the error of an actor that could not start."""
    chains = {c.name: c for c in plan.chains}
    actors: dict[SubtaskKey, Any] = {}
    from_spares = set()
    for chain in plan.chains:
        options = chain.actor_resources(runtime)
        for i in range(chain.parallelism):
            key = (chain.name, i)
            actors[key] = spares.take(options)
            if actors[key] is None:
                actors[key] = new_subtask_actor(name(key), **options)
            else:
                from_spares.add(key)

    def configure(key: SubtaskKey) -> asyncio.Future:
        return asyncio.ensure_future(actors[key].configure.remote(wiring.spec(chains[key[0]], key[1], attempt)))

    started = {key: configure(key) for key in actors}
    await _until_started(started, wiring, waiting)
    for key in [k for k in from_spares if started[k].exception() is not None]:
        logger.info("a spare for %s[%d] is gone; starting a new actor", *key)
        actors[key] = new_subtask_actor(name(key), **chains[key[0]].actor_resources(runtime))
        started[key] = configure(key)
    await _until_started(started, wiring, waiting)
    try:
        return actors, {f"{c}[{i}]": started[(c, i)].result() for c, i in actors}
    except ray.exceptions.RayError as exc:
        return f"{type(exc).__name__}: {exc}"


async def _until_started(started: dict[SubtaskKey, asyncio.Future], wiring: Wiring, waiting: Callable[[str], None]) -> None:
    """Wait for the actors to start; say once if some wait for resources."""
    pending = {f for f in started.values() if not f.done()}
    said = False
    while pending:
        _, pending = await asyncio.wait(pending, timeout=_WAITING_CHECK)
        keys = [k for k, f in started.items() if f in pending]
        if keys and not said and wiring.short_of(keys, await in_thread(ray.available_resources)):
            # No node has room for them (not merely slow to start): say so once.
            needs = sorted({f"{c}: {wiring.needs(c)}" for c, _ in keys})
            waiting(f"{len(keys)} of {len(started)} subtasks wait for resources ({'; '.join(needs)}); "
                    "an autoscaler adds nodes for them, else they start when resources are free")
            said = True
    waiting("")


async def kill_subtasks(actors: dict[SubtaskKey, Any], runs: dict[SubtaskKey, asyncio.Future], *, wait: bool, what: str) -> None:
    """R1 (its second half): kill the attempt's actors and, with `wait`, wait until Ray
    reports each of them dead (its pending `run()` call, or an `until_killed()` call, fails
    with ActorDiedError), so no process of the attempt still writes when the next restores."""
    for actor in actors.values():
        ray.kill(actor, no_restart=True)
    if not wait:  # the job finished: no next attempt to protect
        return
    deaths = [f if (f := runs.get(k)) is not None and not f.done() else asyncio.ensure_future(a.until_killed.remote())
              for k, a in actors.items()]
    if deaths:
        _, alive = await asyncio.wait(deaths, timeout=_DEATH_TIMEOUT)
        if alive:
            logger.warning("%s: %d subtasks not reported dead after %.0fs", what, len(alive), _DEATH_TIMEOUT)
    for fut in [*runs.values(), *deaths]:  # retrieve every outcome: asyncio warns otherwise
        if fut.done() and not fut.cancelled():
            fut.exception()
