"""Compaction of committed Parquet files, without Ray: a reader sees every record once at
every step of a compaction, locally and on S3, and a compaction that died part way is
finished by the next."""
from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystream.connectors.files import compaction
from raystream._storage import open_storage
from raystream.sinks import compact_files, parquet_bytes, read_files


@pytest.fixture(params=["local", "s3"])
def directory(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{request.getfixturevalue('s3_bucket')}/out"


def write_small_files(directory: str, files: int, rows: int) -> None:
    storage = open_storage(directory)
    for f in range(files):
        storage.put(f"part-small-{f:03d}.parquet", parquet_bytes([[{"id": f * rows + r} for r in range(rows)]]))


class Watching:
    """A storage that reads the directory back after every change a compaction makes."""

    def __init__(self, storage, check):
        self._storage, self._check = storage, check

    def __getattr__(self, name):
        attr = getattr(self._storage, name)
        if name not in ("put", "promote", "delete"):
            return attr

        def changed(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._check(name)
            return result
        return changed


def test_readers_see_every_record_once_at_every_step(directory, monkeypatch):
    write_small_files(directory, files=20, rows=50)
    steps = collections.Counter()

    def check(step: str) -> None:
        ids = sorted(r["id"] for r in read_files(directory, format="parquet"))
        assert ids == list(range(1000)), f"after a {step}: {len(ids)} rows"
        steps[step] += 1

    real = compaction.open_storage
    monkeypatch.setattr(compaction, "open_storage", lambda uri: Watching(real(uri), check))
    done = compact_files(directory, target_size=2_000)
    assert done.files_in == 20 and done.rows == 1000 and 2 <= done.files_out < 10
    assert steps["promote"] == done.files_out  # checked right after each merged file was published
    names = open_storage(directory).list("")
    assert all(n.startswith("part-compacted-") for n in names), names


def test_a_compaction_that_died_after_publishing_is_finished_by_the_next(directory):
    write_small_files(directory, files=4, rows=10)
    storage = open_storage(directory)
    from raystream._runtime.state import signing

    body = {"type": "compaction", "key": "_compaction-dead.json", "output": "part-compacted-dead.parquet",
            "inputs": ["part-small-000.parquet", "part-small-001.parquet"]}
    storage.put("_compaction-dead.json", signing.signed_json(body, signing.current()))  # as _merge writes it
    table = pa.concat_tables([pq.read_table(pa.BufferReader(storage.get(f"part-small-00{i}.parquet")))
                              for i in (0, 1)])
    storage.put("part-compacted-dead.parquet", parquet_bytes([table.to_batches()[0], table.to_batches()[1]]))
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(40))
    storage.put("_compacting-orphan.parquet", b"never published")
    compact_files(directory, min_files=10)  # nothing to merge: only the earlier one is finished
    assert storage.list("") == ["part-compacted-dead.parquet", "part-small-002.parquet", "part-small-003.parquet"]
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(40))


def test_files_a_retained_checkpoint_commits_again_are_never_merged(directory, tmp_path):
    """Checkpoint 10 completes; 11, 12 and 13 are aborted (their files stay pending in the
    subtask, listed again by every snapshot); 14 completes and commits them all. Retention
    keeps 9, 10 and 14. A restore of 14 commits 11-14 again, and a fall-back to 10 (14
    refused) retracts them: their files must stay as they are, whatever ids they carry."""
    from raystream._runtime.state.store import CheckpointStore
    from raystream._runtime.state.manifest import Manifest, versions
    from raystream._runtime.state.snapshot import SnapshotMeta
    from raystream.sinks import FileSink, SinkContext

    sink = FileSink(directory, format="parquet", roll="checkpoint")
    store = CheckpointStore(str(tmp_path / "checkpoints" / "j"))
    store.claim_attempt("r1")

    def writer(attempt):
        return sink.build_writer(SinkContext("out", 0, 1, transactional=True, run_id="r1", attempt=attempt))

    w, pending, listed = writer(1), [], {}
    for n in range(1, 15):
        w.write_batch([{"id": n}])
        pending.append((n, w.pre_commit(n)))
        listed[n] = list(pending)  # what the snapshot of n lists
        if n <= 10 or n == 14:  # complete: the coordinator writes the manifest, the sink commits
            meta = SnapshotMeta("out", 0, f"r1/snapshots/{n}", "0" * 64, 1, sink_from=pending[0][0])
            assert store.commit(Manifest("j", "r1", n, 1, "exactly_once", 0.0, {"out": 1}, [meta],
                                         versions=versions()))
            for _, txn in pending:
                w.commit(txn)
            pending = []
    store.retain("r1", 3)
    assert store.manifest_ids("r1") == [9, 10, 14]
    done = compact_files(directory, checkpoints=store.root, target_size=1 << 20)
    assert done.files_in == 8 and done.rows == 8  # checkpoints 1-8: no retained checkpoint needs them
    writer(2).recover([txn for _, txn in listed[14]], 14)  # a restore of 14
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(1, 15))
    writer(3).recover([txn for _, txn in listed[10]], 10)  # 14 refused: the fall-back retracts 11-14
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(1, 11))


def test_files_committed_with_checkpoints_need_the_checkpoint_root(directory, tmp_path):
    from raystream.errors import JobDefinitionError
    from raystream.sinks import FileSink, SinkContext

    w = FileSink(directory, format="parquet", roll="checkpoint").build_writer(SinkContext("out", 0, 1, transactional=True, run_id="r1",
                                                                        attempt=1))
    for n in (1, 2):
        w.write_batch([{"id": n}])
        w.commit(w.pre_commit(n))
    with pytest.raises(JobDefinitionError, match="pass checkpoints=<the job's checkpoint root"):
        compact_files(directory)
    with pytest.raises(JobDefinitionError, match="no run that wrote these files .r1. has checkpoints under"):
        compact_files(directory, checkpoints=str(tmp_path / "elsewhere"))


def test_a_manifest_deleted_by_retention_while_compaction_reads_is_read_again(directory, tmp_path):
    """Compaction lists manifest 7 (retain=1); before it reads it, checkpoint 8 completes
    and retention deletes 7. What 8 needs (its snapshots list transactions from
    checkpoint 5 on) must stay: a manifest gone meanwhile means "list again", never
    "nothing is needed"."""
    from raystream.connectors.files import compaction
    from raystream.connectors.files.names import committed_checkpoint
    from raystream._runtime.state.store import CheckpointStore
    from raystream._runtime.state.manifest import Manifest, versions
    from raystream._runtime.state.snapshot import SnapshotMeta
    from raystream.sinks import FileSink, SinkContext

    store = CheckpointStore(str(tmp_path / "checkpoints" / "j"))
    store.claim_attempt("r1")
    w = FileSink(directory, format="parquet", roll="checkpoint").build_writer(
        SinkContext("out", 0, 1, transactional=True, run_id="r1", attempt=1))

    def publish(n, sink_from):
        meta = SnapshotMeta("out", 0, f"r1/snapshots/{n}", "0" * 64, 1, sink_from=sink_from)
        assert store.commit(Manifest("j", "r1", n, 1, "exactly_once", 0.0, {"out": 1}, [meta], versions=versions()))
        store.retain("r1", 1)

    for n in range(1, 8):
        w.write_batch([{"id": n}])
        w.commit(w.pre_commit(n))
    publish(7, 7)
    raced = []

    class Racing(CheckpointStore):
        def load_manifest(self, run_id, checkpoint_id):
            if not raced:  # meanwhile: checkpoint 8 completes and retention deletes 7
                raced.append(checkpoint_id)
                publish(8, 5)
            return super().load_manifest(run_id, checkpoint_id)

    real = compaction._checkpoint_store
    compaction._checkpoint_store = lambda root: Racing(root)
    try:
        done = compact_files(directory, checkpoints=store.root)
    finally:
        compaction._checkpoint_store = real
    assert raced == [7] and store.manifest_ids("r1") == [8]
    assert done.files_in == 4  # checkpoints 1-4
    left = sorted(committed_checkpoint(k) or 0 for k in compaction.visible_files(directory))
    assert left == [0, 5, 6, 7]  # the merged file, and what 8 may commit again
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(1, 8))


def test_files_whose_schemas_make_no_one_table_are_compacted_apart(tmp_path):
    """Review 48b: a window fires keys that came as strings and as ints as a batch each,
    which a Parquet sink writes as a file each; compacting them all at once failed (their
    rows make no one table). Files of each class of schemas that unify are merged apart."""
    directory = str(tmp_path / "out")
    storage = open_storage(directory)
    for f in range(6):
        key = str(f) if f % 2 else f  # strings and ints, alternating
        storage.put(f"part-mixed-{f:03d}.parquet", parquet_bytes([[{"id": f, "k": key}]]))
    done = compact_files(directory)
    assert (done.files_in, done.files_out, done.rows) == (6, 2, 6)
    assert sorted((r["id"], r["k"]) for r in read_files(directory, format="parquet")) == \
        [(f, str(f) if f % 2 else f) for f in range(6)]


def test_files_whose_schemas_unify_but_values_do_not_fit_are_left_and_the_rest_compacted(tmp_path):
    """Review 48c: an int64 file and a uint64 one holding 2**63 (a window's keys -1 and
    2**63, split by sign) unify but do not concat: the compaction failed at every call and
    compacted nothing else. They are compacted apart."""
    directory = str(tmp_path / "out")
    storage = open_storage(directory)
    tables = [pa.table({"k": pa.array([-1], pa.int64())}), pa.table({"k": pa.array([2**63], pa.uint64())}),
              pa.table({"s": ["a"]}), pa.table({"s": ["b"]})]
    for f, table in enumerate(tables):
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        storage.put(f"part-mixed-{f:03d}.parquet", buf.getvalue().to_pybytes())
    done = compact_files(directory)
    assert (done.files_in, done.files_out) == (3, 1)  # the uint64 file apart: the others make one table
    rows = read_files(directory, format="parquet")
    assert sorted(map(repr, (r["s"] if r.get("s") is not None else r["k"] for r in rows))) == \
        sorted(map(repr, [-1, 2**63, "a", "b"]))


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]])
def test_compaction_never_changes_a_values_type_whatever_the_files_order(tmp_path, order):
    """Review 48d: classed by the first file alone, a file of nulls first took every file
    into one class, which failed to merge at every call; merged permissively, a string "a"
    and a binary b"a" both became b"a", and 5 became 5.0."""
    directory = str(tmp_path / "out")
    storage = open_storage(directory)
    tables = [pa.table({"k": pa.array([None], pa.null())}), pa.table({"k": pa.array(["a"])}),
              pa.table({"k": pa.array([b"a"])}), pa.table({"k": pa.array([5])}), pa.table({"k": pa.array([1.5])})]
    for f, i in enumerate(order):
        buf = pa.BufferOutputStream()
        pq.write_table(tables[i], buf)
        storage.put(f"part-typed-{f:03d}.parquet", buf.getvalue().to_pybytes())
    before = sorted(map(repr, (r["k"] for r in read_files(directory, format="parquet"))))
    done = compact_files(directory, min_files=1)
    assert done.files_in == 5 and before == sorted(map(repr, (r["k"] for r in read_files(directory, format="parquet"))))
