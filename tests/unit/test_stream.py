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


# --- columnar windows and joins ----------------------------------------------------------


def timed_source(job, step_id="bids", columns=None):
    stream = job.source(step_id, rs.sources.ListSource([{"auction": 1, "price": 5, "date_time": 0}]),
                        event_time=rs.EventTime.column("date_time", max_delay=1))
    return stream.select(f"{step_id}_cols", list(columns)) if columns else stream


def test_a_columnar_window_reads_like_a_per_record_one():
    job = rs.Job("w", parallelism=2)
    keyed = timed_source(job, columns=("auction", "price", "date_time")).key_by("by_auction", "auction")
    counts = keyed.window(rs.windows.Sliding(10, 5), allowed_lateness=2).aggregate(
        "per_window", bids=agg.count(), top=agg.max("price"))
    assert counts.columns == ("auction", "window_start", "window_end", "bids", "top", "update")
    step = job.steps["per_window"]
    assert step.kind is StepKind.WINDOW and step.window.how == "columnar" and step.key_columns == ("auction",)
    assert step.window.allowed_lateness_ms == 2_000 and [n for n, _ in step.arrow] == ["bids", "top"]
    late = counts.late
    assert late.key_columns == ("auction",)
    counts.sink("out", rs.sinks.CollectSink())
    late.sink("late", rs.sinks.CollectSink())
    plan = build_plan(job.freeze(), {"bids": ["0"]})
    window = next(c for c in plan.chains if c.head.step_id == "per_window")
    assert window.in_edges[0].kind is EdgeKind.HASH


def test_a_columnar_join_names_its_columns_and_suffixes_a_clash():
    job = rs.Job("j")
    people = timed_source(job, "people", ("id", "name", "date_time")).key_by("by_id", "id")
    items = timed_source(job, "items", ("seller", "name", "date_time")).key_by("by_seller", "seller")
    joined = people.join("pairs", items, rs.windows.Tumbling(10))
    assert joined.columns == ("id", "window_start", "window_end", "name_left", "date_time_left", "name_right",
                              "date_time_right")
    step = job.steps["pairs"]
    assert step.window.how == "columnar" and step.arrow == rs.windows.ArrowJoin(("id",), ("seller",))
    assert step.sides == (0, 1) and joined.late.key_columns is None  # each side's rows keyed by its columns


@pytest.mark.parametrize("build, message", [
    (lambda k, _: k.window(rs.windows.Tumbling(1)).aggregate("w", agg.count()),
     r"takes a raystream.windows.Aggregator, or named aggregates"),
    (lambda k, _: k.window(rs.windows.Session(1)).aggregate("w", first=agg.first("price")),
     r"cannot be used in session windows: merging two sessions needs combine"),
    (lambda k, _: k.window(rs.windows.Tumbling(1)).aggregate("w", window_end=agg.count()),
     r"has the name of a column the window adds"),
    (lambda k, _: k.window(rs.windows.Tumbling(1)).aggregate("w", rs.windows.Aggregator(list, max, max), n=agg.count()),
     r"an Aggregator or named aggregates"),
    (lambda k, r: k.join("j", r, rs.windows.Tumbling(1), suffixes=("_x", "_x")), r"suffixes must be two different"),
    (lambda k, _: k.window(rs.windows.Lifetime("expires")).reduce("w", max), r"Lifetime windows are opened by Arrow rows"),
    (lambda k, _: k.window(rs.windows.Lifetime("")).aggregate("w", n=agg.count()), r"Lifetime\(end\) takes the name"),
    (lambda k, r: k.join("j", r, rs.windows.Lifetime("price")), r"a join takes a Tumbling or Sliding"),
    (lambda k, r: k.join("j", r.map("m", len).key_by("kk", lambda x: x), rs.windows.Tumbling(1)),
     r"a join without a function joins Arrow rows and needs two streams keyed by columns"),
])
def test_columnar_window_mistakes_are_refused_when_defined(build, message):
    job = rs.Job("w")
    keyed = timed_source(job).key_by("by_auction", "auction")
    other = timed_source(job, "other").key_by("by_other", "auction")
    with pytest.raises(rs.JobDefinitionError, match=message):
        build(keyed, other)


def test_a_lifetime_windows_end_column_must_be_among_the_known_columns():
    job = rs.Job("w")
    keyed = timed_source(job, columns=("auction", "price", "date_time")).key_by("by_auction", "auction")
    with pytest.raises(rs.JobDefinitionError, match=r"the windows' end column 'expires' is not among the stream's"):
        keyed.window(rs.windows.Lifetime("expires")).aggregate("w", n=agg.count())


def test_window_aggregates_by_name_need_a_stream_keyed_by_columns():
    job = rs.Job("w")
    keyed = timed_source(job).key_by("by_auction", lambda r: r["auction"])
    with pytest.raises(rs.JobDefinitionError, match=r"need a stream keyed by columns"):
        keyed.window(rs.windows.Tumbling(1)).aggregate("w", n=agg.count())
