"""Repro (96e1187): restoring ANY window step crashes in assembly.build_operators.

96e1187 added `op.restore_group_watermarks(..., spec.max_parallelism)` to
raystream/_runtime/subtask/assembly.py, but SubtaskSpec has no `max_parallelism` (it is
`spec.runtime.max_parallelism`, as SubtaskActor.setup passes it to load_state). Every
restore (failure recovery, savepoint resume, rescale) of a chain with a TimedWindows step
raises AttributeError in SubtaskActor.setup. The simulation's window schedules
(tests/simulation, seed 96) fail the same way.

Run: PYTHONPATH=. python repro/window_restore_max_parallelism.py
"""
import datetime as dt
import pickle

import raystream as rs
from raystream import aggregates as agg
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.state.snapshot import SubtaskState
from raystream._runtime.subtask.assembly import build_operators
from raystream.config import Guarantee
from raystream.sources import Source
from raystream.windows import Tumbling


class Placeholder(Source):  # build_operators never reads it
    def list_partitions(self):
        return []

    def build_partition(self, key, resume_state, batch_size):
        raise NotImplementedError


job = rs.Job("repro")
(job.source("src", Placeholder())
 .key_by("by_k", "k")
 .window(Tumbling(dt.timedelta(milliseconds=10)))
 .aggregate("win", n=agg.count()))
step = job.steps["win"]
state = pickle.loads(pickle.dumps(SubtaskState(5, "win", 0, 1, keyed={"win": {}}, watermarks={"win": 0})))
spec = SubtaskSpec("repro", "win", [step], 0, 1, 1, rs.RuntimeConfig(), Guarantee.EXACTLY_ONCE, "/none", "run", 2)
try:
    build_operators(spec, merge_states([state], [step], 0, 1, 128))
except AttributeError as exc:
    print(f"DEFECT: restoring a window step fails: {exc!r}")
    raise SystemExit(1)
print("ok: the window step restored")
