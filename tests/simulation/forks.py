"""The fork story of the simulation (sim.py): a run B started `--from` the newest
checkpoint of a run A that goes on, also while an attempt of A recovers and may still
void it (B5 in docs/protocol.md)."""
from __future__ import annotations

from typing import Any

from raystream._runtime.checkpointing.origin import SETTLE_TIMEOUT, hold
from raystream._runtime.plan.specs import RunOptions
from raystream.errors import CorruptCheckpointError, RestoreError

from .control import SimRun


class Forks:
    """Scenario's fork story; a mixin of Scenario, whose fields and helpers it uses."""

    world: Any
    store: Any
    storage: Any
    lines: list
    origins: dict
    fork_points: dict
    partitions: int
    new_run: Any
    outputs: Any
    stop: Any
    until: Any

    async def fork(self, a: SimRun) -> None:
        """Run B starts `--from` A's newest checkpoint while A goes on; A stops later. B
        must leave A's output alone (A's line stays exactly once), and B's line is A's
        output up to that checkpoint plus B's."""
        rng = self.world.rng
        recovering = rng.random() < 0.5  # start B while an attempt of A recovers: it may still void A's newest (B5)
        if recovering:
            self.storage.in_flight = lambda key: key.startswith("r1/") and self._dies_writing(a)
        give_up = self.world.now + 60.0  # A may never complete a checkpoint (timeouts in a row): then no fork
        await self.until(lambda: a.outcome or self.world.now > give_up or self.storage.list("r1/manifests/"),
                         limit=give_up + 10.0)
        if recovering:
            give_up = self.world.now + 5.0
            await self.until(lambda: a.outcome or self.world.now > give_up or self._recovering("r1"),
                             limit=give_up + 60.0)
        else:
            pause = self.world.sleep(rng.uniform(0.0, 0.5))
            await self.until(pause.done)
        self.lines.append([a])
        if a.outcome:
            return
        origin = await self._locate_origin()
        if origin is None:
            return  # the start fails: nothing counts, or it never settled
        b = self.new_run("r2", parallelism=rng.randint(1, 3), present=list(range(self.partitions)),
                         options=RunOptions(resume=True), outputs=self.outputs(upsert_table="totals_r2"))
        try:
            offsets = self._offsets_at("r1", origin.checkpoint_id)  # before A's retention deletes it
        except (CorruptCheckpointError, KeyError):
            return  # damaged (B would refuse it) or deleted meanwhile: no fork
        try:
            hold(self.store, origin, "r2")  # as the driver does (B5)
        except RestoreError:
            return  # refused meanwhile: the start fails
        self.store.record_origin("r2", origin)
        self.origins["r2"] = offsets
        self.fork_points["r2"] = origin.checkpoint_id
        self.lines.append([a, b])
        b.start()
        stop_at = self.world.now + rng.uniform(0.1, 1.0)
        self.world.at(stop_at - self.world.now, lambda: self.stop(a, stop_at + 10.0))
        await self.until(lambda: a.outcome, limit=stop_at + 300.0)  # a stop that is lost never ends
        await self.until(lambda: b.outcome)

    def _dies_writing(self, run: SimRun) -> bool:
        """A's coordinator dies with its first manifest write in flight (once)."""
        self.storage.in_flight = None
        if run.coordinator is None or not run.coordinator.proc.alive or run.outcome:
            return False
        run.coordinator.kill()
        run.log(f"kill {run.coordinator.proc.name} with a manifest write in flight")
        run.coordinator_died()
        return True

    def _recovering(self, run_id: str) -> bool:
        """Whether a manifest of the run has landed and an attempt claimed after its writer
        has not recorded its restore yet (read from the storage, not from the code under test)."""
        ids = self.store.manifest_ids(run_id)
        claims = [int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/attempts/")]
        recorded = {int(k.rsplit("/", 1)[1]) for k in self.storage.list(f"{run_id}/restores/")}
        if not ids or not claims:
            return False
        try:
            writer = self.store.load_manifest(run_id, ids[-1]).attempt
        except (CorruptCheckpointError, FileNotFoundError):
            return False
        return any(c > writer and c not in recorded for c in claims)

    async def _locate_origin(self) -> Any:
        """What `--from <A's run dir>` takes (origin.locate_origin), with the storage's
        delays between its reads: the newest checkpoint that counts, once settled (B5);
        None when the start fails."""
        from raystream._runtime.checkpointing.locate import _newest
        from raystream._runtime.checkpointing.origin import settle

        started = self.world.now
        while True:
            try:
                ref = _newest(self.store, "r1", f"{self.store.root}/r1")
            except (RestoreError, CorruptCheckpointError, FileNotFoundError):
                return None
            pause = self.world.sleep(self.world.delay())  # A moves on between the two reads
            await self.until(pause.done)
            waiting = settle(self.store, ref)
            if waiting == []:
                return ref
            if waiting is not None:
                if self.world.now - started >= SETTLE_TIMEOUT:
                    return None
                pause = self.world.sleep(0.2)
                await self.until(pause.done)

    def _offsets_at(self, run_id: str, checkpoint_id: int) -> dict[int, int]:
        """Records of each partition read before checkpoint `checkpoint_id` of `run_id`."""
        m = self.store.load_manifest(run_id, checkpoint_id)
        offsets: dict[int, int] = {}
        for meta in m.snapshots:
            state = self.store.verify_snapshot(self.storage.objects[meta.key], meta)
            offsets.update({int(p): o for p, o in state.source_offsets.items()})
        return offsets
