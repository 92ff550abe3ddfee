"""The columnar methods of streams (where, select, key_by on columns, aggregate): what
they add to the job, and the mistakes they refuse before anything runs."""
import pickle
import threading

import pyarrow.compute as pc
import pytest

import raystream as rs
from raystream import aggregates as agg
from raystream._runtime.plan.physical import EdgeKind, build_plan
from raystream.graph import StepKind


def source(job=None):
    job = job or rs.Job("columnar", parallelism=2)
    return job, job.source("bids", rs.sources.ListSource([{"auction": 1, "price": 5}]))


def test_a_columnar_job_reads_like_a_per_record_one_and_plans_one_exchange():
    job, bids = source()
    stats = (bids.where("pricey", pc.field("price") > 100)
             .select("euros", {"auction": "auction", "eur": pc.field("price") * 0.908})
             .key_by("by_auction", "auction")
             .aggregate("stats", bids=agg.count(), total=agg.sum("eur")))
    stats.sink("out", rs.sinks.CollectSink())
    assert stats.columns == ("auction", "bids", "total")
    steps = job.steps
    assert steps["pricey"].kind is StepKind.WHERE and pickle.loads(pickle.dumps(steps["pricey"].arrow)).equals(
        pc.field("price") > 100)
    assert steps["by_auction"].key_columns == ("auction",) and steps["by_auction"].fn is None
    assert steps["stats"].kind.keyed and steps["stats"].key_columns == ("auction",)
    assert [name for name, _ in steps["stats"].arrow] == ["bids", "total"]
    plan = build_plan(job.freeze(), {"bids": ["0"]})
    assert [c.name for c in plan.chains] == ["bids+pricey+euros+by_auction", "stats+out"]
    assert plan.chains[1].in_edges[0].kind is EdgeKind.HASH


def test_several_key_columns_and_the_known_columns_through_the_steps():
    job, bids = source()
    keyed = bids.select("cols", ["category", "seller", "price"]).key_by("by_pair", ("category", "seller"))
    assert keyed.key_columns == ("category", "seller") and keyed.columns == ("category", "seller", "price")
    assert keyed.where("w", pc.field("price") > 1).columns == keyed.columns
    assert bids.columns is None and bids.map("m", str).columns is None  # not known before a select


@pytest.mark.parametrize("build, message", [
    (lambda s: s.select("c", ["a"]).where("w", pc.field("b") > 1),
     r"step 'w': the where expression \(b > 1\) names a column the stream does not have .*columns are a"),
    (lambda s: s.where("w", "price > 1"), r"step 'w': the where expression must be a pyarrow.compute.Expression"),
    (lambda s: s.select("c", ["a"]).select("d", {"x": pc.field("b") * 2}), r"select's column 'x' .* names a column"),
    (lambda s: s.select("c", ["a"]).select("d", ["b"]), r"step 'd': select names b, which the stream does not have"),
    (lambda s: s.select("c", ["a", "a"]), r"names a column twice"),
    (lambda s: s.select("c", {"x": 3}), r"select's column 'x' must be a pyarrow.compute.Expression"),
    (lambda s: s.select("c", "a"), r"select takes a list of column names or a dict"),
    (lambda s: s.select("c", ["a"]).key_by("k", "b"), r"step 'k': key_by names b, which the stream does not have"),
    (lambda s: s.key_by("k", ()), r"key_by takes a column name or a non-empty list"),
    (lambda s: s.key_by("k", "a", value=lambda r: 1), r"value= goes with a key function"),
    (lambda s: s.key_by("k", lambda r: r).aggregate("a", n=agg.count()), r"aggregate needs a stream keyed by columns"),
    (lambda s: s.aggregate("a", n=agg.count()), r"aggregate needs a stream keyed by columns; call key_by"),
    (lambda s: s.key_by("k", "a").aggregate("agg"), r"aggregate needs at least one aggregate"),
    (lambda s: s.key_by("k", "a").aggregate("agg", a=agg.count()), r"has the name of a key column"),
    (lambda s: s.key_by("k", "a").aggregate("agg", n=sum), r"must be a raystream.aggregates.Aggregate"),
    (lambda s: s.select("c", ["a"]).key_by("k", "a").aggregate("agg", t=agg.sum("b")),
     r"aggregate t= names b, which the stream does not have"),
    (lambda s: s.key_by("k", "a").aggregate("agg", t=_Unknown()), r"asks for Partial\(function='median'"),
    (lambda s: s.key_by("k", "a").aggregate("agg", t=_NoMerge()), r"_NoMerge\) must override merge or merge_all"),
    (lambda s: s.key_by("k", "a").aggregate("agg", t=_NoPartials()), r"must name at least one partial"),
    (lambda s: s.key_by("k", "a").aggregate("agg", t=_Locked()), r"the aggregates cannot be pickled"),
])
def test_mistakes_are_refused_when_the_job_is_defined(build, message):
    _, bids = source()
    with pytest.raises(rs.JobDefinitionError, match=message):
        build(bids)


class _Unknown(agg.Aggregate):
    def partials(self):
        return [agg.Partial("median", "a")]

    def merge(self, state, partials):
        return state


class _NoMerge(agg.Aggregate):
    def partials(self):
        return [agg.Partial("sum", "a")]


class _NoPartials(_Unknown):
    def partials(self):
        return []


class _Locked(agg.Sum):
    def __init__(self):
        super().__init__("a")
        self.lock = threading.Lock()


def test_a_union_of_streams_keyed_by_the_same_columns_can_aggregate():
    job = rs.Job("u")
    a = job.source("a", rs.sources.ListSource([])).key_by("ka", ("x", "y"))
    b = job.source("b", rs.sources.ListSource([])).key_by("kb", ("x", "y"))
    both = a.union(b)
    assert both.key_columns == ("x", "y")
    both.aggregate("n", n=agg.count())
    other = job.source("c", rs.sources.ListSource([])).key_by("kc", "x")
    assert a.union(other).key_columns is None
