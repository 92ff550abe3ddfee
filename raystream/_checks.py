"""Checks of job definitions, shared by `Job` and the stream classes: each raises
JobDefinitionError naming the step to fix."""
from __future__ import annotations

import re
from typing import Any, Callable

import cloudpickle
import pyarrow as pa

from raystream.aggregates import Aggregate, Partial
from raystream.config import Resources
from raystream.errors import JobDefinitionError
from raystream.event_time import EventTime
from raystream.windows import WINDOW_COLUMNS, ArrowJoin, join_column_names

#: Step ids and job names (they name checkpoint folders and files): use `fullmatch`, since
#: `$` with `match` also accepts a trailing newline ("billing\n").
STEP_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\Z")


def check_step_id(step_id: object) -> str:
    if not isinstance(step_id, str) or not STEP_ID.fullmatch(step_id):
        raise JobDefinitionError(
            f"step id must be a string of letters, digits, '_', '-' or '.' (at most 100, "
            f"starting with a letter or digit); got {step_id!r}"
        )
    return step_id


def check_fn(step_id: str, what: str, fn: object) -> Callable[..., Any]:
    if not callable(fn):
        raise JobDefinitionError(f"step {step_id!r}: {what} must be callable; got {type(fn).__name__} {fn!r}")
    return fn  # type: ignore[return-value]


def check_resources(step_id: str, resources: object) -> Resources | None:
    if resources is not None and not isinstance(resources, Resources):
        raise JobDefinitionError(f"step {step_id!r}: resources must be a raystream.Resources; got {resources!r}")
    return resources


def check_event_time(step_id: str, event_time: object, *, allow_none: bool = False) -> None:
    if event_time is None and allow_none:
        return
    if not isinstance(event_time, EventTime):
        raise JobDefinitionError(f"step {step_id!r}: event_time must be a raystream.EventTime; got {event_time!r}")


def check_parallelism(where: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobDefinitionError(f"{where}: parallelism must be an integer >= 1; got {value!r}")
    return value


# --- columnar steps (where, select, key_by on columns, aggregate) ----------------------


def is_expression(value: object) -> bool:
    """A `pyarrow.compute.Expression`. pyarrow.compute loads here, not with `import
    raystream` (tens of milliseconds), and whoever made an expression loaded it already."""
    import pyarrow.compute as pc

    return isinstance(value, pc.Expression)


def check_expression(step_id: str, what: str, expr: object, columns: tuple[str, ...] | None) -> Any:
    """An expression that pickles and, where the stream's columns are known, names only
    columns it has; else the first batch tells (the operator names the step)."""
    if not is_expression(expr):
        raise JobDefinitionError(
            f"step {step_id!r}: {what} must be a pyarrow.compute.Expression, such as "
            f"pc.field(\"price\") > 100; got {type(expr).__name__} {expr!r}")
    try:
        cloudpickle.dumps(expr)
    except Exception as exc:  # every subtask gets it pickled, as Ray pickles the job
        raise JobDefinitionError(f"step {step_id!r}: {what} {expr} cannot be pickled ({exc}); "
                                 "build it from pc.field, scalars and pyarrow.compute functions") from None
    if columns is not None:
        empty = pa.RecordBatch.from_arrays([pa.nulls(0)] * len(columns), names=list(columns))
        try:
            empty.filter(expr.is_valid())  # type: ignore[attr-defined]
        except pa.ArrowInvalid as exc:
            # only a missing top-level column is certain here: the types are not known yet
            if str(exc).startswith("No match for FieldRef.Name("):
                raise JobDefinitionError(
                    f"step {step_id!r}: {what} {expr} names a column the stream does not have "
                    f"({str(exc).split(' in ')[0]}); its columns are {', '.join(columns)}") from None
        except Exception:  # a type error, say: the types are not known before the data
            pass
    return expr


def _check_names(step_id: str, who: str, names: Any, columns: tuple[str, ...] | None) -> tuple[str, ...]:
    """Column names that `who` (a step kind, an aggregate) reads, checked against the stream's."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names or \
            not all(isinstance(n, str) and n for n in names):
        raise JobDefinitionError(f"step {step_id!r}: {who} takes a column name or a non-empty list or "
                                 f"tuple of column names; got {names!r}")
    if len(set(names)) != len(names):
        raise JobDefinitionError(f"step {step_id!r}: {who} names a column twice: {names!r}")
    missing = [n for n in names if columns is not None and n not in columns]
    if missing:
        raise JobDefinitionError(f"step {step_id!r}: {who} names {', '.join(missing)}, which the stream does "
                                 f"not have; its columns are {', '.join(columns or ())}")
    return tuple(names)


def check_key_columns(step_id: str, key: str | tuple[str, ...] | list[str],
                      columns: tuple[str, ...] | None) -> tuple[str, ...]:
    """The key columns of `key_by(step_id, "col")` or `key_by(step_id, ("a", "b"))`."""
    return _check_names(step_id, "key_by", [key] if isinstance(key, str) else key, columns)


def check_projection(step_id: str, projection: object, columns: tuple[str, ...] | None) -> tuple[tuple[str, Any], ...]:
    """`select`'s columns as (name, column name or expression) pairs."""
    if isinstance(projection, (list, tuple)):
        names = _check_names(step_id, "select", projection, columns)
        return tuple((n, n) for n in names)
    if not isinstance(projection, dict) or not projection:
        raise JobDefinitionError(
            f"step {step_id!r}: select takes a list of column names or a dict of name -> column name or "
            f"pyarrow.compute.Expression; got {projection!r}")
    pairs = []
    for name, value in projection.items():
        if not isinstance(name, str) or not name:
            raise JobDefinitionError(f"step {step_id!r}: select's output names must be strings; got {name!r}")
        if isinstance(value, str):
            _check_names(step_id, f"select's column {name!r}", [value], columns)
        else:
            check_expression(step_id, f"select's column {name!r}", value, columns)
        pairs.append((name, value))
    return tuple(pairs)


def check_aggregates(step_id: str, named: dict[str, Any], key_columns: tuple[str, ...],
                     columns: tuple[str, ...] | None) -> tuple[tuple[str, Aggregate], ...]:
    """`aggregate`'s (output name, Aggregate) pairs: names apart from the key columns,
    partials Arrow knows, value columns the stream has (where its columns are known)."""
    if not named:
        raise JobDefinitionError(f"step {step_id!r}: aggregate needs at least one aggregate, such as "
                                 "count=rs.aggregates.count()")
    for name, agg in named.items():
        if not isinstance(agg, Aggregate):
            raise JobDefinitionError(f"step {step_id!r}: aggregate {name}= must be a raystream.aggregates.Aggregate "
                                     f"(rs.aggregates.sum(\"price\"), ...); got {agg!r}")
        if name in key_columns:
            raise JobDefinitionError(f"step {step_id!r}: aggregate {name}= has the name of a key column; "
                                     "name it otherwise")
        if type(agg).merge is Aggregate.merge and type(agg).merge_all is Aggregate.merge_all:
            raise JobDefinitionError(f"step {step_id!r}: aggregate {name}= ({type(agg).__name__}) must override "
                                     "merge or merge_all of raystream.aggregates.Aggregate")
        partials = agg.partials()
        if not isinstance(partials, (list, tuple)) or not partials:
            raise JobDefinitionError(f"step {step_id!r}: aggregate {name}= must name at least one partial "
                                     f"(raystream.aggregates.Partial); partials() gave {partials!r}")
        for partial in partials:
            if not isinstance(partial, Partial) or not _is_hash_aggregate(partial.function):
                raise JobDefinitionError(
                    f"step {step_id!r}: aggregate {name}= asks for {partial!r}; partials must be "
                    "raystream.aggregates.Partial of a pyarrow hash aggregate (sum, min, max, count, ...)")
        if agg.columns():
            _check_names(step_id, f"aggregate {name}=", list(dict.fromkeys(agg.columns())), columns)
    try:
        cloudpickle.dumps(named)
    except Exception as exc:  # as Ray pickles the job
        raise JobDefinitionError(f"step {step_id!r}: the aggregates cannot be pickled ({exc}); every "
                                 "subtask gets them pickled") from None
    return tuple(named.items())


def check_window_aggregates(step_id: str, named: dict[str, Any], key_columns: tuple[str, ...],
                            columns: tuple[str, ...] | None, merging: bool) -> tuple[tuple[str, Aggregate], ...]:
    """A columnar window's (output name, Aggregate) pairs: as `aggregate`'s, named apart
    from the window's own columns; in session windows, aggregates that can combine."""
    pairs = check_aggregates(step_id, named, key_columns, columns)
    clash = [c for c in key_columns if c in ("window_start", "window_end", "update")]
    if clash:
        raise JobDefinitionError(f"step {step_id!r}: key column {clash[0]!r} has the name of a column the window "
                                 "adds (window_start, window_end, update); rename it with select before key_by")
    for name, agg in pairs:
        if name in ("window_start", "window_end", "update"):
            raise JobDefinitionError(f"step {step_id!r}: aggregate {name}= has the name of a column the window "
                                     "adds (window_start, window_end, update); name it otherwise")
        if merging and type(agg).combine is Aggregate.combine:
            raise JobDefinitionError(
                f"step {step_id!r}: aggregate {name}= ({type(agg).__name__}) cannot be used in session windows: "
                "merging two sessions needs combine(state, other), which it lacks (first and last keep no "
                "arrival order in their state; use min or max of a time column, or tumbling windows)")
    return pairs


def check_arrow_join(step_id: str, left_keys: tuple[str, ...] | None, right_keys: tuple[str, ...] | None,
                     left: tuple[str, ...] | None, right: tuple[str, ...] | None, suffixes: object
                     ) -> tuple[ArrowJoin, tuple[str, ...] | None]:
    """A join over Arrow (no function): its ArrowJoin, and its output columns where both
    sides' columns are known."""
    if left_keys is None or right_keys is None:
        raise JobDefinitionError(
            f"step {step_id!r}: a join without a function joins Arrow rows and needs two streams keyed by "
            "columns (key_by(step_id, \"column\")); pass fn(left, right) to join records")
    if len(left_keys) != len(right_keys):
        raise JobDefinitionError(
            f"step {step_id!r}: the sides are keyed by {len(left_keys)} and {len(right_keys)} columns, so no "
            "key can be equal; key both by as many columns")
    if not (isinstance(suffixes, tuple) and len(suffixes) == 2 and all(isinstance(x, str) for x in suffixes)
            and suffixes[0] != suffixes[1]):
        raise JobDefinitionError(f"step {step_id!r}: suffixes must be two different strings; got {suffixes!r}")
    arrow = ArrowJoin(left_keys, right_keys, suffixes)  # type: ignore[arg-type]
    if left is None or right is None:
        return arrow, None
    try:
        left_names, right_names = join_column_names(left, right, left_keys, right_keys, suffixes)  # type: ignore
    except ValueError as exc:
        raise JobDefinitionError(f"step {step_id!r}: {exc}") from None
    return arrow, left_keys + WINDOW_COLUMNS + tuple(name for _, name in left_names + right_names)


def _is_hash_aggregate(function: object) -> bool:
    import pyarrow.compute as pc

    try:
        pc.get_function(f"hash_{function}")
    except Exception:  # not a str, or no such function
        return False
    return True
