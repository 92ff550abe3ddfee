"""The planner groups steps into chains and numbers channels consistently."""
import operator

import pytest

import raystream as rs
from raystream._runtime.plan.physical import build_plan
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource


def wordcount_like(parallelism=2, chaining=True, reduce_parallelism=None):
    job = rs.Job("j", parallelism=parallelism, runtime=rs.RuntimeConfig(chaining=chaining))
    (job.source("src", SequenceSource(10, partitions=4))
        .map("m", str)
        .key_by("k", len)
        .reduce("r", operator.add, parallelism=reduce_parallelism)
        .sink("out", CollectSink()))
    job.validate()
    return job, build_plan(job.freeze(), {"src": ["0", "1", "2", "3"]})


def test_forward_steps_chain_and_keyed_steps_start_a_chain():
    _, plan = wordcount_like()
    assert [c.name for c in plan.chains] == ["src+m+k", "r+out"]
    (edge,) = plan.chains[1].in_edges
    assert (edge.upstream, edge.downstream, edge.kind) == ("k", "r", "hash")


def test_chaining_off_gives_one_actor_per_step():
    _, plan = wordcount_like(chaining=False)
    assert [c.name for c in plan.chains] == ["src", "m", "k", "r", "out"]
    kinds = [e.kind for c in plan.chains for e in c.in_edges]
    assert kinds == ["forward", "forward", "hash", "forward"]


def test_different_parallelism_rebalances():
    job = rs.Job("j", parallelism=2)
    job.source("src", SequenceSource(10)).map("m", str, parallelism=3).sink("out", CollectSink(), parallelism=3)
    plan = build_plan(job.freeze(), {"src": ["0"]})
    assert [c.name for c in plan.chains] == ["src", "m+out"]
    assert plan.chains[1].in_edges[0].kind == "rebalance"
    # every upstream subtask has a channel into every downstream subtask
    assert len(plan.input_channels(plan.chains[1], 0)) == 2


def test_channels_are_numbered_per_edge_and_upstream_subtask():
    _, plan = wordcount_like(parallelism=3)
    r = plan.chains[1]
    edge = r.in_edges[0]
    assert [plan.channel_index(r, 1, edge, u) for u in range(3)] == [0, 1, 2]


def test_union_has_one_channel_per_input_subtask():
    job = rs.Job("j", parallelism=2)
    a = job.source("a", SequenceSource(4))
    b = job.source("b", SequenceSource(4))
    a.union(b).map("m", str).sink("out", CollectSink())
    plan = build_plan(job.freeze(), {"a": ["0"], "b": ["0"]})
    m = plan.chains[plan.chain_of_step["m"]]
    assert m.name == "m+out"
    assert [(e.upstream, u) for e, u in plan.input_channels(m, 1)] == [("a", 1), ("b", 1)]


def test_fan_out_does_not_chain():
    job = rs.Job("j")
    s = job.source("src", SequenceSource(4))
    s.map("a", str).sink("o1", CollectSink())
    s.map("b", str).sink("o2", CollectSink())
    plan = build_plan(job.freeze(), {"src": ["0"]})
    assert [c.name for c in plan.chains] == ["src", "a+o1", "b+o2"]
    assert len(plan.chains[0].out_edges) == 2


def test_partitions_are_dealt_round_robin():
    _, plan = wordcount_like(parallelism=3)
    assert [plan.partitions_of("src", i) for i in range(3)] == [["0", "3"], ["1"], ["2"]]


def test_a_chain_asks_ray_for_the_largest_resources_of_its_steps_over_the_job_defaults():
    job = rs.Job("res", parallelism=2, runtime=rs.RuntimeConfig(subtask_num_cpus=0.5, subtask_resources={"pool": 1}))
    (job.source("src", SequenceSource(10), resources=rs.Resources(num_cpus=1))
        .map("heavy", str, resources=rs.Resources(num_cpus=2, memory=2**30, custom={"highmem": 1}))
        .key_by("k", len)
        .reduce("count", lambda a, b: a, resources=rs.Resources(custom={"pool": 3}))
        .sink("out", CollectSink()))
    plan = build_plan(job.freeze(), {"src": ["0"]})
    first, keyed = plan.chains
    assert first.name == "src+heavy+k" and keyed.name == "count+out"
    assert first.actor_resources(job.runtime) == {"num_cpus": 2, "memory": 2**30,
                                                  "resources": {"pool": 1, "highmem": 1}}
    assert keyed.actor_resources(job.runtime) == {"num_cpus": 0.5, "resources": {"pool": 3}}


def test_resources_are_checked_when_the_step_is_defined():
    job = rs.Job("res")
    with pytest.raises(rs.ConfigError, match="Resources.num_cpus must be a finite number >= 0"):
        rs.Resources(num_cpus=-1)
    with pytest.raises(rs.ConfigError, match="use num_cpus and memory for those"):
        rs.Resources(custom={"CPU": 2})
    with pytest.raises(rs.JobDefinitionError, match="resources must be a raystream.Resources"):
        job.source("src", SequenceSource(1), resources={"num_cpus": 1})


def test_subtasks_are_short_of_resources_only_when_the_cluster_has_less_free_than_they_ask_for(tmp_path):
    from raystream._runtime.state.store import CheckpointStore
    from raystream._runtime.control.wiring import Wiring

    job = rs.Job("w", parallelism=2)
    (job.source("src", SequenceSource(10), resources=rs.Resources(num_cpus=1, custom={"gpu_node": 0.5}))
        .sink("out", CollectSink()))
    graph = job.freeze()
    wiring = Wiring(graph, build_plan(graph, {"src": ["0"]}), "run", CheckpointStore(str(tmp_path)))
    keys = [("src+out", 0), ("src+out", 1)]
    assert wiring.needs("src+out") == "CPU 1, gpu_node 0.5"
    assert not wiring.short_of(keys, {"CPU": 2.0, "gpu_node": 1.0})  # room for both: merely slow to start
    assert wiring.short_of(keys, {"CPU": 1.0, "gpu_node": 1.0})
    assert wiring.short_of(keys[:1], {"CPU": 4.0})  # no node has the custom resource


def test_a_window_step_sends_late_records_on_an_edge_of_their_own_and_a_join_knows_each_channels_side(tmp_path):
    from raystream._runtime.state.store import CheckpointStore
    from raystream._runtime.control.wiring import Wiring
    from raystream.windows import Tumbling

    job = rs.Job("w", parallelism=2)
    a = job.source("a", SequenceSource(10), event_time=rs.EventTime(float)).key_by("ka", str)
    b = job.source("b", SequenceSource(10, partitions=3), event_time=rs.EventTime(float),
                   parallelism=3).key_by("kb", str, parallelism=3)
    joined = a.join("j", b, Tumbling(5), lambda x, y: (x, y))
    joined.sink("out", CollectSink())
    joined.late.sink("late_out", CollectSink())
    graph = job.freeze()
    plan = build_plan(graph, {"a": ["0"], "b": ["0", "1", "2"]})
    assert [c.name for c in plan.chains] == ["a+ka", "b+kb", "j", "out", "j.late+late_out"]
    late = plan.chains[plan.chain_of_step["j.late"]].in_edges[0]
    assert late.late and late.kind == "forward"
    assert not plan.chains[plan.chain_of_step["out"]].in_edges[0].late
    wiring = Wiring(graph, plan, "run", CheckpointStore(str(tmp_path)))
    spec = wiring.spec(plan.chains[plan.chain_of_step["j"]], 1, attempt=1)
    assert spec.input_sides == [0, 0, 1, 1, 1]  # two subtasks of a, then three of b
