"""The job coordinator: a Ray actor that starts the subtask actors, wires their channels,
watches them, and collects the result.

Run:
  1. Create one SubtaskActor per subtask of every chain and wait until all are up.
  2. Connect every subtask's output edges to the (actor, input channel) pairs of the
     downstream subtasks.
  3. Start `run()` on every subtask. That pending call is also how the coordinator
     learns of a crash: Ray fails it with ActorDiedError when the process dies.
  4. Wait for all of them. The first failure (a user function, a source, a dead actor)
     ends the job; every actor is killed, whatever happened.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray

from raystream._runtime.plan import Chain, PhysicalPlan
from raystream._runtime.subtask import OutputSpec, SubtaskActor, SubtaskReport, SubtaskSpec
from raystream.job import Job
from raystream.result import Failure, JobResult, JobStatus, StepMetrics

logger = logging.getLogger(__name__)


#: Which failure explains a job's end best when several arrive together (lower first).
_SPECIFICITY = {"record": -4, "source": -3, "internal": -2, "crash": -1, "peer": 0}


def actor_name(job_name: str, run_id: str, what: str) -> str:
    """Names make a run's actors findable (ray list actors, tests) and never collide."""
    return f"raystream:{job_name}:{run_id}:{what}"


@dataclass
class JobOutcome:
    result: JobResult | None
    failure: Failure | None


def _sum_steps(order: list[str], reports: list[SubtaskReport]) -> dict[str, StepMetrics]:
    """Counters summed over subtasks, in the job's step order."""
    totals: dict[str, list[int]] = {step_id: [0, 0] for step_id in order}
    for r in reports:
        for step_id, (n_in, n_out) in r.steps.items():
            t = totals.setdefault(step_id, [0, 0])
            t[0] += n_in
            t[1] += n_out
    return {k: StepMetrics(*v) for k, v in totals.items()}


@ray.remote(num_cpus=0)
class JobCoordinator:
    def __init__(self, job: Job, plan: PhysicalPlan, run_id: str):
        self.job = job
        self.plan = plan
        self.run_id = run_id
        self.pids: dict[str, int] = {}
        self.actors: dict[tuple[int, int], Any] = {}  # (chain index, subtask) -> actor
        self.state = "starting"
        self.started = time.monotonic()
        self.last_reports: dict[tuple[int, int], SubtaskReport] = {}

    def _spec(self, chain: Chain, subtask: int) -> SubtaskSpec:
        head = chain.head
        return SubtaskSpec(
            job_name=self.job.name,
            chain_name=chain.name,
            steps=chain.steps,
            subtask=subtask,
            parallelism=chain.parallelism,
            n_inputs=len(self.plan.input_channels(chain, subtask)),
            runtime=self.job.runtime,
            source_partitions=self.plan.partitions_of(head.step_id, subtask) if head.kind == "source" else [],
        )

    def _outputs(self, chain: Chain, subtask: int) -> list[OutputSpec]:
        outputs = []
        for edge in chain.out_edges:
            down = self.plan.chains[self.plan.chain_of_step[edge.downstream]]
            targets = [subtask] if edge.kind == "forward" else range(down.parallelism)
            outputs.append(OutputSpec(edge.kind, [
                (self.actors[(down.index, j)], self.plan.channel_index(down, j, edge, subtask)) for j in targets
            ]))
        return outputs

    async def run(self) -> JobOutcome:
        rt = self.job.runtime
        try:
            for chain in self.plan.chains:  # 1. create
                for i in range(chain.parallelism):
                    self.actors[(chain.index, i)] = SubtaskActor.options(
                        name=actor_name(self.job.name, self.run_id, f"{chain.name}[{i}]"),
                        num_cpus=rt.subtask_num_cpus, max_restarts=0, max_task_retries=0,
                    ).remote(self._spec(chain, i))
            pids = await asyncio.gather(*(a.pid.remote() for a in self.actors.values()))
            self.pids = {f"{self.plan.chains[c].name}[{i}]": pid for (c, i), pid in zip(self.actors, pids)}
            await asyncio.gather(*(  # 2. connect
                self.actors[(c.index, i)].connect.remote(self._outputs(c, i))
                for c in self.plan.chains for i in range(c.parallelism)
            ))
            self.state = "running"
            runs = {asyncio.ensure_future(a.run.remote()): key for key, a in self.actors.items()}  # 3. start
            reports: list[SubtaskReport] = []
            pending = set(runs)
            while pending:  # 4. watch
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failures = [f for f in (self._collect(fut, runs[fut], reports) for fut in done) if f]
                if failures:
                    # Peers of a crashed subtask fail too; give the real cause a moment to arrive.
                    if pending:
                        more, _ = await asyncio.wait(pending, timeout=2.0)
                        failures += [f for f in (self._collect(fut, runs[fut], reports) for fut in more) if f]
                    return self._fail(min(failures, key=lambda f: _SPECIFICITY.get(f.kind, 0)))
            if self.state != "stopped":
                self.state = "finished"
            return JobOutcome(self._result(reports), None)
        finally:
            self._kill_all()

    def _collect(self, fut: asyncio.Future, key: tuple[int, int], reports: list[SubtaskReport]) -> Failure | None:
        """Record a finished run; return its failure, if it failed."""
        try:
            report: SubtaskReport = fut.result()
        except ray.exceptions.RayError as exc:
            name = f"{self.plan.chains[key[0]].name}[{key[1]}]"
            return Failure("crash", f"subtask {name}", "", f"{type(exc).__name__}: {exc}", "")
        self.last_reports[key] = report
        if report.failure is None:
            reports.append(report)
        return report.failure

    def _fail(self, failure: Failure) -> JobOutcome:
        self.state = "failed"
        logger.error("job %s failed: %s %s", self.job.name, failure.step_id, failure.error)
        return JobOutcome(None, failure)

    def _kill_all(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)

    def _result(self, reports: list[SubtaskReport]) -> JobResult:
        outputs: dict[str, Any] = {}
        for report in sorted(reports, key=lambda r: (r.chain_name, r.subtask)):
            for step_id, value in report.sink_results.items():
                outputs.setdefault(step_id, []).append(value)
        for step_id, values in outputs.items():
            if all(isinstance(v, list) for v in values):
                outputs[step_id] = [r for v in values for r in v]
        return JobResult(
            job_name=self.job.name,
            state=self.state,
            duration=time.monotonic() - self.started,
            steps=_sum_steps(list(self.job.steps), reports),
            outputs=outputs,
            max_in_flight_seen=max((r.max_in_flight_seen for r in reports), default=0),
            max_queued_seen=max((r.max_queued_seen for r in reports), default=0),
        )

    async def status(self) -> JobStatus:
        if self.state == "running":
            keys = list(self.actors)
            refs = [asyncio.ensure_future(self.actors[k].metrics.remote()) for k in keys]
            done, _ = await asyncio.wait(refs, timeout=2.0)
            for key, fut in zip(keys, refs):
                if fut in done and fut.exception() is None:
                    self.last_reports[key] = fut.result()
        return JobStatus(
            job_name=self.job.name,
            state=self.state,
            elapsed=time.monotonic() - self.started,
            steps=_sum_steps(list(self.job.steps), list(self.last_reports.values())),
            subtasks=len(self.actors),
            pids=dict(self.pids),
        )

    async def stop(self) -> None:
        """End every source after its current batch; the job drains and finishes."""
        if self.state in ("starting", "running"):
            self.state = "stopped"
        sources = [self.actors[(c.index, i)] for c in self.plan.chains if c.head.kind == "source"
                   for i in range(c.parallelism)]
        await asyncio.gather(*(a.stop_source.remote() for a in sources), return_exceptions=True)
