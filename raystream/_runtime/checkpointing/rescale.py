"""Restoring state by step id: which old snapshots a new subtask reads, and how their
states merge into the state it starts from.

State belongs to steps, not to chains or subtask indexes, so a checkpoint restores into
a job whose chaining changed, whose steps run at other parallelisms, or that gained
stateless steps (docs/savepoints.md). For new subtask i of a chain at parallelism p:

- keyed state of a step: from old subtask i when the step ran at p before (the same
  key groups), else from every old subtask, keeping the keys of i's key groups. Window
  contents and timers are keyed state, so they move with their keys; a timed step's
  watermark is the oldest of the old subtasks it takes keys from, so no record on time
  for its window before is late after; a watermark generator's newest times go with
  their source partitions, and an event-time step's own time is the oldest of all its
  old subtasks (which inputs a subtask reads may change: partitions come and go), or
  none when one of them had seen no record; what a keyed step's values are (its
  `step_meta`) comes from the old subtasks it takes keys from, for the step to check;
- source offsets: every old subtask of the source step lends its partitions' offsets,
  those it carried for partitions gone at the time included (a partition continues
  wherever it is assigned now; see SourceReader);
- sink transactions and writer state, counters, audit tallies and error counts: those
  of every old subtask j with j % p == i, so each is carried exactly once and sums
  stay right. Pending transactions are committed by their new owner (T4); writer
  states of several old subtasks are combined by `Sink.combine_writer_states`.

A step of the checkpoint that kept state and is missing from the job is refused by
name, unless the run allows non-restored state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.plan.physical import Chain
from raystream._runtime.state.snapshot import PartRef, SnapshotMeta, SubtaskState
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.state.tally import add_digests
from raystream._runtime.time.watermarks import GREATEST
from raystream.config import Guarantee
from raystream.errors import RestoreError
from raystream.graph import Step, StepKind
from raystream.sink_api import SinkContext

DEAD_LETTERS = "dead_letters."  # prefix of a chain's dead-letter writer id: dead_letters.<head step>


def chain_steps(chain_name: str) -> list[str]:
    """Step ids of a chain, from its name (step ids never contain '+')."""
    return chain_name.split("+")


def unmatched_steps(manifest: Manifest, step_ids: list[str]) -> list[str]:
    """Steps that kept state in `manifest` and that the job no longer has."""
    return sorted(set(manifest.state_steps) - set(step_ids))


def check_matches(manifest: Manifest, step_ids: list[str], allow_non_restored_state: bool) -> None:
    """Refuse a checkpoint with state no step of the job takes, naming those steps."""
    unmatched = unmatched_steps(manifest, step_ids)
    if unmatched and not allow_non_restored_state:
        raise RestoreError(
            f"checkpoint {manifest.checkpoint_id} of run {manifest.run_id} has state for steps "
            f"{', '.join(unmatched)} that this job does not have; keep those step ids, or start with "
            "allow_non_restored_state=True (--allow-non-restored-state) to drop their state")


def snapshots_for(manifest: Manifest, chain: Chain, subtask: int) -> list[SnapshotMeta]:
    """The old snapshots that subtask `subtask` of `chain` restores from."""
    mine = {s.step_id for s in chain.steps}
    source = chain.head.step_id if chain.head.kind is StepKind.SOURCE else None
    timed = {s.step_id for s in chain.steps if s.kind is StepKind.EVENT_TIME}  # need every old subtask's time
    metas: list[SnapshotMeta] = []
    for name in manifest.chains:
        old_steps = set(chain_steps(name))
        if not old_steps & mine:
            continue
        old = manifest.snapshots_of(name)
        if len(old) == chain.parallelism and source not in old_steps and not timed & old_steps:
            metas.append(old[subtask])  # the same key groups and the same sink writer
        else:
            metas.extend(old)
    return metas


def _owner(step_id: str) -> str:
    return step_id[len(DEAD_LETTERS):] if step_id.startswith(DEAD_LETTERS) else step_id


def _audit_step(name: str) -> str:
    return name.split(":", 1)[1]  # "source:<step>" / "sink:<step>"


@dataclass
class RestoredState:
    """The merged state one new subtask starts from."""

    checkpoint_id: int
    source_offsets: dict[str, Any] = field(default_factory=dict)
    source_restored: bool = False  # the checkpoint holds this chain's source: a partition it lacks is new
    keyed: dict[str, dict[Any, Any]] = field(default_factory=dict)
    sink_states: dict[str, list[Any]] = field(default_factory=dict)  # writer states of the old subtasks taken over
    sink_txns: dict[str, list[Any]] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    audit: dict[str, tuple[int, int]] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)  # snapshots read per storage tier
    errors: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)  # the oldest of the merged subtasks'
    # window steps' key groups whose old subtask's watermark was ahead: {step: {group: watermark}}
    group_watermarks: dict[str, dict[int, int]] = field(default_factory=dict)
    event_times: dict[str, dict[str, int]] = field(default_factory=dict)  # watermark generators' newest times
    late: dict[str, int] = field(default_factory=dict)
    step_meta: dict[str, list[Any]] = field(default_factory=dict)  # of the old subtasks it takes keys from
    parts: list[PartRef] | None = None  # the keyed-state parts this subtask continues (changelog.py, I5)


def merge_states(states: list[SubtaskState], chain_steps_now: list[Step], subtask: int, parallelism: int,
                 max_parallelism: int) -> RestoredState:
    """Combine old snapshots into the state of new subtask `subtask` of the chain made of
    `chain_steps_now`, running at `parallelism`."""
    head = chain_steps_now[0].step_id
    steps = {s.step_id for s in chain_steps_now}
    dead_letters = DEAD_LETTERS + head
    p = parallelism
    merged = RestoredState(checkpoint_id=max((s.checkpoint_id for s in states), default=0))
    groups: set[int] | None = None
    ahead: dict[str, dict[int, int]] = {}  # step -> key group -> the watermark it comes with
    for state in states:
        if head in chain_steps(state.chain):
            merged.source_offsets.update(state.source_offsets)
            merged.source_restored = True
        same = state.parallelism == p
        gives_keys = _gives_keys(state, subtask, p, max_parallelism)
        for step_id, mark in getattr(state, "watermarks", {}).items():  # absent in older snapshots
            if step_id in steps and gives_keys:  # review 40: not those of subtasks whose keys go elsewhere
                merged.watermarks[step_id] = min(mark, merged.watermarks.get(step_id, mark))
                own = getattr(state, "group_watermarks", {}).get(step_id, {})  # absent before 0.7.1
                carried = ahead.setdefault(step_id, {})
                for g in _groups_given(state, subtask, p, max_parallelism):
                    carried[g] = max(mark, own.get(g, mark), carried.get(g, mark))
        for step_id, times in getattr(state, "event_times", {}).items():
            if step_id in steps:  # a source's, by partition (the copies of one are equal)
                for partition, t in times.items():
                    if partition and partition != GREATEST:  # an event-time step's: below
                        target = merged.event_times.setdefault(step_id, {})
                        target[partition] = max(t, target.get(partition, t))
        if "step_meta" in vars(state):  # absent in snapshots of raystream before it: they say nothing
            for step_id in steps:
                if step_id in state.step_meta:
                    meta = state.step_meta[step_id]
                elif state.keyed.get(step_id):
                    meta = NO_META  # state of a step that keeps no meta (a per-record step of this id)
                else:
                    continue
                if gives_keys:
                    merged.step_meta.setdefault(step_id, []).append(meta)
        for step_id, table in state.keyed.items():
            if step_id not in steps:
                continue
            target = merged.keyed.setdefault(step_id, {})
            if same:
                if state.subtask == subtask:
                    target.update(table)
            else:
                if groups is None:
                    groups = set(groups_of_subtask(subtask, p, max_parallelism))
                target.update((k, v) for k, v in table.items() if key_group(k, max_parallelism) in groups)
        if state.subtask % p != subtask:
            continue
        for step_id, sink in state.sinks.items():
            if _owner(step_id) not in steps:
                continue
            new_id = dead_letters if step_id.startswith(DEAD_LETTERS) else step_id
            merged.sink_states.setdefault(new_id, []).append(sink.writer_state)
            merged.sink_txns.setdefault(new_id, []).extend(txn for _, txn in sink.pending)
        for step_id, (n_in, n_out) in state.counters.items():
            if _owner(step_id) in steps:
                new_id = dead_letters if step_id.startswith(DEAD_LETTERS) else step_id
                c_in, c_out = merged.counters.get(new_id, (0, 0))
                merged.counters[new_id] = (c_in + n_in, c_out + n_out)
        for name, (count, digest) in getattr(state, "audit", {}).items():  # absent in older snapshots
            if _audit_step(name) in steps:
                c, d = merged.audit.get(name, (0, 0))
                merged.audit[name] = (c + count, add_digests(d, digest))
        for step_id, n in getattr(state, "errors", {}).items():
            if step_id in steps:
                merged.errors[step_id] = merged.errors.get(step_id, 0) + n
        for step_id, n in getattr(state, "late", {}).items():
            if step_id in steps:
                merged.late[step_id] = merged.late.get(step_id, 0) + n
    for step_id, carried in ahead.items():  # R4: judged by their own until the step's passes it
        held = {g: mark for g, mark in carried.items() if mark > merged.watermarks[step_id]}
        if held:
            merged.group_watermarks[step_id] = held
    for step in chain_steps_now:  # an event-time step's own time: the oldest of all its old subtasks
        if step.kind is StepKind.EVENT_TIME:
            olds = [getattr(st, "event_times", {}).get(step.step_id, {}) for st in states
                    if step.step_id in chain_steps(st.chain)]
            times = [old.get("") for old in olds]
            seen = [t for t in times if t is not None]
            idles = step.event_time is not None and step.event_time.idle_after_ms is not None
            # One that saw no record held the watermark at the minimum, unless it would have
            # gone idle (`idle_after`): then the others' held it (a rescaled step kept
            # windows that every old subtask but an empty one had completed from firing).
            if seen and (len(seen) == len(times) or idles):
                merged.event_times.setdefault(step.step_id, {})[""] = min(seen)
            # With idleness, also the newest of them all, which it goes idle at
            # (WatermarkGenerator.greatest): each restored subtask starts at the oldest, and
            # windows the others had completed never fired once all went idle (review of stop 36).
            greatest = [t for old in olds for t in (old.get(""), old.get(GREATEST)) if t is not None]
            if idles and greatest:
                merged.event_times.setdefault(step.step_id, {})[GREATEST] = max(greatest)
    return merged


def combine_writer_states(sink: Any, step_id: str, states: list[Any]) -> Any:
    """The resume state of a sink writer restored from `states` (one per old subtask it took over)."""
    if len(states) <= 1:
        return states[0] if states else None
    return sink.combine_writer_states(step_id, states)


def writer_context(spec: SubtaskSpec, step_id: str, sink: Any, state: RestoredState | None) -> SinkContext:
    """The context of a sink writer (a sink step's, or the chain's dead-letter writer) of
    this subtask, with the writer state it resumes from."""
    return SinkContext(step_id, spec.subtask, spec.parallelism,
                       transactional=spec.guarantee == Guarantee.EXACTLY_ONCE,
                       resume_state=combine_writer_states(sink, step_id, state.sink_states.get(step_id, []))
                       if state else None,
                       run_id=spec.run_id, attempt=spec.attempt, job_name=spec.job_name)


#: The meta of a step's state in a snapshot that keeps `step_meta` but holds none for the
#: step: its state was written by a step that keeps none (a per-record step of the same id).
NO_META: dict[str, Any] = {}


def _groups_given(state: Any, subtask: int, parallelism: int, max_parallelism: int) -> set[int] | range:
    """The key groups of the old subtask's keyed state that new `subtask` takes."""
    mine = groups_of_subtask(subtask, parallelism, max_parallelism)
    if state.parallelism == parallelism:
        return mine if state.subtask == subtask else range(0)
    return set(mine).intersection(groups_of_subtask(state.subtask, state.parallelism, max_parallelism))


def _gives_keys(state: Any, subtask: int, parallelism: int, max_parallelism: int) -> bool:
    """Whether the old subtask's keyed state holds key groups new `subtask` takes."""
    return bool(_groups_given(state, subtask, parallelism, max_parallelism))
