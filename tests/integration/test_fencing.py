"""A subtask of an older attempt commits nothing once a newer attempt has taken over:
sink commits check that their attempt is still the newest one in durable storage."""
import os

import ray

import raystream as rs
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.subtask.actor import SubtaskActor
from raystream.graph import Step
from raystream.sinks import FileSink
from raystream.sources import SequenceSource
from tests.helpers.support import wait_until


@ray.remote(num_cpus=0)
class StandInCoordinator:
    """Receives what a subtask tells its coordinator."""

    def __init__(self):
        self.acks = []

    def ack(self, attempt, checkpoint_id, meta, error):
        self.acks.append((attempt, checkpoint_id, error))

    def source_finished(self, *args):
        pass

    def seen(self):
        return self.acks


def start_subtask(tmp_path, attempt: int, run_id: str = "run1"):
    """A source+sink chain: 1,000 numbers into a transactional FileSink."""
    root = str(tmp_path / "chk")
    steps = [Step("nums", "source", (), source=SequenceSource(1_000)),
             Step("out", "sink", ("nums",), sink=FileSink(str(tmp_path / "out"), roll="checkpoint"))]
    spec = SubtaskSpec("fence", "nums+out", steps, 0, 1, 0, rs.RuntimeConfig(), rs.Guarantee.EXACTLY_ONCE,
                       root, run_id, attempt, source_partitions=["0"])
    store = CheckpointStore(root)
    while store.claim_attempt(run_id) < attempt:
        pass
    actor, coordinator = SubtaskActor.remote(), StandInCoordinator.remote()
    ray.get(actor.configure.remote(spec))
    ray.get(actor.setup.remote(None, [], coordinator))
    run = actor.run.remote()
    actor.trigger_checkpoint.remote(1, True)  # the final checkpoint: barrier, pre-commit, ack
    wait_until(lambda: ray.get(coordinator.seen.remote()), "the acknowledgement")
    return store, actor, run


def visible(tmp_path) -> list[str]:
    out = tmp_path / "out"
    return sorted(n for n in os.listdir(out) if n.startswith("part-")) if out.exists() else []


def test_the_current_attempt_commits(tmp_path):
    store, actor, run = start_subtask(tmp_path, attempt=1)
    ray.get(actor.notify_complete.remote(1))
    report = ray.get(run)
    assert report.failure is None and len(visible(tmp_path)) == 1


def test_an_older_attempt_commits_nothing(tmp_path):
    store, actor, run = start_subtask(tmp_path, attempt=1)
    store.claim_attempt("run1")  # recovery started attempt 2 while this subtask was away
    ray.get(actor.notify_complete.remote(1))
    report = ray.get(run)
    assert visible(tmp_path) == []
    assert report.failure is not None and "replaced by a newer attempt" in report.failure.error
    assert any(n.startswith("_pending-") for n in os.listdir(tmp_path / "out"))  # staged, never shown
