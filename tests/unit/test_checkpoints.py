"""rs.checkpoints: listing a run's checkpoints and reading a step's keyed state, checksums first."""
import pytest

import raystream as rs
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.manifest import Manifest, versions
from raystream._runtime.state.snapshot import SnapshotMeta, SubtaskState, encode
from raystream.errors import CorruptCheckpointError, RestoreError


def write_checkpoint(store: CheckpointStore, n: int, tables: list[dict], *, final=False) -> None:
    metas = []
    for i, table in enumerate(tables):
        data, sha = encode(SubtaskState(n, "sum+out", i, len(tables), keyed={"sum": table}))
        key = store.snapshot_key("run", n, 1, "sum+out", i)
        store.storage.put(key, data)
        metas.append(SnapshotMeta("sum+out", i, key, sha, len(data)))
    assert store.commit(Manifest("j", "run", n, 1, "exactly_once", 1_700_000_000.0 + n, {"sum+out": len(tables)},
                                 metas, versions=versions(), duration=0.25, final=final))


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, [{"a": 1}, {"b": 2}])
    write_checkpoint(store, 2, [{"a": 10}, {"b": 20, ("c", 1): {"n": 3}}], final=True)
    write_checkpoint(store, 3, [{"a": 100}])
    store.refuse("run", 3, "a snapshot did not verify")
    store.storage.put("run/snapshots/000000000004/000001-sum+out-0000.snap", b"partial")
    return store


def test_list_checkpoints_shows_status_size_duration_and_the_uri_to_start_from(store):
    infos = rs.checkpoints.list_checkpoints(store.root)
    assert [(i.checkpoint_id, i.status) for i in infos] == [(1, "complete"), (2, "final"), (3, "refused"),
                                                         (4, "incomplete")]
    assert infos[1].size > 0 and infos[1].duration == 0.25 and infos[1].uri.endswith("run/manifests/000000000002.json")
    assert infos[2].reason == "a snapshot did not verify"
    assert rs.checkpoints.list_checkpoints(f"{store.root}/run") == infos  # a run directory names the same run


def test_read_state_returns_a_table_of_the_newest_complete_checkpoint(store):
    table = rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000002.json", "sum")
    assert table.column_names == ["key", "value", "subtask"]
    rows = table.to_pylist()
    assert [r["subtask"] for r in rows] == [0, 1, 1]
    assert "('c', 1)" in [r["key"] for r in rows]  # mixed key types fall back to their repr
    newest = rs.checkpoints.read_state(store.root, "sum")  # checkpoint 3 was refused: 2 is the newest
    assert newest.num_rows == 3
    first = rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000001.json", "sum").to_pylist()
    assert {r["key"]: r["value"] for r in first} == {"a": 1, "b": 2}
    with pytest.raises(RestoreError, match="has no step 'nope'; its steps: out, sum"):
        rs.checkpoints.read_state(store.root, "nope")
    with pytest.raises(RestoreError, match="keeps no keyed state"):
        rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000002.json", "out")


def test_read_state_never_unpickles_a_snapshot_that_fails_its_checksum(store):
    key = store.snapshot_key("run", 2, 1, "sum+out", 0)
    original = store.storage.get(key)
    store.storage.put(key, original + b"tampered")
    with pytest.raises(CorruptCheckpointError, match="larger than .* bytes, as recorded"):
        rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000002.json", "sum")
    store.storage.put(key, original[:-8] + b"tampered")  # the same size
    with pytest.raises(CorruptCheckpointError, match="damaged or was replaced"):
        rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000002.json", "sum")
