"""A deterministic, seeded simulation of the checkpoint, recovery and commit protocols.

The code under test is the real protocol code: the coordinator's `Checkpointer`,
`recovery.begin_attempt` and `choose_checkpoint`, `CheckpointStore` (attempts, restore
records, void manifests, refusals, retention, origins), snapshot encoding and
verification, the restore merge by step id (`rescale.merge_states`), `SourceReader`, and
the sink writers with their recover: FileSink (one file per checkpoint; rolling JSON lines
locally and on S3; rolling Parquet, its open part kept as segments; per-checkpoint Parquet
with `compact_files` running beside the job) and PostgresSink (append and upsert).
Rolling is by size and by age (`roll_interval`, on the simulated clock).

Options, drawn with draws of their own (so the other schedules stay what they were), put
the real operators before the sinks, built and restored by `assembly.build_operators` as
a subtask builds them, their state in the same snapshots and restore merge:
- columnar (columnar.py, a quarter of the schedules): the source emits Arrow record
  batches cut at sizes drawn anew by every reader (a replay after a restore cuts
  elsewhere), float values with NaN and nulls, now and then a float32 batch (the per-key
  layout), through `key_by` on a column and `aggregate` with count, sum, min and max,
  into a sink of their own;
- event time (event_time.py, a quarter): the source stamps records with `AssignTimeOp`
  and a watermark generator with `idle_after` on the simulated clock; partitions run apart in
  event time, some fill later than they are read (polls find them empty), some are slow
  (a batch takes simulated time through the chain); subtasks read in rounds as
  SubtaskActor does (`SourceReader.read_round`, `polled_empty`, `ChainClock` ticks);
- window (windowed.py, a tenth of the schedules without the aggregate): the columnar
  batches with event time (some records stragglers, behind their partition's time)
  through `key_by` and an event-time tumbling `window` with
  allowed lateness (count and sum), its rows and late rows into a sink of their own, the
  clock's fired rows delivered and the end of time sent when the input ends, as
  SubtaskActor does; 32 key groups, so the partitions spread over the subtasks (the
  first run at 2, each run continuing one rescaled) and their watermarks differ at a
  kill, a stop or a rescale;
- incremental keyed state (keyed_state.py, half the schedules): snapshots of changes over
  earlier parts through the real `StateChangelog` (I1-I6), thresholds small enough that
  full rewrites, merges and the turnover rule all come up, merges that fail or span
  the next captures while an upload fails, and restores that read the parts.

Only the edges are simulated (world.py, fake_s3.py, fake_pg.py), all decided by one seed:
time, checkpoint storage (latency, lost responses, failed snapshot uploads), messages,
process deaths (often right after a manifest lands or while stopping), coordinators cut
off from the cluster as their manifest goes out (replaced, they go on: the manifest lands
late, then their retention runs; a quarter of the schedules, keeping one or two
checkpoints), a storage outage
that aborts checkpoints in a row, a damaged snapshot (sometimes every retained one), S3,
and a PostgreSQL server with prepared transactions, row locks, a prepared-transaction
limit and a commit log it truncates. faults.py decides when; a calm schedule holds every
fault back until the checkpoint after a long outage has committed, then compacts and
restores it.

Each schedule plays one story of runs (`Scenario.STORIES`, stories.py):
- single: one run to its end;
- savepoint: a run stopped with a savepoint, and a new run from it at another
  parallelism (before it, in half the schedules with the aggregate or the window, a run
  from the savepoint into a job whose stateful step changed, which must refuse the
  state it would misread: changed.py);
- two_runs: a run stopped with a savepoint, and two runs from it at once;
- fork: a run started from a retained (not final) checkpoint of a run that goes on, and is
  stopped later;
- resume: a run whose program goes away, resumed at another parallelism with a source
  partition missing, and resumed again with it back.

The invariants (`check`): in every sink, each line of runs (a run and the runs it
continues) committed every record id at most once, every one when its last run
finished, and a prefix of each partition when it stopped; every total is the running sum
of its partition; no restored transaction's staged data went missing; no sink committed
for a void manifest; no run went back to its origin past a checkpoint of its own (R5); no
write waited for a row lock; the job never held more prepared transactions than the
driver's check asks the server for; a run asked to stop ends. Columnar: every committed
row of the aggregate holds its key's count, sum, min and max over the key's first `n`
rows, NaN skipped by min and max, whatever the cuts, kills, restores and rescales; none
twice in a run; a finished line has each key's final row. Event time: no record comes
behind a watermark sent while its partition's latest poll had found records, and no
subtask goes idle before the watermark of its partitions that went quiet last. Window:
per line, each (key, window) has one first result then updates of strictly growing
counts (a window that fired never fires again with what it had), and a finished line's
last row of each is the count and sum of its records less those committed as late.
Keyed state: each snapshot of a manifest, read whole through its parts, holds the keyed
state its capture held, when the manifest lands and when a restore reads it; no snapshot
builds on a part whose upload its subtask knew had failed (I3). Retention (retention.py):
after each by a current coordinator, the newest checkpoints that count are there; after
every one, and at the end, each checkpoint that counts reads back whole through its parts,
and no restore refuses one of its own run's for its keyed state, unless the schedule
damaged it (I6).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import threading
import types
import uuid
from typing import Any

import pyarrow  # noqa: F401 - loaded before the clock starts

from raystream import _files
from raystream.connectors.files import parts as _part_files, compaction
from raystream.connectors.files import rolling_writer as _rolling_writer
from raystream._runtime.checkpointing import recovery
from raystream._runtime.subtask import clock as _chain_clock
from raystream._runtime.time import watermarks as _watermarks
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.plan.specs import RunOptions
from raystream.config import CheckpointConfig
from raystream.connectors.postgres.sink import PostgresSink, prepared_at_once
from raystream.sinks import FileSink

from .control import SimRun, watch_restore_choices
from .retention import watch_retention
from .fake_s3 import FakeS3Client
from .faults import Faults
from .stories import Stories
from .invariants import Invariants
from .columnar import AGG_SINK, Columns, check_aggregates, operator_steps
from .event_time import Timing
from .changed import check_changed
from .windowed import WIN_SINK, Windowing, check_windows
from .fake_pg import SimPgServer, SimPostgresSink
from .job import JOB, MAX_PARALLELISM, Outputs
from .trace import Trace
from .source import SimSource
from .world import SimFailure, SimStorage, World

logger = logging.getLogger(__name__)

ROOT = "sim-checkpoints/sim"
WINDOW_RATE = 0.1  # of the schedules without the aggregate (windowed.py)
BUCKET = "sim-bucket"


class Scenario(Faults, Stories):
    STORIES = ("single", "single", "savepoint", "two_runs", "resume", "fork")
    protect_stop = True  # a stop survives the coordinator it was sent to (tests/simulation/protections.py)

    def __init__(self, seed: int, out_dir: str):
        self.seed = seed
        self.world = World(seed)
        rng = self.world.rng
        self.out_dir = out_dir
        self.storage = SimStorage(self.world)
        self.store = CheckpointStore(ROOT, self.storage)
        self.trace = Trace()
        self.s3 = FakeS3Client()
        self.story = rng.choice(self.STORIES)
        self.partitions = rng.randint(2, 4)
        self.records = rng.randint(20, 40) if self.story == "single" else rng.randint(30, 60)
        # A calm schedule: nothing dies until a long storage outage (several checkpoints
        # aborted in a row, tolerated) is over and the next checkpoint commits what they
        # staged; then compaction and a restore of that checkpoint.
        self.calm = self.world.quick = self.story != "resume" and rng.random() < 0.2
        tolerable = 100 if self.calm else rng.choice([0, 3])
        interval = rng.choice([0.05, 0.1, 0.3])
        self.config = CheckpointConfig(interval=interval, retain=2,
                                       timeout=rng.choice([1.0, 5.0]), tolerable_failures=tolerable)
        self.kinds = ["files"] + [k for k in ("rolled", "s3_rolled", "parquet", "pg_rows", "pg_totals")
                                  if rng.random() < 0.4 or (self.calm and k == "parquet")]
        self.pg = SimPgServer() if any(k.startswith("pg_") for k in self.kinds) else None
        self.roll_size = rng.choice([100, 500, 3000])  # a row is about 50 bytes: files span checkpoints
        # Their own generator, so that the rest of a seed's schedule stays what it was.
        rolling = self.rolling_rng = random.Random(seed ^ 0x7011)
        # rolled output's compactions draw apart: the rolling draws (the mutants they find) stay as they were
        self.compaction_rng = random.Random(seed ^ 0xC0AC)
        # Incremental keyed state (I1-I6) in half the schedules, drawn apart as well; parts of
        # a few hundred bytes reach these thresholds, so that full rewrites, merges and the
        # turnover rule (I2) come up within a few checkpoints.
        state = random.Random(seed ^ 0x57A7E)
        self.config = dataclasses.replace(self.config, incremental=state.random() < 0.5,
                                          base_every=state.randint(1, 4), compact_above=state.choice([0, 300, 3000]))
        self.draw_cut_offs(seed)  # replaced coordinators that go on (faults.py)
        if rolling.random() < 0.4:  # Parquet rolled as FileSink does by default (segments, merged at a roll)
            self.kinds.append("parquet_rolled")
        self.roll_interval = rolling.choice([None, 0.15, 0.5])  # simulated seconds; None: by size only
        self.parquet_roll_size = rolling.choice([None, 1000, 2000])  # a segment of a few rows is ~1 kB
        # Often no longer than a checkpoint interval: a part open at one checkpoint rolls at the next.
        self.parquet_roll_interval = rolling.choice([0.02, 0.05, 0.15, 0.5])
        self.runs: list[SimRun] = []
        self.procs: dict = {}  # (run, subtask, attempt) -> its process, for the PostgreSQL sessions
        self.lines: list[list[SimRun]] = []  # each line of runs whose outputs continue each other
        self.crash_after_manifest = rng.random() < 0.3
        # Someone who can write the storage plants fencing records (docs/security.md). Its
        # own generator: the other faults of a seed's schedule stay what they were.
        self.intruder = random.Random(seed ^ 0x5EC).random() < 0.3
        self.crash_while_stopping = rng.random() < 0.5
        self.storage.on_manifest = self._maybe_crash_after_manifest
        self.storage.fail_rate = 0.0 if self.calm else rng.choice([0.0, 0.0, 0.05])
        # Checkpoints aborted in a row (up to tolerable_failures, or more), starting a while
        # after the first checkpoint completed, so that sinks have committed before it.
        self.outage = (rng.uniform(0.0, 0.5), rng.uniform(0.2, 2.0)) if rng.random() < 0.5 else None
        if self.calm:
            self.outage = (rng.uniform(0.0, 0.2), rng.uniform(0.5, 2.0))
        self._outage_landed = False
        self._after_outage: tuple[str, int] | None = None  # the first checkpoint to land after it
        self._calm_over = False  # a calm schedule's compaction and restore after the outage began
        self.damaged: set[tuple[str, int]] = set()
        self.listings: dict[str, list[list[int]]] = {}  # run -> its manifest ids, as listed after each landed
        self.origins: dict[str, dict[int, int]] = {}  # fork: the run from a checkpoint of r1 -> its offsets
        self._read: dict[tuple[str, str], list[dict]] = {}  # committed rows per sink and place, read once
        # Options with draws of their own (a schedule without them stays what it was): the
        # columnar aggregate (columnar.py); event time, idle and slow partitions (event_time.py).
        # The salt spares seeds 1, 1267 and 1510: only they (of 2,000) catch a rolled Parquet
        # part not cut back (protections.py).
        options = random.Random(seed ^ 0x0B0)
        self.columns = Columns(seed, self.partitions, MAX_PARALLELISM) if options.random() < 0.25 else None
        self.timing = Timing(seed, self.partitions) if options.random() < 0.25 else None
        # The window (windowed.py), drawn after them, in a schedule without the aggregate (the
        # chain is a line): Arrow batches with event time, partitions apart in it.
        self.windows = Windowing(seed, self.partitions) if options.random() < WINDOW_RATE and self.columns is None \
            else None
        # Key groups: a partition is read where its key group is (job.py, `owner`); the
        # window's spread the partitions over the subtasks (128 puts all on subtask 0 at 2).
        self.max_parallelism = self.windows.max_parallelism if self.windows is not None else MAX_PARALLELISM
        if self.windows is not None and self.timing is None:
            self.timing = Timing(seed, self.partitions)
        if self.windows is not None:
            self.timing.behind = self.windows.behind
        self.batches = self.columns or (self.windows and self.windows.columns)  # Arrow batches, or None
        self.operators = operator_steps(self.columns, self.timing and self.timing.event_time(bool(self.batches)),
                                        self.windows)
        self.fork_points: dict[str, int] = {}  # a fork: the run from a checkpoint of r1 -> that checkpoint

    # --- the outputs ------------------------------------------------------------------------

    def directory(self, kind: str, place: str = "") -> str:
        """Where sink `kind` writes: the shared place, or a branch's own (`place`)."""
        if kind == "s3_rolled":
            return f"s3://{BUCKET}/rolled{place}"
        return os.path.join(self.out_dir, kind + place)

    def outputs(self, upsert_table: str = "totals", place: str = "") -> Outputs:
        """The sinks; `place`: a branch that writes into directories of its own."""
        sinks: dict[str, Any] = {}
        for kind in self.kinds:
            if kind == "files":
                sinks[kind] = FileSink(self.directory(kind, place), rows_per_file=8, roll="checkpoint")
            elif kind in ("rolled", "s3_rolled"):
                sinks[kind] = FileSink(self.directory(kind, place), roll_size=self.roll_size,
                                       roll_interval=self.roll_interval)
            elif kind == "parquet":
                sinks[kind] = FileSink(self.directory(kind, place), format="parquet", rows_per_file=4, roll="checkpoint")
            elif kind == "parquet_rolled":
                sinks[kind] = FileSink(self.directory(kind, place), format="parquet", rows_per_file=4,
                                       roll_size=self.parquet_roll_size, roll_interval=self.parquet_roll_interval)
            elif kind == "pg_rows":
                sinks[kind] = SimPostgresSink(self.pg, self.procs, "host=sim dbname=sim", "rows", create_table=True)
            elif kind == "pg_totals":
                sinks[kind] = SimPostgresSink(self.pg, self.procs, "host=sim dbname=sim", upsert_table, mode="upsert",
                                              key="p", create_table=True)
        if self.columns is not None:  # the aggregate's rows
            sinks[AGG_SINK] = FileSink(self.directory("agg", place), rows_per_file=16, roll="checkpoint")
        if self.windows is not None:  # the window's rows and its late rows
            sinks[WIN_SINK] = FileSink(self.directory("win", place), rows_per_file=16, roll="checkpoint")
        return Outputs(sinks, self.pg, place, self.operators)

    def new_run(self, run_id: str, *, parallelism: int, present: list[int], options: RunOptions,
                outputs: Outputs | None = None, label: str = "") -> SimRun:
        if self.windows is not None:  # rescaled: a window step takes keys from old subtasks apart in event time
            before = None if not self.runs else \
                self.runs[-1] if self.runs[-1].run_id == run_id else self.runs[0]  # the run it continues
            parallelism = self.windows.parallelism(before and before.parallelism)
        source = SimSource(self.partitions, self.records, present, self.batches, self.timing)
        run = SimRun(self, run_id, parallelism=parallelism, source=source, outputs=outputs or self.outputs(),
                     options=options, config=self.config, label=label or run_id)
        self.runs.append(run)
        if self.pg is not None:  # what the driver's check asks of the server, for every run at once
            need = sum(prepared_at_once(sink, r.parallelism, _OneSinkJob(self.config, sink, r.parallelism))
                       for r in self.runs for sink in r.outputs.sinks.values() if isinstance(sink, PostgresSink))
            self.pg.max_prepared = max(self.pg.max_prepared if len(self.runs) > 1 else 0, need)
        return run

    async def until(self, done: Any, limit: float = 600.0) -> None:
        def check() -> bool:
            for run in self.runs:
                run.check_task()
            return bool(done())

        await self.world.run(check, limit=limit)

    def check(self) -> None:
        invariants = Invariants(self)
        invariants.check()
        if self.columns is not None:
            check_aggregates(self)
        if self.windows is not None:
            check_windows(self, lambda line: invariants.line_rows("files", line))
        for run in self.runs:
            if run.changed:
                check_changed(run)


class _OneSinkJob:
    """What `prepared_at_once` reads of a job: one sink step at `parallelism`, under `config`."""

    def __init__(self, config: CheckpointConfig, sink: Any, parallelism: int):
        self.checkpoint, self.parallelism = config, parallelism
        self.steps = [types.SimpleNamespace(sink=sink)]
        self.errors = types.SimpleNamespace(mode="fail")

    def parallelism_of(self, step: Any) -> int:
        return self.parallelism


class _StaleListing(CheckpointStore):
    """The checkpoint store as compaction sees it: its first listing of a run's manifests
    may be one from a while ago (retention has deleted some since), later ones are fresh."""

    def __init__(self, scenario: Scenario):
        super().__init__(ROOT, scenario.storage)
        self._scenario = scenario
        self._listed: set[str] = set()

    def manifest_ids(self, run_id: str) -> list[int]:
        old = self._scenario.listings.get(run_id, [])
        if run_id not in self._listed and old:
            self._listed.add(run_id)
            return self._scenario.world.rng.choice(old[-4:])
        return super().manifest_ids(run_id)


def _seeded_uuid4(names: random.Random, real: Any) -> Any:
    """uuid.uuid4 for the schedule: file tokens (which name, and so order, the files
    sinks and compaction write) come from the seed, so a schedule replays exactly. Only
    in this thread: another thread of the process (a Ray or pytest helper thread) that
    takes one gets a real one, and the schedule's sequence stays what the seed made."""
    thread = threading.get_ident()

    def uuid4() -> uuid.UUID:
        if threading.get_ident() != thread:
            return real()
        return uuid.UUID(int=names.getrandbits(128))

    return uuid4


def run_schedule(seed: int, out_dir: str) -> Trace:
    """Run one seeded schedule and check its invariants; raises SimFailure naming the seed."""
    return play_schedule(Scenario(seed, out_dir)).trace


def play_schedule(scenario: Scenario) -> Scenario:
    """Run `scenario` and check its invariants (SimFailure naming the seed); returns it,
    played, for a look at what it left (tests/simulation/replay.py)."""
    seed = scenario.seed
    loop = scenario.world.new_loop()
    saved = (recovery.choose_checkpoint, _part_files.PART_SIZE, getattr(_files._clients, "s3", None),
             compaction._checkpoint_store, uuid.uuid4, _rolling_writer._clock, _watermarks.time, _chain_clock.time,
             CheckpointStore.retain)
    _rolling_writer._clock = lambda: scenario.world.now  # roll_interval on the simulated clock
    # idleness and the watermark interval on the simulated clock
    _watermarks.time = _chain_clock.time = types.SimpleNamespace(monotonic=lambda: scenario.world.now)
    recovery.choose_checkpoint = watch_restore_choices(scenario.trace)
    CheckpointStore.retain = watch_retention(scenario)  # C7's oracle
    uuid.uuid4 = _seeded_uuid4(random.Random(seed), saved[4])
    _part_files.PART_SIZE = 40  # tiny S3 parts: uploads of several parts, and tails
    _files._clients.s3 = scenario.s3
    compaction._checkpoint_store = lambda root: _StaleListing(scenario)
    try:
        loop.run_until_complete(scenario.play())
        scenario.check()
    except SimFailure as exc:
        options = "".join(f", {name}" for name, on in (("columnar", scenario.columns), ("event time", scenario.timing),
                                                       ("window", scenario.windows)) if on is not None)
        raise SimFailure(f"seed {seed} ({scenario.story}, sinks {scenario.kinds}{options}): {exc}\n"
                         f"replay: RAYSTREAM_SIM_SEED={seed} pytest tests/simulation\n"
                         + "\n".join(scenario.world.log[-80:])) from None
    finally:
        (recovery.choose_checkpoint, _part_files.PART_SIZE, _files._clients.s3, compaction._checkpoint_store,
         uuid.uuid4, _rolling_writer._clock, _watermarks.time, _chain_clock.time, CheckpointStore.retain) = saved
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    return scenario


__all__ = ["run_schedule", "play_schedule", "Scenario", "SimFailure", "JOB"]
