"""state_ttl compares one job two ways: keys that come and go held forever, and held for a
processing-time TTL. Checked here without Ray: the pair differs only in the TTL, the
source's keys each take `session` records and are never seen again, and the suite sums
a step's keys over its subtasks. (The figures themselves are never asserted.)"""
from __future__ import annotations

import collections

import pyarrow as pa

from raystream.bench.measure import state_keys
from raystream.bench.modes import MODES, TTL_MODES, TTL_SECONDS
from raystream.bench.synthetic import KeyLoad, ttl_job
from raystream.bench.workloads import workloads


def test_the_pair_differs_only_in_the_ttl(tmp_path):
    plain, ttl = TTL_MODES["exactly_once"], TTL_MODES["exactly_once+ttl"]
    assert plain is MODES["exactly_once"] and plain.ttl is None
    assert (ttl.guarantee, ttl.interval, ttl.ttl) == (plain.guarantee, plain.interval, TTL_SECONDS)
    workload = workloads(str(tmp_path), 0.01)["state_ttl"]
    assert workload.modes is TTL_MODES and workload.state_step == "count"
    steps = {m: ttl_job(1_000, 10, mode, str(tmp_path)).steps["count"] for m, mode in TTL_MODES.items()}
    assert steps["exactly_once"].ttl is None
    assert steps["exactly_once+ttl"].ttl.ms == TTL_SECONDS * 1000 and steps["exactly_once+ttl"].ttl.time == "processing"


def test_each_key_takes_session_records_and_never_comes_back():
    source = KeyLoad(1_005, 0, partitions=2, session=10)
    keys: list[int] = []
    for name in source.list_partitions():
        partition = source.build_partition(name, None, 64)
        while (batch := partition.next_batch()) is not None:
            keys += [k for k, _ in batch]
    counts = collections.Counter(keys)
    assert len(keys) == 1_005 and set(counts) == set(range(101))
    assert set(counts.values()) == {10, 5}  # the last key has the 5 records left


class _Handle:
    def __init__(self, rows):
        self.rows = rows

    def metrics(self):
        return type("M", (), {"table": pa.Table.from_pylist(self.rows)})()


def test_the_keys_of_a_step_are_summed_over_its_subtasks():
    handle = _Handle([{"step": "count", "subtask": 0, "state_keys": 7}, {"step": "count", "subtask": 1, "state_keys": 5},
                      {"step": "out", "subtask": 0, "state_keys": 0}])
    assert state_keys(handle, "count") == 12
