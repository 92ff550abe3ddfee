"""The invariants a schedule of the simulation must keep (sim.py), checked after it ran:

- every line of runs (a run and the runs it continues) committed, in every sink, every
  record id at most once, all of them when its last run finished, a prefix of each
  partition when it stopped (a run from a checkpoint of a run that goes on: that run's
  output up to the checkpoint, and its own); every total is the running sum of its
  partition; an upsert table holds each partition's final sum, and no column a record
  set was lost;
- no restored transaction's staged data went missing, no sink failed in a live process,
  no run went back to its origin past a checkpoint of its own (R5), no write waited for a
  row lock, the job never held more prepared transactions than the driver's check asks
  for, and a run that ended left none prepared;
- with event time, no record came behind the watermark unless it was sent while the
  record's partition looked empty (event_time.py); the columnar aggregate's rows are
  checked by columnar.py (`check_aggregates`), the window's by windowed.py
  (`check_windows`);
- a sink committed for checkpoint n only when its own attempt published n, never for a
  void manifest; an attempt recorded as voiding nothing (closed) started no subtask; every checkpoint a restore could still choose lists only staged files
  that exist or were committed;
- keyed state (keyed_state.py, retention.py): a snapshot reads back what it captured (I5)
  and builds on no part whose upload had failed (I3); retention keeps the newest
  checkpoints that count and nothing older (C7); each checkpoint that counts reads back
  whole through its parts, and no restore refuses one of its own run's for its keyed
  state, unless damaged on purpose (I6);
- a run failed only as R5 says it must (every checkpoint of its own refused, or a fall-back
  past a damaged checkpoint another run started from), or, for a run from another run's
  checkpoint, when that checkpoint is gone or holds an S3 part file it cannot read.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.manifest import Manifest
from raystream._storage import open_storage
from raystream.connectors.files.compaction import visible_files
from raystream.errors import CorruptCheckpointError
from raystream.sinks import read_files, read_table

from .control import SimRun
from .retention import reused_ids, unreadable_at_end
from .source import record_ids
from .world import SimFailure


class Invariants:
    def __init__(self, scenario: Any):
        self.s = scenario

    def check(self) -> None:
        """Every invariant; the first that does not hold raises SimFailure."""
        t = self.s.trace
        for what, found in (("a restored transaction's staged data was gone", t.missing_staged),
                            ("a sink failed", t.sink_errors),
                            ("a run went back to its origin", t.rewinds),
                            ("a snapshot read back through its parts held other keyed state than it captured (I5)",
                             t.state_mismatches),
                            ("retention deleted what a checkpoint that counts needs (C7, I6)", t.retention),
                            ("a checkpoint id was used twice (C1)", reused_ids(self.s)),
                            ("a restore refused a checkpoint of its own run for its keyed state (I6)",
                             t.unrestorable),
                            ("a checkpoint that counts did not read back through its parts at the end (I6)",
                             unreadable_at_end(self.s)),
                            ("a snapshot was captured over a part whose upload was known to have failed (I3)",
                             t.over_failed),
                            ("a record came behind the watermark (event time)", t.late),
                            ("a subtask went idle before sending its records' watermark", t.idle),
                            ("a source held a barrier past its current batch (C1)", t.held),
                            ("a write waited for a row lock", self.s.pg.lock_waits if self.s.pg else []),
                            ("the job held more prepared transactions than the check asks the server for",
                             self.s.pg.limit_hits if self.s.pg else [])):
            if found:
                raise SimFailure(f"{what}: {found[0]}")
        for run in self.s.runs:
            if run.outcome.startswith("failed") and not self._failure_expected(run):
                raise SimFailure(f"run {run.label} failed: {run.outcome}")
        if self.s.pg is not None:  # a run that ended committed or rolled back every transaction it prepared
            last = {r.run_id: r for r in self.s.runs}  # a resumed run id: its last program counts
            ended = {i for i, r in last.items() if r.outcome in ("finished", "stopped")}
            left = [g for g in self.s.pg.prepared if g.split("|")[-3] in ended]
            if left:
                raise SimFailure(f"prepared transactions left behind by runs that ended: {left}")
        for line in self.s.lines:
            self._check_line(line)
        self._check_commits()
        self._check_restorable()
        self._check_closed()

    def _check_closed(self) -> None:
        """An attempt recorded as closed or as voiding nothing (R3) never started a subtask."""
        for run_id in sorted({r.run_id for r in self.s.runs}):
            for key in self.s.storage.list(f"{run_id}/restores/"):
                try:
                    body = self.s.store.read_record(key, "restore")
                except Exception:  # noqa: BLE001 - a planted record: the store ignores it
                    continue
                if body.get("closed"):
                    started = [line for line in self.s.world.log if f"{run_id}:subtask" in line
                               and f"@a{body['attempt']} " in line]
                    if started:
                        raise SimFailure(f"attempt {body['attempt']} of {run_id} was closed ({body['closed']}) "
                                         f"but ran: {started[0]}")

    def _failure_expected(self, run: SimRun) -> bool:
        """R5: a run fails when every checkpoint of its own that counts is refused, which
        only damage does here. A run from a checkpoint with another run's S3 part file
        open is refused (connectors/files/parts.py, 5). A run into a changed job is
        checked on its own (changed.py)."""
        if run.changed:
            return True
        if "can be restored" in run.outcome and any(r == run.run_id for r, _ in self.s.damaged):
            return True  # a checkpoint of its own was damaged (a snapshot deleted is refused alike: not this)
        if "started from, was refused" in run.outcome and any(r == "r1" for r, _ in self.s.damaged):
            return True  # the checkpoint it started from was damaged
        if "going back past it would retract output run" in run.outcome and any(r == run.run_id for r, _ in self.s.damaged):
            return True  # a checkpoint another run started from was damaged: no fall-back past it (R5)
        if run.run_id in self.s.origins and f"which run {run.run_id} started from, is gone" in run.outcome:
            return True  # its origin was a checkpoint of a run that goes on, whose retention deleted it
        return run.run_id in self.s.origins and "s3_rolled" in self.s.kinds and "start from a savepoint" in run.outcome

    def _check_line(self, line: list[SimRun]) -> None:
        last = line[-1]
        ids = {r.run_id for r in line}
        refused = any(run_id in ids for run_id, _ in self.s.damaged)
        expect = "all" if last.outcome == "finished" else "prefix"
        upto = self.s.origins.get(last.run_id) if len(line) == 2 else None
        forked = upto is not None
        if forked and last.outcome.startswith("failed"):
            return
        for kind in self.s.kinds:
            if kind == "pg_totals":
                # A fall-back past a refused checkpoint cannot retract what it upserted (the replay
                # writes it again, unless a stop comes first).
                if last.outcome in ("finished", "stopped") and not forked and not refused:
                    self._check_totals(line, last.outputs.sinks[kind].table)
                continue
            if forked and kind in ("rolled", "s3_rolled", "parquet_rolled"):
                continue  # an open part file is in A's output and in B's copy of it; A's own line checks A
            rows = self.line_rows(kind, line)
            # A fall-back past a refused checkpoint cannot retract rows committed to PostgreSQL.
            self._check_rows(kind, rows, expect, allow_duplicates=kind == "pg_rows" and refused)

    def line_rows(self, kind: str, line: list[SimRun]) -> list[dict]:
        """The rows the line committed to sink `kind`: its runs' (a fork's line: A's output
        up to the checkpoint B started from, and B's)."""
        ids = {r.run_id for r in line}
        upto = self.s.origins.get(line[-1].run_id) if len(line) == 2 else None
        rows = [r for place in {r.outputs.place for r in line} for r in self._rows(kind, place)
                if r.get("_file_run", r["run"]) in ids]
        if upto is not None:
            rows = [r for r in rows if r["run"] != line[0].run_id or
                    (r["id"] - r["p"]) // self.s.partitions < upto.get(r["p"], 0)]
        return rows

    def _rows(self, kind: str, place: str = "") -> list[dict]:
        if (kind, place) not in self.s._read:
            self.s._read[(kind, place)] = self._read_rows(kind, place) if kind != "pg_rows" or not place else []
        return self.s._read[(kind, place)]

    def _read_rows(self, kind: str, place: str) -> list[dict]:
        if kind == "pg_rows":
            return self.s.pg.rows("rows")
        directory = self.s.directory(kind, place)
        parquet = kind in ("parquet", "parquet_rolled")
        self._check_readers(directory, "parquet" if parquet else "jsonl")
        if kind == "parquet":  # compacted files name no run
            return read_files(directory, format="parquet")
        rows = []  # read file by file: a row belongs to the run that wrote its file (a copy is the copier's)
        storage = open_storage(directory)
        for key in visible_files(directory):
            run_id = key.split("@")[2] if "@" in key else None  # a compacted file names no run: its rows' own
            if parquet:
                table = pq.read_table(pa.BufferReader(storage.get(key)))
                rows += [{**{k: v for k, v in r.items() if v is not None}, **({"_file_run": run_id} if run_id else {})}
                         for r in table.to_pylist()]
            else:
                rows += [{**json.loads(line), "_file_run": run_id} for line in storage.get(key).splitlines() if line]
        return rows

    @staticmethod
    def _check_readers(directory: str, fmt: str) -> None:
        """read_table sees what read_files sees: every row, every field of every row."""
        rows = read_files(directory, format=fmt)
        table = read_table(directory, format=fmt)
        fields = set().union(*(r.keys() for r in rows)) if rows else set()
        if table.num_rows != len(rows) or (rows and set(table.column_names) != fields):
            raise SimFailure(f"{directory}: read_table has {table.num_rows} rows of {sorted(table.column_names)}, "
                             f"read_files {len(rows)} rows of {sorted(fields)}")
        if rows and sorted(table.column("id").to_pylist()) != sorted(r["id"] for r in rows):
            raise SimFailure(f"{directory}: read_table and read_files disagree on the ids")

    def _check_rows(self, kind: str, rows: list[dict], expect: str, allow_duplicates: bool) -> None:
        if kind != "pg_rows":  # a field only some rows have is kept on exactly those rows
            misplaced = [r["id"] for r in rows if (r.get("note") == "seventh") != (r["id"] % 7 == 0)]
            if misplaced:
                raise SimFailure(f"{kind}: the field only every seventh row has is lost or misplaced: ids {misplaced[:10]}")
        counts = collections.Counter(r["id"] for r in rows)
        duplicated = sorted(i for i, n in counts.items() if n > 1)
        if duplicated and not allow_duplicates:
            raise SimFailure(f"{kind}: ids committed twice: {duplicated[:10]}")
        for p in range(self.s.partitions):
            ids = record_ids(p, self.s.partitions, self.s.records)
            have = [i for i in ids if i in counts]
            if expect == "all" and have != ids:
                raise SimFailure(f"{kind}: partition {p} lost ids {sorted(set(ids) - set(have))[:10]}")
            if have != ids[:len(have)]:
                raise SimFailure(f"{kind}: partition {p} has gaps: {have[:20]}")
        total: dict[int, int] = {}
        by_id = {r["id"]: r for r in rows}
        for i in sorted(by_id):
            row = by_id[i]
            total[row["p"]] = total.get(row["p"], 0) + i
            if row["total"] != total[row["p"]]:
                raise SimFailure(f"{kind}: id {i}: total {row['total']} where the running sum is {total[row['p']]}")

    def _check_totals(self, line: list[SimRun], table: str) -> None:
        """Upsert: each partition's row is its final running sum over what the line committed."""
        ids = {r.run_id for r in line}
        files = [r for place in {r.outputs.place for r in line} for r in self._rows("files", place) if r["run"] in ids]
        sums = collections.Counter()
        for r in files:
            sums[r["p"]] += r["id"]
        got = {r["p"]: r["total"] for r in self.s.pg.rows(table)}
        unnamed = [r for r in self.s.pg.rows(table) if r.get("id") is None]
        if unnamed:  # every partition had a record naming its id: an upsert lost a column
            raise SimFailure(f"pg_totals {table}: rows without the id their records set: {unnamed[:3]}")
        for p, total in got.items():
            if total != sums[p]:
                raise SimFailure(f"pg_totals {table}: partition {p} holds {total}; its committed records sum to "
                                 f"{sums[p]}")
        if table == "totals" and set(got) != {r["p"] for r in files}:
            raise SimFailure(f"pg_totals {table}: partitions {sorted(got)}, expected {sorted(sums)}")

    def _check_commits(self) -> None:
        """A sink commits for checkpoint n only when its own attempt's coordinator published
        n, and never for a manifest that is void."""
        published = [Manifest.from_json(data, self.s.store._key) for data in self.s.storage.published]
        for run_id, attempt, checkpoint_id in self.s.trace.commits:
            m = next((m for m in published if (m.run_id, m.checkpoint_id, m.attempt) == (run_id, checkpoint_id,
                                                                                           attempt)), None)
            if m is None:
                raise SimFailure(f"{run_id} attempt {attempt} committed for checkpoint {checkpoint_id}, which it "
                                 "never published")
            points = self.s.store.restore_points(run_id)
            if CheckpointStore.is_void(m, points) and checkpoint_id not in self.s.store.refused(run_id):
                raise SimFailure(f"{run_id} attempt {attempt} committed checkpoint {checkpoint_id}, whose manifest is "
                                 "void")

    def _check_restorable(self) -> None:
        """Every retained checkpoint a restore could still choose lists only staged files
        that exist, or that were committed."""
        if "files" not in self.s.kinds:
            return
        for run_id in {r.run_id for r in self.s.runs}:
            points, refused = self.s.store.restore_points(run_id), self.s.store.refused(run_id)
            for key in self.s.storage.list(f"{run_id}/manifests/"):
                m = Manifest.from_json(self.s.storage.objects[key], self.s.store._key)
                if CheckpointStore.is_void(m, points) or m.checkpoint_id in refused:
                    continue
                for meta in m.snapshots:
                    try:
                        state = self.s.store.verify_snapshot(self.s.storage.objects[meta.key], meta)
                    except (KeyError, CorruptCheckpointError):
                        continue  # damaged on purpose, or deleted by retention along with older manifests
                    for _, txn in state.sinks["files"].pending:
                        directory = txn.directory
                        for pending, final in txn.files:
                            if not os.path.exists(os.path.join(directory, pending)) and \
                                    not os.path.exists(os.path.join(directory, final)):
                                raise SimFailure(f"{run_id} manifest {m.checkpoint_id} lists {pending}, which is "
                                                 "gone and was never committed")


