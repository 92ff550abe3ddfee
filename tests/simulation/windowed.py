"""Window schedules of the simulation (sim.py): an event-time columnar tumbling window with
allowed lateness, fired by the watermark, restored and rescaled.

The source emits the Arrow batches of the columnar schedules (columnar.py: keys in their
partition's key group, so no exchange is needed, cut anywhere) with event time
(event_time.py: partitions run apart in event time, idle and slow ones; in two thirds of
the schedules some records are stragglers, behind their partition's time), through the real
`key_by` on a column and `window(Tumbling(size), allowed_lateness=...).aggregate(count,
sum)` (ArrowWindowOp, per-key layout for a float sum, window-major for an integer one;
built and restored by `assembly.build_operators`), whose rows and late rows go to a sink
(one sink: each sink's storage calls make checkpoints longer). The job has 32 key groups,
so the partitions spread over the subtasks (job.py's `owner`); the first run has 2 and
each run continuing another is rescaled (2 to 1, 1 to 2 or 3). A subtask's watermark is
that of its own partitions, so at a kill, a stop or a rescale the old subtasks'
watermarks differ, and a rescaled window step starts from the oldest (R4) while holding
windows that fired on a subtask whose watermark was ahead. The subtask delivers the
clock's fired rows as SubtaskActor does, and the end of time (MAX_TIME) when its input
ends (not at a stop).

The invariant, on committed output, per line of runs (a run and the runs it continues;
a fork's line: the old run's rows written before the checkpoint it started from, and its
own):
- for each (key, window), the rows are one first result (update=False), then updates
  (update=True), each with a strictly greater count than the one before: a window that
  fired does not fire again with what it had (a8c3978), and no row is committed twice;
- a line whose last run finished (every window has fired: the end of time) has, for each
  (key, window), a last row whose count and sum are those of exactly the records it
  processed (the line's committed records in the "files" sink) of that key and window,
  less the rows committed to the late output (marked late in the same sink); no late
  row twice, none the line did not process. A row too late for its window (end - 1 + allowed lateness <= watermark) goes
  to the late output, every other row into its window: which ones are late depends on the
  watermarks, the count and sum of a window plus its late rows do not.
"""
from __future__ import annotations

import collections
import datetime as dt
import math
import random
from typing import Any

import pyarrow as pa

from raystream import aggregates as agg
from raystream._runtime.transport.batch import Batches, untimed
from raystream.sinks import read_files
from raystream.windows import Tumbling

from .columnar import Columns
from .event_time import BASE_MS
from .world import SimFailure

WIN_SINK = "win_out"  # the sink step of the window's rows and its late rows
WINDOW_STEP = "win"
_NAN = "NaN"  # as columnar.py writes it


class Windowing:
    """A schedule's window option: the window's size and lateness, the column it sums, and
    the input's keys and values (a `Columns` of its own, whose aggregate it does not add)."""

    #: Key groups: partitions 0-3 fall in groups 13, 27, 1 and 23 of 32, read by subtasks
    #: 0 1 0 1 at parallelism 2 and 1 2 0 2 at 3, so subtasks read partitions apart in
    #: event time (of 128, every partition is subtask 0's at 2, and all but one at 3).
    max_parallelism = 32

    def __init__(self, seed: int, partitions: int):
        rng = random.Random(seed ^ 0x3141D)  # its own draws: the rest of the schedule stays what it was
        self.columns = Columns(seed, partitions, self.max_parallelism)  # the batches: keys, values, cuts
        # Milliseconds of event time; a partition's records are 1 to 20 ms apart (event_time.py).
        self.size_ms = rng.choice([10, 40, 150])
        # Fired windows kept a while, or until the end: a subtask whose watermark is ahead
        # holds windows that the others' have not reached yet.
        self.lateness_ms = self.size_ms * rng.choice([1, 4, 1000])
        # "v": floats with NaN and nulls, the per-key layout; "id": integers, window-major
        self.column = rng.choice(["v", "id"])
        self._parallelisms = random.Random(seed ^ 0x9A2)
        # Stragglers: in a third of the schedules none (every partition's records in event-time
        # order, as before), else a tenth or a quarter of the records come behind their
        # partition, by up to the lateness (at most 4 windows) and 300 ms more (drawn last: the
        # draws above stay). One late for the subtask ahead at a rescale, where its window was
        # dropped, is on time for the older watermark the rescaled step starts from (R4): it
        # must go to the late output, not open the window again (96e1187).
        self.straggler_rate = rng.choice([0.0, 0.1, 0.25])
        self.reach_ms = min(self.lateness_ms, 4 * self.size_ms) + 300

    def behind(self, record: int) -> int:
        """Milliseconds `record` comes behind its partition's time (event_time.Timing.behind)."""
        if not self.straggler_rate or self.columns._mix(record, 4) >= self.straggler_rate:
            return 0
        return int(self.columns._mix(record, 5) * self.reach_ms)

    def parallelism(self, before: int | None) -> int:
        """A run's parallelism: the first run's 2 (two subtasks apart in event time; more
        make checkpoints time out more often, and schedules long), a run continuing one
        another (a rescale): 1 after 2 (one subtask takes both's keys and the older
        watermark), mostly 2 after 1."""
        if before is None:
            return 2
        return 1 if before > 1 else self._parallelisms.choice([2, 2, 3])

    def add_steps(self, stream: Any) -> None:
        """The operators after the source, as a job builds them."""
        (stream.key_by("by_k", "k")
         .window(Tumbling(dt.timedelta(milliseconds=self.size_ms)),
                 allowed_lateness=dt.timedelta(milliseconds=self.lateness_ms))
         .aggregate(WINDOW_STEP, n=agg.count(), total=agg.sum(self.column)))

    # --- the output --------------------------------------------------------------------------

    @staticmethod
    def rows(out: Any, run_id: str, since: int) -> list[dict]:
        """The window's output batch as its sink's rows (the start in ms); `since`: the
        checkpoint the writer's output had reached (a fork's line takes the rows before its
        checkpoint)."""
        if isinstance(out, Batches):  # windows of keys no one column holds: a batch per kind
            return [row for part in out.parts for row in Windowing.rows(part, run_id, since)]
        batch, _ = untimed(out)
        if not isinstance(batch, pa.RecordBatch) or not batch.num_rows:
            return []
        starts = batch.column("window_start").cast(pa.int64()).to_pylist()
        return [{"k": k, "start": s, "n": n, "total": _NAN if isinstance(t, float) and t != t else t,
                 "update": u, "run": run_id, "since": since}
                for k, s, n, t, u in zip(batch.column("k").to_pylist(), starts, batch.column("n").to_pylist(),
                                         batch.column("total").to_pylist(), batch.column("update").to_pylist())]

    @staticmethod
    def late_rows(batches: list[Any], run_id: str, since: int) -> list[dict]:
        """The late output's batches (Arrow rows, keyed) as rows of the same sink, marked late."""
        rows = []
        for late in batches:
            keyed, _ = untimed(late)
            batch = keyed.batch
            rows += [{"late": True, "id": i, "k": k, "run": run_id, "since": since}
                     for i, k in zip(batch.column("id").to_pylist(), batch.column("k").to_pylist())]
        return rows

    # --- the invariant ---------------------------------------------------------------------

    def start(self, record: int, timing: Any) -> int:
        t = timing.millis(record)
        return t - t % self.size_ms

    def expected(self, ids: set[int], late: set[int], timing: Any) -> dict[tuple[int, int], dict[str, Any]]:
        """(key, window start) -> the count and sum of the records `ids` less `late`."""
        values: dict[tuple[int, int], list[Any]] = collections.defaultdict(list)
        columns = self.columns
        for record in ids - late:
            values[(columns.key(record), self.start(record, timing))].append(
                columns.value(record) if self.column == "v" else record)
        out = {}
        for window, vs in values.items():
            present = [v for v in vs if v is not None]
            nan = any(v != v for v in present)
            out[window] = {"n": len(vs), "total": None if not present else math.nan if nan else sum(present)}
        return out


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and want != want:
        return got == _NAN
    return got == want and (got is None) == (want is None)


def _where(key: int, start: int, size: int) -> str:
    return f"key {key}, window [{start - BASE_MS}, {start - BASE_MS + size}) ms past the base"


def check_windows(scenario: Any, files_rows: Any) -> None:
    """The invariant of the module docstring; `files_rows(line)`: the records the line
    committed to the "files" sink (as the line's invariants read them)."""
    w: Windowing = scenario.windows
    places = {r.outputs.place for r in scenario.runs}
    found_rows = {place: read_files(scenario.directory("win", place)) for place in places}
    out = {place: [r for r in rows if not r.get("late")] for place, rows in found_rows.items()}
    late = {place: [r for r in rows if r.get("late")] for place, rows in found_rows.items()}
    for line in scenario.lines:
        last, first = line[-1], line[0]
        ids = {r.run_id for r in line}
        fork = scenario.fork_points.get(last.run_id) if len(line) == 2 and last.run_id != first.run_id else None
        if fork is not None and last.outcome.startswith("failed"):
            continue  # as the line's other invariants: a fork that failed to start has nothing of its own

        def mine(row: dict) -> bool:
            return row["run"] in ids and (fork is None or row["run"] != first.run_id or row["since"] < fork)

        labels = [r.label for r in line]
        rows = [r for place in {r.outputs.place for r in line} for r in out[place] if mine(r)]
        windows: dict[tuple[int, int], list[dict]] = collections.defaultdict(list)
        for row in rows:
            windows[(row["k"], row["start"])].append(row)
        for (key, start), found in windows.items():
            found.sort(key=lambda r: (r["update"], r["n"]))
            firsts = [r for r in found if not r["update"]]
            if len(firsts) != 1:
                raise SimFailure(f"window (columnar): line {labels}, {_where(key, start, w.size_ms)}: "
                                 f"{len(firsts)} first results (update=False) committed: {found[:4]}")
            for before, row in zip(found, found[1:]):
                if row["n"] <= before["n"]:
                    raise SimFailure(
                        f"window (columnar): line {labels}, {_where(key, start, w.size_ms)}: an update committed by "
                        f"{row['run']} counts {row['n']} (total {row['total']}), not more than the row before it "
                        f"({'update' if before['update'] else 'first result'} of {before['run']}, count "
                        f"{before['n']}): the window fired again with what it had (rows: {found[:6]})")
        if last.outcome != "finished":
            continue
        processed = {r["id"] for r in files_rows(line)}
        late_rows = [r for place in {r.outputs.place for r in line} for r in late[place] if mine(r)]
        counts = collections.Counter(r["id"] for r in late_rows)
        twice = sorted(i for i, c in counts.items() if c > 1)
        if twice:
            raise SimFailure(f"window (columnar): line {labels}: late rows committed twice: ids {twice[:10]}")
        stray = sorted(set(counts) - processed)
        if stray:
            raise SimFailure(f"window (columnar): line {labels}: late rows of records the line never committed: "
                             f"ids {stray[:10]}")
        want = w.expected(processed, set(counts), scenario.timing)
        for (key, start), values in sorted(want.items(), key=repr):
            found = windows.get((key, start))
            if not found:
                raise SimFailure(f"window (columnar): line {labels} finished; {_where(key, start, w.size_ms)} has "
                                 f"{values['n']} records on time and no committed row")
            final = found[-1]
            if final["n"] != values["n"] or not _same(final["total"], values["total"]):
                raise SimFailure(
                    f"window (columnar): line {labels} finished; {_where(key, start, w.size_ms)}: its last row, "
                    f"committed by {final['run']}, counts {final['n']} with total {final['total']}; its records "
                    f"less the late ones count {values['n']} with total {values['total']} (sum of "
                    f"{w.column!r}; lateness {w.lateness_ms} ms)")
        extra = sorted(set(windows) - set(want), key=repr)
        if extra:
            key, start = extra[0]
            raise SimFailure(f"window (columnar): line {labels} finished; {_where(key, start, w.size_ms)} has rows "
                             f"but no record on time: {windows[extra[0]][:3]}")
