"""Which subtasks run on spare actors, and how many spares a job keeps."""
import operator

import pytest

import raystream as rs
from raystream._runtime.control.actors import spare_count, uses_spares
from raystream._runtime.plan.physical import build_plan
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource


def plan_of(runtime: rs.RuntimeConfig, **reduce_options):
    job = rs.Job("j", parallelism=3, runtime=runtime)
    (job.source("src", SequenceSource(10, partitions=3)).key_by("k", operator.itemgetter(0))
        .reduce("r", operator.add, **reduce_options).sink("out", CollectSink()))
    job.validate()
    return build_plan(job.freeze(), {"src": ["0", "1", "2"]})


def test_only_subtasks_that_ask_for_no_resources_use_spares():
    assert uses_spares({"num_cpus": 0.0, "resources": None})
    assert not uses_spares({"num_cpus": 1, "resources": None})
    assert not uses_spares({"num_cpus": 0, "resources": {"gpu_node": 1}})
    assert not uses_spares({"num_cpus": 0, "resources": None, "memory": 2**30})


def test_a_job_keeps_a_spare_per_subtask_that_can_use_one_up_to_the_setting():
    assert spare_count(rs.RuntimeConfig(), plan_of(rs.RuntimeConfig())) == 6  # two chains of 3
    assert spare_count(rs.RuntimeConfig(spare_actors=4), plan_of(rs.RuntimeConfig(spare_actors=4))) == 4
    assert spare_count(rs.RuntimeConfig(spare_actors=0), plan_of(rs.RuntimeConfig(spare_actors=0))) == 0
    # the reduce chain asks for a CPU per subtask: only the source chain's three use spares
    heavy = plan_of(rs.RuntimeConfig(), resources=rs.Resources(num_cpus=1))
    assert spare_count(rs.RuntimeConfig(), heavy) == 3


def test_a_negative_setting_is_refused():
    with pytest.raises(rs.ConfigError, match="spare_actors"):
        rs.RuntimeConfig(spare_actors=-1)


def test_recovery_spares_come_after_a_time_by_default_at_once_or_never():
    assert rs.RuntimeConfig().spares_after() == 30.0  # a long-running job keeps them, a short one never pays
    assert rs.RuntimeConfig(recovery_spares=5).spares_after() == 5.0
    assert rs.RuntimeConfig(recovery_spares=True).spares_after() == 0.0
    assert rs.RuntimeConfig(recovery_spares=False).spares_after() is None
    for bad in (-1, float("nan"), "soon"):
        with pytest.raises(rs.ConfigError, match="recovery_spares"):
            rs.RuntimeConfig(recovery_spares=bad)
