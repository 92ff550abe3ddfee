"""What the coordinator hands each subtask of an attempt: its spec, its output edges and
the snapshots it restores from; and, in words, what a chain's subtasks ask Ray for."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.plan.physical import SubtaskKey
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.plan.physical import Chain, EdgeKind, PhysicalPlan
from raystream._runtime.checkpointing.rescale import snapshots_for
from raystream._runtime.plan.specs import OutputSpec, RestoreSpec, SubtaskSpec
from raystream.graph import JobGraph, StepKind


@dataclass
class Wiring:
    job: JobGraph
    plan: PhysicalPlan
    run_id: str
    store: CheckpointStore

    def source_keys(self) -> list[SubtaskKey]:
        return [(c.name, i) for c in self.plan.chains if c.head.kind is StepKind.SOURCE for i in range(c.parallelism)]

    def spec(self, chain: Chain, subtask: int, attempt: int) -> SubtaskSpec:
        head = chain.head
        source = head.kind is StepKind.SOURCE
        return SubtaskSpec(
            job_name=self.job.name, chain_name=chain.name, steps=chain.steps, subtask=subtask,
            parallelism=chain.parallelism, n_inputs=len(self.plan.input_channels(chain, subtask)),
            runtime=self.job.runtime, guarantee=self.job.guarantee, checkpoint_root=self.store.root,
            run_id=self.run_id, attempt=attempt, errors=self.job.errors, audit=self.job.audit,
            checkpoint=self.job.checkpoint,
            source_partitions=self.plan.partitions_of(head.step_id, subtask) if source else [],
            all_partitions=list(self.plan.source_partitions[head.step_id]) if source else [],
            input_sides=[head.sides[head.inputs.index(edge.upstream)]
                         for edge, _ in self.plan.input_channels(chain, subtask)] if head.sides else [],
        )

    def outputs(self, chain: Chain, subtask: int, actors: dict[SubtaskKey, Any]) -> list[OutputSpec]:
        outputs = []
        for edge in chain.out_edges:
            down = self.plan.chains[self.plan.chain_of_step[edge.downstream]]
            targets = [subtask] if edge.kind is EdgeKind.FORWARD else range(down.parallelism)
            outputs.append(OutputSpec(edge.kind, [
                (actors[(down.name, j)], self.plan.channel_index(down, j, edge, subtask)) for j in targets
            ], late=edge.late))
        return outputs

    def restore_spec(self, manifest: Manifest | None, chain: Chain, subtask: int,
                     held: dict[SubtaskKey, Any]) -> RestoreSpec | None:
        """`held`: the object-store copies of this checkpoint's snapshots the coordinator keeps."""
        if manifest is None:
            return None
        metas = snapshots_for(manifest, chain, subtask)
        return RestoreSpec(manifest.checkpoint_id, [(m, held.get((m.chain, m.subtask))) for m in metas],
                           root=self.snapshot_root(manifest))

    def snapshot_root(self, manifest: Manifest) -> str:
        """Where the snapshots of `manifest` live: this run's storage, or its origin's."""
        if manifest.run_id == self.run_id:
            return self.store.root
        origin = self.store.origin_ref(self.run_id)
        assert origin is not None and origin.run_id == manifest.run_id, "a manifest of another run is the run's origin"
        return origin.root

    def short_of(self, keys: list[SubtaskKey], available: dict[str, float]) -> bool:
        """Whether the subtasks `keys` together ask for more of some resource than the
        cluster has free: they wait for resources, not for their processes to start."""
        total: dict[str, float] = {}
        for chain_name, _ in keys:
            for name, amount in self._demand(chain_name).items():
                total[name] = total.get(name, 0.0) + amount
        return any(amount > available.get(name, 0.0) + 1e-9 for name, amount in total.items())

    def _demand(self, chain_name: str) -> dict[str, float]:
        chain = self.plan.chains[self.plan.chain_of_step[chain_name.split("+")[0]]]
        options = chain.actor_resources(self.job.runtime)
        demand = {"CPU": float(options["num_cpus"] or 0), **(options.get("resources") or {})}
        if options.get("memory"):
            demand["memory"] = float(options["memory"])
        return {k: float(v) for k, v in demand.items() if v}

    def needs(self, chain_name: str) -> str:
        """What each subtask of the chain asks Ray for, as "CPU 1, memory 4294967296"."""
        return ", ".join(f"{k} {v:g}" for k, v in self._demand(chain_name).items())
