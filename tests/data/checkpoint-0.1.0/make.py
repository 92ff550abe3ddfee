"""How ./earlier was written: with raystream 0.1.0 as it was before the package was arranged
in folders (commit 940a4bc), signed with the tests' key (SECRETS in tests/conftest.py):

    RAYSTREAM_CHECKPOINT_KEY=<that key> python make.py .
"""
import operator
import sys

import raystream as rs
from raystream import nexmark as nx
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource


class Seen:
    """Keyed state of a class defined in the job file: pickled by value, with the module
    its method uses (raystream.nexmark, a path that moved in 0.2)."""

    def __init__(self) -> None:
        self.n = 0
        self.kind = ""

    def add(self, value: int) -> "Seen":
        self.n += 1
        self.kind = nx.Bid.__name__
        return self


def seen(state, value):
    state = (state or Seen()).add(value)
    return state, state.n


def count(ctx, value):
    ctx.state = (ctx.state or 0) + value
    ctx.set_event_timer(10**12)


out = sys.argv[1]
job = rs.Job("earlier", parallelism=2, checkpoint=rs.CheckpointConfig(storage=out),
             runtime=rs.RuntimeConfig(linger=0.01))
numbers = job.source("numbers", SequenceSource(420, partitions=2),
                     event_time=rs.EventTime(lambda i: i * 10, max_delay=0))
keyed = numbers.key_by("key", lambda i: i % 7)
keyed.reduce("sum", operator.add).sink("sums", CollectSink(keep="last"))
keyed.process("timers", count).sink("counted", CollectSink())
keyed.stateful_map("seen", seen).sink("seen_out", CollectSink(keep="last"))
keyed.window(rs.windows.Tumbling(1)).reduce("per_second", operator.add).sink("windows", CollectSink())
job.run()
