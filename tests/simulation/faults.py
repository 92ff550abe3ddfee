"""The faults and maintenance a schedule of tests/simulation injects, and when: process
deaths (at random, right after a manifest lands, while a coordinator stops), a storage
outage that aborts checkpoints in a row, damaged snapshots, compaction beside the job,
and stops.

A calm schedule (`Scenario.calm`) holds every death and stop back until its moment: the
checkpoint that lands after a long outage commits what the aborted ones staged; then
compaction runs and the run restores that checkpoint, which commits those files again.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Awaitable

from raystream.connectors.files import compaction

from .control import SimRun
from .keyed_state import check_landed


class Faults:
    """Fault injection for `sim.Scenario`, which holds the world, storage, runs and sinks,
    and decides up front (from the seed) which of these faults a schedule gets."""

    calm: bool
    intruder: bool  # plants an unsigned restore record that would void every checkpoint
    outage: tuple[float, float] | None  # (after the first manifest, how long): uploads fail
    crash_after_manifest: bool
    crash_while_stopping: bool
    _outage_landed: bool  # a manifest landed after the outage
    _after_outage: tuple[str, int] | None  # that manifest's run and checkpoint id, until compacted
    _calm_over: bool
    cut_offs: random.Random | None  # coordinators cut off from the cluster with a manifest write on its way

    def draw_cut_offs(self, seed: int) -> None:
        """A quarter of the schedules cut coordinators off as they write a manifest (`cut_off`),
        and keep one or two checkpoints (`retain`): a replaced coordinator's retention is then
        all that stands between the new attempt and the checkpoint it restored (C7). Draws of
        their own: the other schedules stay what they were."""
        # The salt spares seeds 1, 41, 60, 96, 1267 and 1510: recorded mutants need them as they were.
        draws = random.Random(seed ^ 0xC0B)
        self.cut_offs = draws if draws.random() < 0.25 else None
        if self.cut_offs is not None:
            self.config = dataclasses.replace(self.config, retain=draws.choice([1, 1, 2]))

    def cut_off(self, coord: Any, fn: Any) -> Awaitable[None] | None:
        """A coordinator cut off from the cluster (a partitioned node) as its manifest write
        (C5) goes out: Ray reports it dead, the driver starts another and its subtasks die
        with it, but its process goes on. The write lands once the next attempt has
        recorded its restore (R3), or (a third of the time) once it has chosen and before it
        records, and the coordinator carries on as `Checkpointer._complete` does: C6
        reaches no one, then C7."""
        draws, run = self.cut_offs, coord.run
        if draws is None or getattr(fn, "__name__", "") != "commit" or getattr(fn, "__self__", None) is not self.store:
            return None
        if not coord.proc.alive or run.coordinator is not coord or run.outcome or self.trace.crashes >= 4 \
                or (self.calm and not self._calm_over) or draws.random() >= 0.4:
            return None
        self.trace.crashes += 1
        after = draws.choice(["restore", "restore", "choice"])
        run.log(f"{coord.proc.name} is cut off with a manifest write on its way; it lands after the next "
                f"attempt's {after}")
        coord.cut_off()
        run.coordinator_died()
        return self._after_newer(run.run_id, coord.attempt, after, coord.io)

    async def _after_newer(self, run_id: str, attempt: int, after: str, io: Any) -> None:
        """Until an attempt of the run newer than `attempt` has recorded its restore (read
        from the storage), or has chosen what to restore (before it records: then the
        manifest is not among what it chose from, and retention may read the restore
        records before that attempt writes its own)."""
        choices, deadline = self.trace.choices.get(run_id, 0), self.world.now + 20.0
        while self.world.now < deadline:
            if after == "choice" and self.trace.choices.get(run_id, 0) > choices:
                return
            claimed = {int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/attempts/")}
            found = {int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/restores/")} & claimed
            if after == "restore" and any(n > attempt for n in found):
                return
            await self.world.sleep(0.01, io)

    def _maybe_crash_after_manifest(self, key: str) -> None:
        """Bias toward the rare schedules: a crash right after a durable manifest write.
        Also keep what a listing of the run's manifests showed then (compaction reads
        an older listing, as a slow reader would, while retention deletes)."""
        run_id = key.split("/", 1)[0]
        check_landed(self.store, key, self.trace.captured, self.trace.state_mismatches)  # I5's oracle (keyed_state.py)
        if self.outage is not None and not self.storage.outage[1]:
            start = self.world.now + self.outage[0]
            self.storage.outage = (start, start + self.outage[1])
            self.world.log.append(f"{self.world.now:.3f} snapshot uploads fail from {start:.3f} to "
                                  f"{start + self.outage[1]:.3f}")
        self.listings.setdefault(run_id, []).append(self.store.manifest_ids(run_id))
        if self.intruder:
            self._plant(run_id)
        rng = self.world.rng
        if self._first_after_outage():
            self._after_outage = (run_id, int(key.rsplit("/", 1)[1].split(".")[0]))
            self.world.at(3.0, self._end_calm)  # if its moment does not come (no Parquet file pending)
        if "parquet" in self.kinds and rng.random() < 0.3:  # compaction while checkpoints commit
            self.world.at(rng.uniform(0.02, 0.4), self.compact)
        if "parquet_rolled" in self.kinds and self.compaction_rng.random() < 0.3:  # its own draws: other schedules stay
            self.world.at(self.compaction_rng.uniform(0.02, 0.4), self.compact_rolled)
        rolls = {"rolled", "s3_rolled", "parquet", "parquet_rolled"} & set(self.kinds)
        run = next((r for r in self.runs if r.run_id == run_id and not r.outcome), None)
        if rolls and run is not None and len(self.damaged) < 2 and rng.random() < 0.08:
            # a fall-back past this checkpoint once its commits are done: files it rolled or compacted
            self.world.at(rng.uniform(0.05, 0.5), lambda: self.damage(run, every=False))
        elif "parquet_rolled" in self.kinds and run is not None and len(self.damaged) < 2 and \
                self.rolling_rng.random() < 0.1:  # more often: a Parquet part committed after it grew is cut back
            self.world.at(self.rolling_rng.uniform(0.05, 0.5), lambda: self.damage(run, every=False))
        if self.crash_after_manifest and self.trace.crashes < 4 and self.world.rng.random() < 0.25:
            self.world.at(self.world.rng.uniform(0.0, 0.01), self.crash)

    def _plant(self, run_id: str) -> None:
        """What a writer of the storage without the key would write to make the run start
        over (R3): restore records of attempts far ahead, each saying it restored nothing.
        Signed records ignore them. (Overwriting a genuine record deletes it, which no
        signature prevents: docs/security.md.)"""
        for attempt in (99_999, 999_999):
            self.storage.objects.setdefault(f"{run_id}/restores/{attempt:06d}", b'{"checkpoint": 0}')

    def _first_after_outage(self) -> bool:
        """Whether this is the first manifest to land since the storage outage ended."""
        end = self.storage.outage[1]
        if end and self.world.now >= end and not self._outage_landed:
            self._outage_landed = True
            return True
        return False

    def on_committed(self, run: SimRun, checkpoint_id: int) -> None:
        """A sink subtask of `run` committed for `checkpoint_id`. If that checkpoint is the
        one that committed what the outage's aborted checkpoints staged: compaction, then a
        restore of it, which commits those files again."""
        if self._after_outage == (run.run_id, checkpoint_id) and "parquet" in self.kinds:
            self._after_outage = None
            self.world.at(self.world.rng.uniform(0.0, 0.01), lambda: self.compact(restore=True))

    def _end_calm(self) -> None:
        self._calm_over, self.world.quick = True, False

    def maybe_crash_while_stopping(self, coord: Any) -> None:
        """The coordinator dies as the stop reaches it, before it told the sources."""
        if self.crash_while_stopping and self.trace.crashes < 4 and self.world.rng.random() < 0.5:
            self.trace.crashes += 1
            coord.run.log(f"kill {coord.proc.name} while it stops")
            coord.kill()
            coord.run.coordinator_died()

    def crash(self, run: SimRun | None = None) -> None:
        if self.calm and not self._calm_over:
            return
        live = [r for r in self.runs if not r.outcome and not r.abandoned and r.coordinator is not None
                and r.coordinator.proc.alive]
        if run is None:
            if not live:
                return
            run = self.world.rng.choice(live)
        elif run not in live:
            return
        coord = run.coordinator
        self.trace.crashes += 1
        subtasks = [s for s in coord.subtasks if s.proc.alive]
        if subtasks and self.world.rng.random() < 0.7:
            victim = self.world.rng.choice(subtasks)
            victim.kill()
            run.log(f"kill {victim.proc.name}")
        else:
            coord.kill()
            run.log(f"kill {coord.proc.name}")
            run.coordinator_died()

    def stop(self, run: SimRun, calm_until: float) -> None:
        """Ask `run` to stop; a calm schedule first has its moment (or waits until `calm_until`)."""
        if self.calm and not self._calm_over and self.world.now < calm_until:
            self.world.at(0.1, lambda: self.stop(run, calm_until))
        else:
            run.request_stop()

    def damage(self, run: SimRun, every: bool) -> None:
        """Flip a bit in a snapshot of the newest manifest of `run` (or of each retained
        one): the restore must refuse it, then fall back, or fail (R5)."""
        manifests = self.storage.list(f"{run.run_id}/manifests/")
        for key in (manifests if every else manifests[-1:]):
            checkpoint_id = int(key.rsplit("/", 1)[1].split(".")[0])
            snaps = self.storage.list(f"{run.run_id}/snapshots/{checkpoint_id:012d}/")
            if not snaps:
                continue
            snap = self.world.rng.choice(snaps)
            data = bytearray(self.storage.objects[snap])
            data[len(data) // 2] ^= 1
            self.storage.objects[snap] = bytes(data)
            self.damaged.add((run.run_id, checkpoint_id))
            run.log(f"damage {snap}")
        self.world.at(0.0, lambda: self.crash(run))

    def compact_rolled(self) -> None:
        """compact_files on rolled Parquet output (FileSink's default): it must leave every
        part a retained checkpoint (a savepoint) commits again (a rolled part's name carries
        its first checkpoint, not the one that committed it). Restores after it come from
        the schedule's own crashes and fall-backs; its draws are its own, so the schedules
        of the rolling draws (and the mutants they find) stay as they were."""
        self.trace.compactions += 1
        compaction.compact_files(self.directory("parquet_rolled"), checkpoints=self.store.root, target_size=1 << 20)

    def compact(self, restore: bool = False) -> None:
        """compact_files on the Parquet output, as a user's cron would, while runs write."""
        if "parquet" in self.kinds:
            self.trace.compactions += 1
            compaction.compact_files(self.directory("parquet"), checkpoints=self.store.root, target_size=1 << 20)
            if restore:
                self._end_calm()
            if restore or self.world.rng.random() < 0.5:  # bias: a restore soon after, which needs what it left
                self.world.at(self.world.rng.uniform(0.0, 0.02 if restore else 0.3), self.crash)
