"""Planner: the logical graph of steps becomes a physical graph of chains and subtasks.

A chain is a run of steps that execute inside one actor per subtask: step B joins the
chain of its input A when the edge is a forward edge (equal parallelism, not keyed),
A feeds only B, B reads only A, and chaining is on. Every chain has `parallelism`
subtasks; each subtask is one Ray actor.

Channels: a subtask numbers its input channels 0..n-1, one per (input edge, upstream
subtask that can send to it). A forward edge connects upstream subtask i to subtask i
only; hash and rebalance edges connect every upstream subtask to every subtask.

A window step's late records go to its `<id>.late` step on an edge of their own (a
`late` edge), never chained, so its results and its late records are separate streams.
"""
from __future__ import annotations

import dataclasses

import enum
from dataclasses import dataclass, field
from typing import Any

from raystream.config import Resources, RuntimeConfig
from raystream.graph import JobGraph, Step, StepKind

SubtaskKey = tuple[str, int]  # (chain name, subtask): one subtask of the plan


class EdgeKind(str, enum.Enum):
    """How records cross an edge between two chains."""

    FORWARD = "forward"  # upstream subtask i to downstream subtask i (equal parallelism)
    HASH = "hash"  # by key group, into a keyed step
    REBALANCE = "rebalance"  # round-robin over every downstream subtask


@dataclass(frozen=True)
class Edge:
    upstream: str  # step id
    downstream: str  # step id
    kind: EdgeKind
    late: bool = False  # carries the upstream window step's late records, not its results


@dataclass
class Chain:
    index: int
    steps: list[Step]
    parallelism: int
    in_edges: list[Edge] = field(default_factory=list)  # edges into the head from other chains
    out_edges: list[Edge] = field(default_factory=list)  # edges out of the tail to other chains

    @property
    def name(self) -> str:
        return "+".join(s.step_id for s in self.steps)

    @property
    def head(self) -> Step:
        return self.steps[0]

    @property
    def tail(self) -> Step:
        return self.steps[-1]

    @property
    def resources(self) -> Resources | None:
        """What each subtask actor of the chain asks Ray for (None: the job's defaults)."""
        return Resources.combine([s.resources for s in self.steps if s.resources is not None])

    def actor_resources(self, runtime: RuntimeConfig) -> dict[str, Any]:
        """Ray options of the chain's actors: its steps' Resources over the job's defaults.
        An actor that asks for more than any node has waits until an autoscaler adds one."""
        own = self.resources
        custom = {**(runtime.subtask_resources or {}), **((own.custom if own else None) or {})}
        options: dict[str, Any] = {
            "num_cpus": own.num_cpus if own is not None and own.num_cpus is not None else runtime.subtask_num_cpus,
            "resources": custom or None,
        }
        if own is not None and own.memory is not None:
            options["memory"] = own.memory
        return options


@dataclass
class PhysicalPlan:
    chains: list[Chain]
    chain_of_step: dict[str, int]
    source_partitions: dict[str, list[str]]  # source step id -> partition keys

    def input_channels(self, chain: Chain, subtask: int) -> list[tuple[Edge, int]]:
        """(edge, upstream subtask) for each input channel of `subtask`, in channel order."""
        channels: list[tuple[Edge, int]] = []
        for edge in chain.in_edges:
            if edge.kind is EdgeKind.FORWARD:
                channels.append((edge, subtask))
            else:
                up = self.chains[self.chain_of_step[edge.upstream]]
                channels.extend((edge, u) for u in range(up.parallelism))
        return channels

    def channel_index(self, chain: Chain, subtask: int, edge: Edge, upstream_subtask: int) -> int:
        for i, (e, u) in enumerate(self.input_channels(chain, subtask)):
            if e == edge and u == upstream_subtask:
                return i
        raise KeyError((chain.name, subtask, edge, upstream_subtask))

    def partitions_of(self, step_id: str, subtask: int) -> list[str]:
        """Source partitions are dealt to the source's subtasks round-robin."""
        chain = self.chains[self.chain_of_step[step_id]]
        return self.source_partitions[step_id][subtask::chain.parallelism]


def _edge_kind(graph: JobGraph, up: Step, down: Step) -> EdgeKind:
    if down.kind.keyed:
        return EdgeKind.HASH
    if graph.parallelism_of(up) == graph.parallelism_of(down):
        return EdgeKind.FORWARD
    return EdgeKind.REBALANCE


def build_plan(graph: JobGraph, source_partitions: dict[str, list[str]]) -> PhysicalPlan:
    """Group steps into chains and connect the chains."""
    steps = {s.step_id: s for s in graph.steps}
    consumers: dict[str, list[str]] = {sid: [] for sid in steps}
    for step in steps.values():
        for up in step.inputs:
            consumers[up].append(step.step_id)
    for step_id, down in consumers.items():  # a reduce with combine=True: its key_by folds each batch
        step = steps[step_id]
        if step.kind is StepKind.KEY_BY and step.fn is not None and len(down) == 1 and steps[down[0]].combine:
            steps[step_id] = dataclasses.replace(step, fold=steps[down[0]].fn)

    def chains_to_upstream(step: Step) -> bool:
        if not graph.runtime.chaining or len(step.inputs) != 1 or step.kind is StepKind.LATE:
            return False
        up = steps[step.inputs[0]]
        return len(consumers[up.step_id]) == 1 and _edge_kind(graph, up, step) is EdgeKind.FORWARD

    chains: list[Chain] = []
    chain_of_step: dict[str, int] = {}
    for step in steps.values():  # insertion order is a topological order
        if chains_to_upstream(step):
            chain = chains[chain_of_step[step.inputs[0]]]
            chain.steps.append(step)
        else:
            chain = Chain(len(chains), [step], graph.parallelism_of(step))
            chains.append(chain)
        chain_of_step[step.step_id] = chain.index

    for step in steps.values():
        for up_id in step.inputs:
            if chain_of_step[up_id] == chain_of_step[step.step_id]:
                continue
            edge = Edge(up_id, step.step_id, _edge_kind(graph, steps[up_id], step), late=step.kind is StepKind.LATE)
            chains[chain_of_step[step.step_id]].in_edges.append(edge)
            chains[chain_of_step[up_id]].out_edges.append(edge)
    return PhysicalPlan(chains, chain_of_step, source_partitions)
