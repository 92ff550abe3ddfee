"""Incremental keyed state under SIGKILL: snapshots write changes over a chain, Ray tasks
compact chains into bases in the background, and a killed subtask restores base +
changes with every key's total right."""
import collections
import os

import raystream as rs
from raystream._runtime.state.store import CheckpointStore
from raystream.sinks import FileSink, read_files
from raystream.sources import SequenceSource

from tests.helpers.support import wait_until

from .harness import kill, running

N, KEYS = 40_000, 5_000


def add(total, x):
    total = (total or 0) + x
    return total, {"id": x, "key": x % KEYS, "total": total}


def test_kills_restore_compacted_bases_and_changelogs_exactly_once(tmp_path):
    storage = str(tmp_path / "chk")
    # compact_above=0 and base_every=2: every third part starts a compaction task, so
    # the kills land on chains that begin at compacted bases
    job = rs.Job("incremental", parallelism=2, checkpoint=rs.CheckpointConfig(
        interval=0.2, storage=storage, base_every=2, compact_above=0))
    (job.source("nums", SequenceSource(N, rate=6_000))
        .key_by("by_key", lambda x: x % KEYS)
        .stateful_map("sum", add)
        .map("row", lambda kv: kv[1])
        .sink("out", FileSink(str(tmp_path / "out"))))
    handle = job.start()
    store = CheckpointStore(os.path.join(storage, "incremental"))

    def compacted():
        s = running(handle, checkpoints=4)
        return s and any(store.storage.list(f"{run}/state/") for run in store.runs()) and s

    status = wait_until(compacted, "a compacted base", timeout=90)
    for k in range(2):
        victim = sorted(name for name in status.pids if name.startswith("sum"))[k]
        done = status.steps["row"].records_in
        kill(status.pids[victim])
        status = wait_until(lambda: (s := running(handle, attempt=status.attempt + 1, checkpoints=0)) and
                            s.steps["row"].records_in > done + 2_000 and s, "recovery and progress")
    result = handle.wait()
    assert result.restarts == 2
    rows = read_files(str(tmp_path / "out"))
    ids = collections.Counter(r["id"] for r in rows)
    assert sorted(ids) == list(range(N)) and set(ids.values()) == {1}
    final: dict[int, int] = {}
    for r in rows:
        final[r["key"]] = max(final.get(r["key"], 0), r["total"])
    assert final == {k: sum(range(k, N, KEYS)) for k in range(KEYS)}
    # snapshots after the first of a chain hold changes only: much smaller than a full one
    run_id = store.runs()[-1]
    manifest = store.load_manifest(run_id, max(store.manifest_ids(run_id)))
    assert any(meta.parts for meta in manifest.snapshots)
