"""The job API rejects bad definitions before anything starts."""
import dataclasses
import operator

import pytest

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource


def seq_job(**kw) -> tuple[rs.Job, rs.Stream]:
    job = rs.Job("j", **kw)
    return job, job.source("src", SequenceSource(10))


def test_a_valid_job_validates():
    job, s = seq_job()
    s.map("m", str).sink("out", CollectSink())
    job.validate()
    assert list(job.steps) == ["src", "m", "out"]


def test_duplicate_step_ids_are_refused():
    job, s = seq_job()
    s.map("m", str)
    with pytest.raises(rs.JobDefinitionError, match="'m' is used twice in job 'j'"):
        s.filter("m", bool)


def test_a_stream_knows_its_job_and_is_hashable_by_identity():
    job, s = seq_job()
    mapped = s.map("m", str)
    assert mapped.job is job and s.job is job
    assert {s: 1, mapped: 2}[mapped] == 2 and len({s, mapped, s}) == 2
    assert s == type(s)(s.steps, s.upstream) and s != type(s)(seq_job()[1].steps, s.upstream)


@pytest.mark.parametrize("check", [rs.Job.validate, rs.Job.freeze])
def test_a_stream_without_sink_is_refused_by_validate_and_by_freeze(check):
    job, s = seq_job()
    s.map("dangling", str)
    with pytest.raises(rs.JobDefinitionError, match="'dangling' has no sink"):
        check(job)


def test_a_step_after_a_sink_is_refused():
    job, s = seq_job()
    done = s.sink("out", CollectSink())
    with pytest.raises(rs.JobDefinitionError, match="comes after sink 'out'"):
        done.map("late", str)


@pytest.mark.parametrize("bad", [None, "", "has space", "x" * 101, 7, "-lead"])
def test_bad_step_ids_are_refused(bad):
    _, s = seq_job()
    with pytest.raises(rs.JobDefinitionError, match="step id"):
        s.map(bad, str)


@pytest.mark.parametrize("bad", ["src\n", "m\n", "x" * 100 + "\n"])
def test_step_ids_with_a_trailing_newline_are_refused(bad):
    """`$` alone would let "m\n" through: it names checkpoint files."""
    _, s = seq_job()
    with pytest.raises(rs.JobDefinitionError, match="step id"):
        s.map(bad, str)
    with pytest.raises(rs.JobDefinitionError, match="step id"):
        rs.Job("j").source(bad, SequenceSource(10))


@pytest.mark.parametrize("bad", ["billing\n", "b.1-x_y\n", "x" * 100 + "\n"])
def test_job_names_with_a_trailing_newline_are_refused(bad):
    """`$` alone would let "billing\n" through: it names the job's checkpoint folder."""
    with pytest.raises(rs.JobDefinitionError, match="job name"):
        rs.Job(bad)


def test_a_job_name_set_after_construction_is_checked_before_the_job_runs():
    job, s = seq_job()
    s.sink("out", CollectSink())
    job.name = "billing\n"  # it names the job's checkpoint folder
    for check in (job.validate, job.freeze):
        with pytest.raises(rs.JobDefinitionError, match="job name"):
            check()


def test_wrong_argument_types_are_refused():
    job, s = seq_job()
    with pytest.raises(rs.JobDefinitionError, match="must be callable"):
        s.map("m", 42)
    with pytest.raises(rs.JobDefinitionError, match="must be a raystream.sources.Source"):
        job.source("s2", [1, 2, 3])
    with pytest.raises(rs.JobDefinitionError, match="must be a raystream.sinks.Sink"):
        s.sink("out", print)
    with pytest.raises(rs.JobDefinitionError, match="parallelism must be an integer"):
        s.map("m2", str, parallelism=0)
    with pytest.raises(rs.JobDefinitionError, match="the value function must be callable"):
        s.key_by("k", str, value="nope")
    with pytest.raises(rs.JobDefinitionError, match="parallelism must be an integer"):
        rs.Job("j", parallelism="2")


def test_keyed_steps_need_key_by():
    _, s = seq_job()
    with pytest.raises(rs.JobDefinitionError, match="call key_by"):
        s.reduce("r", operator.add)
    with pytest.raises(rs.JobDefinitionError, match="call key_by"):
        s.stateful_map("r", lambda st, v: (st, v))


def test_union_rules():
    job, a = seq_job()
    b = job.source("src2", SequenceSource(5))
    u = a.union(b)
    assert u.upstream == ("src", "src2")
    with pytest.raises(rs.JobDefinitionError, match="same stream twice"):
        a.union(a)
    with pytest.raises(rs.JobDefinitionError, match="at least one"):
        a.union()
    other = rs.Job("other").source("x", SequenceSource(1))
    with pytest.raises(rs.JobDefinitionError, match="same job"):
        a.union(other)
    keyed = a.key_by("ka", str).union(b.key_by("kb", str))
    assert isinstance(keyed, rs.KeyedStream)


def test_job_without_source_is_refused():
    with pytest.raises(rs.JobDefinitionError, match="no source"):
        rs.Job("empty").validate()


def test_keyed_parallelism_cannot_exceed_max_parallelism():
    job, s = seq_job(runtime=rs.RuntimeConfig(max_parallelism=4))
    s.key_by("k", str).reduce("r", operator.add, parallelism=5).sink("o", CollectSink())
    with pytest.raises(rs.JobDefinitionError, match="exceeds max_parallelism 4"):
        job.validate()


@pytest.mark.parametrize("value, expected", [
    ("exactly_once", rs.Guarantee.EXACTLY_ONCE),
    ("AT-LEAST-ONCE", rs.Guarantee.AT_LEAST_ONCE),
    (rs.Guarantee.AT_MOST_ONCE, rs.Guarantee.AT_MOST_ONCE),
])
def test_guarantee_parsing(value, expected):
    assert rs.Job("j", guarantee=value).guarantee is expected


def test_bad_settings_fail_at_job_time():
    with pytest.raises(rs.ConfigError, match="guarantee must be"):
        rs.Job("j", guarantee="twice")
    with pytest.raises(rs.ConfigError, match="interval"):
        rs.CheckpointConfig(interval=0)
    with pytest.raises(rs.ConfigError, match="retain"):
        rs.CheckpointConfig(retain=0)
    with pytest.raises(rs.ConfigError, match="scheme 'gs'"):
        rs.CheckpointConfig(storage="gs://b/p")
    with pytest.raises(rs.ConfigError, match="names no bucket"):
        rs.CheckpointConfig(storage="s3:///p")
    with pytest.raises(rs.ConfigError, match="checkpoint must be"):
        rs.Job("j", checkpoint={"interval": 1})
    with pytest.raises(rs.ConfigError, match="batch_size"):
        rs.RuntimeConfig(batch_size=0)


def test_with_options_copies_settings_and_keeps_the_graph():
    job, s = seq_job()
    s.sink("out", CollectSink())
    other = job.with_options(parallelism=4, guarantee="at_most_once")
    assert (other.parallelism, other.guarantee) == (4, rs.Guarantee.AT_MOST_ONCE)
    assert (job.parallelism, job.guarantee) == (1, rs.Guarantee.EXACTLY_ONCE)
    assert other.steps is job.steps


def test_freeze_gives_the_runtime_an_immutable_description_that_later_changes_do_not_reach():
    job, s = seq_job(parallelism=3)
    s.key_by("k", lambda x: x % 2).reduce("sum", operator.add).sink("out", CollectSink())
    graph = job.freeze()
    assert graph.step_ids == ["src", "k", "sum", "out"] and graph.keyed
    assert [s.kind for s in graph.steps] == [rs.StepKind.SOURCE, rs.StepKind.KEY_BY, rs.StepKind.REDUCE,
                                             rs.StepKind.SINK]
    s.map("late", str).sink("late_out", CollectSink())  # the job changes after it was frozen
    assert graph.step_ids == ["src", "k", "sum", "out"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.parallelism = 1


def test_restart_kinds_are_an_enum_and_their_names_still_parse():
    assert rs.RestartStrategy("fixed_delay").kind is rs.RestartKind.FIXED_DELAY
    assert rs.RestartStrategy.none().kind is rs.RestartKind.NONE
    with pytest.raises(rs.ConfigError, match="RestartStrategy kind must be"):
        rs.RestartStrategy("linear")
