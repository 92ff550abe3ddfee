"""The stories a schedule of the simulation plays (sim.py, `Scenario.STORIES`): one run; a
savepoint and runs from it; a run resumed without, then with, a source partition; and
the fork (forks.py). Each keeps the lines of runs whose outputs continue each other, for
the invariants."""
from __future__ import annotations

import random
from typing import Any

from raystream._runtime.plan.specs import RunOptions
from raystream._runtime.state.store import CheckpointRef

from .changed import CHANGES, changed_steps
from .control import SimRun
from .forks import Forks
from .source import SimSource


class Stories(Forks):
    """Scenario's stories; a mixin of Scenario, whose fields and helpers it uses."""

    story: str
    kinds: list
    pg: Any
    batches: Any
    timing: Any
    compaction_rng: Any
    runs: list
    crash: Any
    compact: Any
    compact_rolled: Any
    damage: Any
    seed: int
    partitions: int
    records: int
    config: Any
    columns: Any
    windows: Any

    async def play(self) -> None:
        rng = self.world.rng
        parallelism = rng.randint(1, 3)
        everything = list(range(self.partitions))
        for _ in range(rng.randint(0, 3)):
            self.world.at(rng.uniform(0.0, 3.0), self.crash)
        if "parquet" in self.kinds:
            for _ in range(rng.randint(1, 8)):
                self.world.at(rng.uniform(0.1, 4.0), self.compact)
        if self.story == "single":
            a = self.new_run("r1", parallelism=parallelism, present=everything, options=RunOptions())
            self.lines.append([a])
            if rng.random() < 0.3:
                self.world.at(rng.uniform(0.5, 3.0), lambda: self.damage(a, every=rng.random() < 0.3))
            a.start()
            await self.until(lambda: a.outcome)
            return
        a = self.new_run("r1", parallelism=parallelism, present=everything, options=RunOptions())
        if self.story != "resume":  # stopped, never ended by its input: a stop that is lost never ends
            a.source = SimSource(self.partitions, 10**9, everything, self.batches, self.timing)
        a.start()
        if self.story == "resume":
            await self.until(lambda: a.outcome or self.storage.list("r1/manifests/"), limit=60.0)
            pause = self.world.sleep(rng.uniform(0.0, 0.3))
            await self.until(pause.done)
            if not a.outcome:
                self.abandon(a)  # the program went away: its processes are gone
            gone = rng.choice(everything)
            b = self.new_run("r1", parallelism=rng.randint(1, 3), present=[p for p in everything if p != gone],
                             options=RunOptions(resume=True), label="r1-resumed")
            b.start()
            await self.until(lambda: b.outcome)
            c = self.new_run("r1", parallelism=rng.randint(1, 3), present=everything,
                             options=RunOptions(resume=True), label="r1-back")
            self.lines.append([a, b, c])
            c.start()
            await self.until(lambda: c.outcome)
            return
        if self.story == "fork":
            await self.fork(a)
            return
        stop_at = rng.uniform(0.05, 0.6)
        self.world.at(stop_at, lambda: self.stop(a, stop_at + 10.0))
        await self.until(lambda: a.outcome, limit=stop_at + 300.0)  # unlucky schedules restart for minutes; a lost stop never ends
        savepoint = self._savepoint(a)
        if savepoint is None:  # it ended before the stop, or failed: no savepoint
            self.lines.append([a])
            return
        if "parquet_rolled" in self.kinds and self.compaction_rng.random() < 0.5:
            self.compact_rolled()  # between the stop and the runs from its savepoint, which commit it again
        if rng.random() < 0.5 and self.pg is not None:
            self.pg.truncate_log()  # started long after: the savepoint's transactions are forgotten
        # Before them, now and then, a run into a changed job (changed.py); drawn apart, so the
        # draws below stay what they were
        changes = random.Random(self.seed ^ 0xC1A6)
        if (self.columns is not None or self.windows is not None) and changes.random() < 0.5:
            await self._changed_run(savepoint, changes)
        place = "-r2" if rng.random() < 0.5 else ""  # a new run may write elsewhere
        b = self.new_run("r2", parallelism=rng.randint(1, 3), present=everything, options=RunOptions(resume=True),
                         outputs=self.outputs(place=place))
        self.store.record_origin("r2", savepoint)
        self.lines.append([a, b])
        branches = [b]
        if self.story == "two_runs":
            c = self.new_run("r3", parallelism=rng.randint(1, 3), present=everything, options=RunOptions(resume=True),
                             outputs=self.outputs(upsert_table="totals_r3", place="-r3" if rng.random() < 0.5 else ""))
            self.store.record_origin("r3", savepoint)
            self.lines.append([a, c])
            branches.append(c)
        for run in branches:
            if rng.random() < 0.35:
                self.world.at(rng.uniform(0.3, 2.0), lambda r=run: self.damage(r, every=rng.random() < 0.5))
            run.start()
        await self.until(lambda: all(r.outcome for r in branches))

    async def _changed_run(self, savepoint: Any, rng: random.Random) -> None:
        """A run from the savepoint into the job with its stateful step changed; it ends
        once restored, or fails (checked in `check`: changed.py)."""
        how = rng.choice(CHANGES)
        step_id, steps = changed_steps(self, how)
        outputs = self.outputs(upsert_table="totals_x", place="-x")
        outputs.operators = steps
        everything = list(range(self.partitions))
        run = SimRun(self, "r2x", parallelism=rng.randint(1, 3),
                     source=SimSource(self.partitions, self.records, everything, self.batches, self.timing),
                     outputs=outputs, options=RunOptions(resume=True), config=self.config, label=f"r2x-{how}")
        run.changed = (step_id, how)
        self.runs.append(run)
        self.store.record_origin("r2x", savepoint)
        run.start()
        await self.until(lambda: run.outcome)

    def abandon(self, run: SimRun) -> None:
        run.abandoned = True
        if run.coordinator is not None:
            run.coordinator.kill()
        run.outcome = "abandoned"
        run.log("the program went away")

    def _savepoint(self, run: SimRun) -> Any:
        if run.outcome != "stopped":
            return None
        ids = self.store.manifest_ids(run.run_id)
        final = self.store.load_manifest(run.run_id, ids[-1])
        assert final.final, f"run {run.run_id} stopped without a final checkpoint"
        return CheckpointRef(self.store.root, run.run_id, final.checkpoint_id)
