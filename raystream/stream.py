"""Streams: what a step of a job outputs, and the methods that add the next steps.

`Stream` (any records), `KeyedStream` (`(key, value)` records, routed by key to keyed
steps; keyed by columns, Arrow rows routed per distinct key), `WindowedStream` (a keyed
stream grouped into windows, waiting for the step that aggregates them) and
`WindowOutput` (window results, with the `late` stream).
Each method adds one step to the job's steps (a StepTable); nothing runs until the job does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from raystream._checks import (check_aggregates, check_event_time, check_expression, check_fn, check_key_columns,
                               check_parallelism, check_projection, check_resources, check_step_id,
                               check_window_aggregates, check_arrow_join)
from raystream.aggregates import Aggregate
from raystream.config import Resources
from raystream.dedup import Dedup, expire
from raystream.errors import JobDefinitionError
from raystream.event_time import EventTime, duration_ms
from raystream.graph import Step, StepKind, StepTable, WindowSpec
from raystream.sinks import Sink
from raystream.ttl import ttl_of
from raystream.windows import WINDOW_COLUMNS, Aggregator, ArrowJoin, Assigner


__all__ = ["KeyedStream", "Stream", "WindowOutput", "WindowedStream"]


@dataclass(frozen=True)
class Stream:
    """The records flowing out of one or more steps. Its methods add steps to the job."""

    steps: StepTable  # the job's steps, which its methods add to
    upstream: tuple[str, ...]
    after_sink: str | None = field(default=None)
    columns: tuple[str, ...] | None = None  # the Arrow columns, where known (after select, aggregate)

    @property
    def job(self) -> Any:
        """The Job this stream's steps belong to."""
        return self.steps.job

    def _then(self, step_id: str, kind: StepKind, fn: Callable[..., Any] | None, what: str,
              parallelism: int | None, resources: Resources | None = None, **fields: Any) -> Step:
        """Add a step; `what` names its function (none for sinks and columnar steps)."""
        step_id = check_step_id(step_id)
        if self.after_sink is not None:
            raise JobDefinitionError(
                f"step {step_id!r} comes after sink {self.after_sink!r}: a sink ends its stream; "
                "apply the step to the stream before the sink instead"
            )
        if what:
            fn = check_fn(step_id, what, fn)
        step = Step(step_id, kind, self.upstream, fn=fn,
                    parallelism=check_parallelism(f"step {step_id!r}", parallelism),
                    resources=check_resources(step_id, resources), **fields)
        self.steps.add(step)
        return step

    def _stream(self, step: Step) -> "Stream":
        return Stream(self.steps, (step.step_id,))

    def map(self, step_id: str, fn: Callable[[Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """One output per record: `fn(record)`."""
        return self._stream(self._then(step_id, StepKind.MAP, fn, "the map function", parallelism, resources))

    def flat_map(self, step_id: str, fn: Callable[[Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """Zero or more outputs per record: the items of the iterable `fn(record)`."""
        return self._stream(self._then(step_id, StepKind.FLAT_MAP, fn, "the flat_map function", parallelism, resources))

    def filter(self, step_id: str, fn: Callable[[Any], bool], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """The records for which `fn(record)` is true."""
        return self._stream(self._then(step_id, StepKind.FILTER, fn, "the predicate", parallelism, resources))

    def map_batches(self, step_id: str, fn: Callable[[Any], Any], *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """Vectorized step: `fn(pyarrow.RecordBatch) -> RecordBatch | Table` on each micro-batch.

        Dict records become columns by key; any other records become one column "value".
        """
        return self._stream(self._then(step_id, StepKind.MAP_BATCHES, fn, "the batch function", parallelism, resources))

    def where(self, step_id: str, expr: Any, *, parallelism: int | None = None,
              resources: Resources | None = None) -> "Stream":
        """Vectorized filter: the rows where `expr`, a `pyarrow.compute.Expression` such as
        `pc.field("price") > 100`, is true (null counts as false). Records become Arrow
        rows as for `map_batches`; rows keep their event times."""
        step_id = check_step_id(step_id)
        expr = check_expression(step_id, "the where expression", expr, self.columns)
        step = self._then(step_id, StepKind.WHERE, None, "", parallelism, resources, arrow=expr)
        return Stream(self.steps, (step.step_id,), columns=self.columns)

    def select(self, step_id: str, columns: list[str] | dict[str, Any], *, parallelism: int | None = None,
               resources: Resources | None = None) -> "Stream":
        """Vectorized projection: the columns named in a list, or a dict of output name ->
        column name or `pyarrow.compute.Expression` (`{"eur": pc.field("usd") * 0.908}`),
        in that order. Records become Arrow rows as for `map_batches`."""
        step_id = check_step_id(step_id)
        projection = check_projection(step_id, columns, self.columns)
        step = self._then(step_id, StepKind.SELECT, None, "", parallelism, resources, arrow=projection)
        return Stream(self.steps, (step.step_id,), columns=tuple(name for name, _ in projection))

    def with_event_time(self, step_id: str, event_time: EventTime, *, parallelism: int | None = None,
                        resources: Resources | None = None) -> "Stream":
        """Records get the event time `event_time.timestamp_fn(record)`, and the watermark
        follows them from here on (replacing any watermark from upstream)."""
        check_event_time(step_id, event_time)
        step = self._then(step_id, StepKind.EVENT_TIME, event_time.timestamp_fn, "the timestamp function",
                          parallelism, resources)
        self.steps[step.step_id] = dataclasses.replace(step, event_time=event_time)
        return Stream(self.steps, (step.step_id,))

    def key_by(self, step_id: str, key_fn: Callable[[Any], Any] | str | tuple[str, ...], *,
               value: Callable[[Any], Any] | None = None, parallelism: int | None = None,
               resources: Resources | None = None) -> "KeyedStream":
        """Records become `(key_fn(record), value(record))` (the record itself without
        `value`) and are routed by key to keyed steps.

        With column names instead of a function (`"auction"`, or `("category", "seller")`)
        the stream stays Arrow (records become rows as for `map_batches`), keyed by those
        columns and routed per distinct key: a row's key is the column's value, or the
        tuple of the columns' values, None for a null, as `lambda row: row["auction"]`
        would give, so it lands in the same key group. `aggregate` takes such a stream."""
        if isinstance(key_fn, (str, tuple, list)):
            step_id = check_step_id(step_id)
            if value is not None:
                raise JobDefinitionError(f"step {step_id!r}: value= goes with a key function; keyed by columns "
                                         "the value is the row (select the columns you need before key_by)")
            key_columns = check_key_columns(step_id, key_fn, self.columns)
            step = self._then(step_id, StepKind.KEY_BY, None, "", parallelism, resources, key_columns=key_columns)
            return KeyedStream(self.steps, (step.step_id,), columns=self.columns, key_columns=key_columns)
        if value is not None:
            check_fn(step_id, "the value function", value)
        step = self._then(step_id, StepKind.KEY_BY, key_fn, "the key function", parallelism, resources)
        if value is not None:
            step = dataclasses.replace(step, value_fn=value)
            self.steps[step.step_id] = step
        return KeyedStream(self.steps, (step.step_id,))

    def union(self, *others: "Stream") -> "Stream":
        """One stream of the records of this stream and `others`, in no particular order."""
        if not others:
            raise JobDefinitionError("union needs at least one other stream")
        streams = (self, *others)
        for s in streams:
            if not isinstance(s, Stream):
                raise JobDefinitionError(f"union takes streams; got {type(s).__name__}")
            if s.steps is not self.steps:
                raise JobDefinitionError("union can only merge streams of the same job")
            if s.after_sink is not None:
                raise JobDefinitionError(f"cannot union the stream ended by sink {s.after_sink!r}")
        upstream = tuple(u for s in streams for u in s.upstream)
        if len(set(upstream)) != len(upstream):
            raise JobDefinitionError(f"union merges the same stream twice ({', '.join(upstream)})")
        columns = self.columns if all(s.columns == self.columns for s in streams) else None
        if not all(isinstance(s, KeyedStream) for s in streams):
            return Stream(self.steps, upstream, columns=columns)
        key_columns = {s.key_columns for s in streams}  # type: ignore[attr-defined]
        return KeyedStream(self.steps, upstream, columns=columns,
                           key_columns=key_columns.pop() if len(key_columns) == 1 else None)

    def sink(self, step_id: str, sink: Sink, *, parallelism: int | None = None,
            resources: Resources | None = None) -> "Stream":
        """Write the records to `sink`. The returned stream takes no further steps."""
        if not isinstance(sink, Sink):
            raise JobDefinitionError(
                f"step {step_id!r}: sink must be a raystream.sinks.Sink; got {type(sink).__name__}"
            )
        step = self._then(step_id, StepKind.SINK, None, "", parallelism, resources)
        self.steps[step.step_id] = dataclasses.replace(step, sink=sink)
        return Stream(self.steps, (), after_sink=step.step_id)

    def reduce(self, step_id: str, fn: Callable[[Any, Any], Any], **_: Any) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: reduce needs a keyed stream; call key_by(...) first")

    def stateful_map(self, step_id: str, fn: Callable[[Any, Any], Any], **_: Any) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: stateful_map needs a keyed stream; call key_by(...) first")

    def aggregate(self, step_id: str, **_: Any) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: aggregate needs a stream keyed by columns; "
                                 "call key_by(step_id, \"column\") first")

    def window(self, assigner: Any, *, allowed_lateness: Any = 0) -> "WindowedStream":
        raise JobDefinitionError("window needs a keyed stream; call key_by(...) first")

    def process(self, step_id: str, on_record: Callable[[Any, Any], None], **_: Any) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: process needs a keyed stream; call key_by(...) first")

    def dedup(self, step_id: str, within: Any, **_: Any) -> "Stream":
        raise JobDefinitionError(f"step {step_id!r}: dedup needs a stream keyed by what makes a duplicate "
                                 "(an event id, say); call key_by(...) first")

    def join(self, step_id: str, other: "KeyedStream", window: Any, fn: Callable[[Any, Any], Any],
             **_: Any) -> "WindowOutput":
        raise JobDefinitionError(f"step {step_id!r}: join needs two keyed streams; call key_by(...) on both first")


@dataclass(frozen=True)
class KeyedStream(Stream):
    """A stream of `(key, value)` records, routed by key to keyed steps; or, keyed by
    columns, of Arrow rows whose key is in `key_columns`."""

    key_columns: tuple[str, ...] | None = None

    def aggregate(self, step_id: str, *, parallelism: int | None = None, resources: Resources | None = None,
                  **aggregates: Aggregate) -> Stream:
        """Running aggregates per key over Arrow, computed per distinct key of each batch:
        `aggregate("stats", n=rs.aggregates.count(), total=rs.aggregates.sum("price"))`.

        Per batch it emits one row per key the batch had (an upsert stream: a key's
        newest row holds its values): the key columns, then each aggregate's running
        value under its name. Takes a stream keyed by columns (`key_by(step_id, "col")`).
        """
        step_id = check_step_id(step_id)
        if self.key_columns is None:
            raise JobDefinitionError(
                f"step {step_id!r}: aggregate needs a stream keyed by columns; key it with key_by(step_id, "
                "\"column\") or a tuple of columns instead of a key function")
        named = check_aggregates(step_id, aggregates, self.key_columns, self.columns)
        step = self._then(step_id, StepKind.AGGREGATE, None, "", parallelism, resources,
                          key_columns=self.key_columns, arrow=named)
        return Stream(self.steps, (step.step_id,), columns=self.key_columns + tuple(aggregates))

    def reduce(self, step_id: str, fn: Callable[[Any, Any], Any], *, emit: str = "every", ttl: Any = None,
               combine: bool = False, parallelism: int | None = None, resources: Resources | None = None) -> Stream:
        """Running reduce per key: `acc = fn(acc, value)`; emits `(key, acc)`.

        `emit="every"` (the default) emits on every update. `emit="last"` is the mini-batch
        mode: of the updates one micro-batch makes to a key, only the last is emitted (in
        the order of the keys' last records, each with the time of its key's last record on
        a stream with event time). Downstream sees fewer, later values and the same final
        value per key, for less work per record; a failing record still only loses itself.

        `combine=True` (with `emit="last"`, for an associative `fn` such as `operator.add`:
        `fn(fn(a, b), c) == fn(a, fn(b, c))`) folds each key's values of a batch where
        they are keyed, before they cross to the reducing subtasks, as Flink's local-global
        aggregation does: one record per key and batch crosses instead of one per record.
        It applies when the reduce is its `key_by`'s only step, on records without event
        time; where `fn` fails, the batch crosses unfolded and the reduce meets the failure.

        `ttl` (a timedelta, seconds, or `raystream.TTL`): a key not updated within it is
        removed, and its next record starts a new acc (docs/guide/ttl.md).
        """
        if emit not in ("every", "last"):
            raise JobDefinitionError(f"step {step_id!r}: reduce takes emit=\"every\" or emit=\"last\"; got {emit!r}")
        if combine and emit != "last":
            raise JobDefinitionError(f"step {step_id!r}: combine=True folds a batch's values before the reduce "
                                     "sees them, so only each key's last update of a batch can be emitted: "
                                     "pass emit=\"last\" with it")
        ttl = ttl_of(step_id, ttl)
        step = self._then(step_id, StepKind.REDUCE, fn, "the reduce function", parallelism, resources)
        if emit != "every" or ttl is not None:
            step = dataclasses.replace(step, emit=emit, ttl=ttl, combine=bool(combine))
            self.steps[step.step_id] = step
        return self._stream(step)

    def stateful_map(self, step_id: str, fn: Callable[[Any, Any], Any], *, ttl: Any = None,
                     parallelism: int | None = None, resources: Resources | None = None) -> Stream:
        """`fn(state_or_None, value) -> (new_state_or_None, output)` per key; emits `(key, output)`.

        Returning None as the new state deletes the key's state. `ttl` (a timedelta,
        seconds, or `raystream.TTL`): a key whose state was not written within it is
        removed, and `fn` gets None for it (docs/guide/ttl.md).
        """
        ttl = ttl_of(step_id, ttl)
        step = self._then(step_id, StepKind.STATEFUL_MAP, fn, "the function", parallelism, resources)
        return self._stream(self._with_ttl(step, ttl))

    def _with_ttl(self, step: Step, ttl: Any) -> Step:
        if ttl is not None:
            step = dataclasses.replace(step, ttl=ttl)
            self.steps[step.step_id] = step
        return step

    def process(self, step_id: str, on_record: Callable[[Any, Any], None], *,
                on_timer: Callable[[Any, Any], None] | None = None, ttl: Any = None,
                parallelism: int | None = None, resources: Resources | None = None) -> Stream:
        """`on_record(ctx, value)` per record, `on_timer(ctx, when)` per timer that comes
        due; both emit with `ctx.emit(output)`, which becomes `(key, output)`. `ctx` is a
        `raystream.ProcessContext`: the key's state, its event- and processing-time
        timers, the record's time and the watermark. `ttl` (a timedelta, seconds, or
        `raystream.TTL`): a key's `ctx.state` not assigned within it is removed and reads
        as None; its timers stay (docs/guide/ttl.md)."""
        ttl = ttl_of(step_id, ttl)
        step = self._then(step_id, StepKind.PROCESS, on_record, "on_record", parallelism, resources)
        if on_timer is not None:
            check_fn(step_id, "on_timer", on_timer)
            step = dataclasses.replace(step, on_timer=on_timer)
            self.steps[step.step_id] = step
        return self._stream(self._with_ttl(step, ttl))

    def dedup(self, step_id: str, within: Any, *, time: str = "event", parallelism: int | None = None,
              resources: Resources | None = None) -> Stream:
        """Pass the first record of each key and drop the key's later records seen within
        `within` (a timedelta or seconds) of it, by event time (the records' times, the
        state expiring when the watermark passes) or "processing" time (the wall clock).
        Emits `(key, record)`. State: the time each key was first seen, deleted by a timer
        `within` later, so it holds only the keys of the last `within`
        (docs/guide/dedup.md says when this makes at-least-once output exact)."""
        fn = Dedup.of(step_id, within, time)
        return self.process(step_id, fn, on_timer=expire, parallelism=parallelism, resources=resources)

    def window(self, assigner: Any, *, allowed_lateness: Any = 0) -> "WindowedStream":
        """Group each key's records into the windows of `assigner` (raystream.windows);
        finish with `.reduce`, `.aggregate` or `.apply`, which name the step."""
        if not isinstance(assigner, Assigner):
            raise JobDefinitionError(
                f"window takes a raystream.windows assigner (Tumbling, Sliding, Session, Lifetime); got {assigner!r}")
        return WindowedStream(self, assigner, allowed_lateness)

    def join(self, step_id: str, other: "KeyedStream", window: Any, fn: Callable[[Any, Any], Any] | None = None,
             *, suffixes: tuple[str, str] = ("_left", "_right"), parallelism: int | None = None,
             resources: Resources | None = None) -> "WindowOutput":
        """Window join: for each key and window of `window` (Tumbling or Sliding, event
        time), `fn(left, right)` for every pair of a record of this stream and one of
        `other`, emitted as `(key, WindowResult(start, end, fn(left, right)))` when the
        window fires. Records too late for their window go to `.late`.

        Without `fn`, on two streams keyed by columns, the join runs over Arrow: per key
        and window every pair of a left and a right row, as rows of the key columns (this
        stream's names), window_start, window_end, this stream's other columns, then
        `other`'s; a name taken twice gets its side's suffix from `suffixes`."""
        if not isinstance(other, KeyedStream) or other.steps is not self.steps:
            raise JobDefinitionError(f"step {step_id!r}: join takes a keyed stream of the same job")
        if not isinstance(window, Assigner) or window.merging or window.opened_by_rows or window.clock != "event":
            raise JobDefinitionError(
                f"step {step_id!r}: a join takes a Tumbling or Sliding event-time window; got {window!r}")
        if set(self.upstream) & set(other.upstream):
            raise JobDefinitionError(f"step {step_id!r}: a stream cannot be joined with itself")
        window.check(step_id)
        if fn is not None:
            step = self._then(step_id, StepKind.JOIN, fn, "the join function", parallelism, resources)
            spec, columns = WindowSpec(window, 0, "join"), None
        else:
            arrow, columns = check_arrow_join(step_id, self.key_columns, other.key_columns, self.columns,
                                              other.columns, suffixes)
            spec = WindowSpec(window, 0, "columnar")
            step = self._then(step_id, StepKind.JOIN, None, "", parallelism, resources, key_columns=self.key_columns,
                              arrow=arrow)
        step = dataclasses.replace(step, inputs=self.upstream + other.upstream,
                                   sides=(0,) * len(self.upstream) + (1,) * len(other.upstream), window=spec)
        self.steps[step.step_id] = step
        return WindowOutput(self.steps, (step.step_id,), columns=columns)

@dataclass(frozen=True)
class WindowedStream:
    """A keyed stream grouped into windows; `.reduce`, `.aggregate` or `.apply` make the step."""

    keyed: KeyedStream
    assigner: Any
    allowed_lateness: Any = 0

    def _window_step(self, step_id: str, how: str, fn: Any, what: str, parallelism: int | None,
                     resources: Resources | None) -> "WindowOutput":
        step_id = check_step_id(step_id)
        self.assigner.check(step_id)
        if self.assigner.opened_by_rows and how != "columnar":
            raise JobDefinitionError(
                f"step {step_id!r}: {type(self.assigner).__name__} windows are opened by Arrow rows; key a stream of "
                "Arrow rows by columns (key_by(step_id, \"column\")) and aggregate with rs.aggregates by name")
        lateness = duration_ms(self.allowed_lateness, f"step {step_id!r}: allowed_lateness")
        if lateness and self.assigner.clock == "processing":
            raise JobDefinitionError(f"step {step_id!r}: processing-time windows take no allowed lateness")
        step = self.keyed._then(step_id, StepKind.WINDOW, fn, what, parallelism, resources)
        self.keyed.steps[step_id] = dataclasses.replace(step, window=WindowSpec(self.assigner, lateness, how))
        return WindowOutput(self.keyed.steps, (step_id,))

    def reduce(self, step_id: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None,
               resources: Resources | None = None) -> "WindowOutput":
        """`fn(acc, value) -> acc` over each window's values; emits `(key, WindowResult)`."""
        return self._window_step(step_id, "reduce", fn, "the reduce function", parallelism, resources)

    def aggregate(self, step_id: str, aggregator: Any = None, *, parallelism: int | None = None,
                  resources: Resources | None = None, **aggregates: Aggregate) -> "WindowOutput":
        """A `raystream.windows.Aggregator` (create, add, merge, result) per window; or, on
        a stream keyed by columns, the aggregates of `raystream.aggregates` by name
        (`aggregate("per_minute", bids=rs.aggregates.count(), top=rs.aggregates.max("price"))`),
        computed over Arrow and emitted per window as a row of the key columns,
        window_start, window_end, each aggregate and update."""
        if aggregates:
            if aggregator is not None:
                raise JobDefinitionError(f"step {step_id!r}: aggregate takes an Aggregator or named aggregates "
                                         "(rs.aggregates), not both")
            return self._columnar_step(step_id, aggregates, parallelism, resources)
        if not isinstance(aggregator, Aggregator):
            raise JobDefinitionError(f"step {step_id!r}: aggregate takes a raystream.windows.Aggregator, or "
                                     f"named aggregates such as n=rs.aggregates.count(); got {aggregator!r}")
        return self._window_step(step_id, "aggregate", aggregator.add, "the aggregator", parallelism,
                                 resources)._with_fn(aggregator)

    def _columnar_step(self, step_id: str, aggregates: dict[str, Any], parallelism: int | None,
                       resources: Resources | None) -> "WindowOutput":
        step_id = check_step_id(step_id)
        keyed = self.keyed
        if keyed.key_columns is None:
            raise JobDefinitionError(
                f"step {step_id!r}: window aggregates by name run over Arrow and need a stream keyed by columns; "
                "key it with key_by(step_id, \"column\"), or pass a raystream.windows.Aggregator")
        named = check_window_aggregates(step_id, aggregates, keyed.key_columns, keyed.columns, self.assigner.merging)
        end = getattr(self.assigner, "end", None) if self.assigner.opened_by_rows else None
        if end is not None and keyed.columns is not None and end not in keyed.columns:
            raise JobDefinitionError(f"step {step_id!r}: the windows' end column {end!r} is not among the stream's "
                                     f"columns ({', '.join(keyed.columns)})")
        self._window_step(step_id, "columnar", None, "", parallelism, resources)
        step = dataclasses.replace(self.keyed.steps[step_id], key_columns=keyed.key_columns, arrow=named)
        self.keyed.steps[step_id] = step
        columns = keyed.key_columns + WINDOW_COLUMNS + tuple(aggregates) + ("update",)
        return WindowOutput(self.keyed.steps, (step_id,), columns=columns)

    def apply(self, step_id: str, fn: Callable[[Any, Any, list[Any]], Any], *, parallelism: int | None = None,
              resources: Resources | None = None) -> "WindowOutput":
        """`fn(key, window, values) -> result` once per window with all of its values."""
        return self._window_step(step_id, "apply", fn, "the window function", parallelism, resources)


@dataclass(frozen=True)
class WindowOutput(Stream):
    """The results of a window step; `.late` is the stream of records that came too late."""

    def _with_fn(self, fn: Any) -> "WindowOutput":
        step_id = self.upstream[0]
        self.steps[step_id] = dataclasses.replace(self.steps[step_id], fn=fn)
        return self

    @property
    def late(self) -> KeyedStream:
        """`(key, value)` records too late for every window they belong to (beyond the
        allowed lateness); of a columnar step, its input's Arrow rows, keyed by the same
        columns (a join's: each side's rows, keyed by its columns). Its step id is
        "<window step>.late"."""
        window_id = self.upstream[0]
        step_id = f"{window_id}.late"
        if step_id not in self.steps:
            self.steps.add(Step(step_id, StepKind.LATE, (window_id,), parallelism=self.steps[window_id].parallelism))
        window = self.steps[window_id]
        key_columns = None
        if window.window is not None and window.window.how == "columnar":
            arrow = window.arrow
            key_columns = window.key_columns if not isinstance(arrow, ArrowJoin) or \
                arrow.left_keys == arrow.right_keys else None
        return KeyedStream(self.steps, (step_id,), key_columns=key_columns)
