"""Exactly-once under SIGKILL for windows over Arrow: the subtask holding the sliding
windows of columnar Nexmark bids is killed mid-run; the committed output still has every
(auction, window) once, with the count and top price of exactly its bids."""
import logging

import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.connectors import nexmark as nx
from raystream.sinks import FileSink, read_files
from raystream.windows import Sliding
from tests.helpers.support import wait_until
from tests.helpers.nexmark import bid_windows, window_rows

from .harness import kill, running

logger = logging.getLogger(__name__)

# 15 s of event time, read in about 4 s
CONFIG = nx.NexmarkConfig(events=30_000, partitions=2, event_rate=2_000, rate=8_000, out_of_order=0.5)


def test_the_windowing_subtask_killed(tmp_path):
    out = str(tmp_path / "out")
    job = rs.Job("columnar-window-kill", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(batch_size=1000))
    (job.source("events", nx.NexmarkSource(CONFIG, columnar=True),
                event_time=rs.EventTime.column("date_time", max_delay=CONFIG.out_of_order))
     .where("only_bids", pc.field("event_type") == nx.BID)
     .select("bids", {"auction": pc.field("bid", "auction"), "price": pc.field("bid", "price")})
     .key_by("by_auction", "auction")
     .window(Sliding(10, 2)).aggregate("per_auction", bids=agg.count(), top=agg.max("price"))
     .sink("out", FileSink(out, format="parquet")))
    handle = job.start()
    wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    wait_until(lambda: handle.status().steps["per_auction"].records_out > 0, "windows fired")
    status = handle.status()
    victim = next(name for name in sorted(status.pids) if name.startswith("per_auction"))
    logger.warning("killing %s", victim)
    kill(status.pids[victim])
    result = handle.wait()
    assert result.state == "finished" and result.restarts >= 1

    rows = read_files(out, format="parquet")
    got = window_rows(rows)
    assert len(dict(got)) == len(got), "a window committed twice"
    assert dict(got) == bid_windows(CONFIG, 10_000, 2_000)
