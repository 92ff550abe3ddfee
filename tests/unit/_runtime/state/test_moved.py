"""Checkpoints written before the package was arranged in folders restore: their pickles
name classes by the old modules (`raystream._runtime.snapshot`, ...), and `decode` finds
them where they live now (raystream/_runtime/state/moved.py). The checkpoint under
tests/data/checkpoint-0.1.0 was written by raystream 0.1.0 before the move (make.py there)."""
import collections
import importlib
import pathlib

import pytest

import raystream as rs
from raystream._runtime.state import moved
from raystream.errors import RestoreError
from tests.conftest import SECRETS

EARLIER = pathlib.Path(__file__).resolve().parents[3] / "data" / "checkpoint-0.1.0" / "earlier"
#: The key that signed it: the tests' key, which every Ray worker of the tests has.
EARLIER_KEY = SECRETS["RAYSTREAM_CHECKPOINT_KEY"]
N, KEYS = 420, 7


@pytest.fixture
def earlier_key(monkeypatch):
    monkeypatch.setenv("RAYSTREAM_CHECKPOINT_KEY", EARLIER_KEY)


def expected_sums(n: int) -> dict[int, int]:
    sums = collections.Counter()
    for i in range(n):
        sums[i % KEYS] += i
    return dict(sums)


#: Names of 0.1.0 that nothing maps, and why: methods that moved to another class, with
#: another `self` (no snapshot refers to a CheckpointStore's methods).
UNMAPPED = {f"raystream._runtime.checkpoint_store:CheckpointStore.{m}"
            for m in ("save_progress", "read_progress", "compact_progress")} | {
    "raystream._runtime.subtask:SubtaskActor._source_offsets",  # now SourceReader.snapshot
    "raystream.sources:_LinePartition._read_header"}  # gone: Arrow's CSV reader reads the header


def test_every_class_function_and_method_of_0_1_0_is_found_where_it_lives_now():
    """tests/data/names-0.1.0.txt lists them all (module:qualified name), from 0.1.0's source:
    what a pickle of 0.1.0 can name, looked up as `find_class` does."""
    names = (pathlib.Path(__file__).resolve().parents[3] / "data" / "names-0.1.0.txt").read_text().split()
    assert len(names) > 1000
    unresolved = []
    for old in names:
        module, qualname = moved.now(*old.split(":"))
        try:
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            unresolved.append(old)
    assert set(unresolved) == UNMAPPED, sorted(set(unresolved) ^ UNMAPPED)


@pytest.mark.parametrize("old", sorted(moved.MODULES) + sorted(moved.NAMES))
def test_every_moved_name_resolves_to_what_lives_there_now(old):
    if ":" in old:
        module, name = moved.now(*old.split(":"))
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    else:
        importlib.import_module(moved.MODULES[old])


def test_a_checkpoint_of_the_earlier_layout_reads_with_its_keyed_state(earlier_key):
    sums = {row["key"]: row["value"] for row in rs.checkpoints.read_state(str(EARLIER), "sum").to_pylist()}
    assert sums == expected_sums(N)
    timers = rs.checkpoints.read_state(str(EARLIER), "timers").to_pylist()
    assert sorted(row["key"] for row in timers) == list(range(KEYS))


def test_state_of_a_class_of_the_job_file_that_uses_a_moved_module_decodes(earlier_key):
    """make.py's `Seen` is pickled by value with the module its method uses,
    `raystream.nexmark`, which cloudpickle imports by that name (not through find_class)."""
    from raystream._runtime.checkpointing.locate import locate
    from raystream._runtime.state.store import CheckpointStore

    ref = locate(str(EARLIER))
    store = CheckpointStore(ref.root)
    manifest = store.load_manifest(ref.run_id, ref.checkpoint_id)
    states = [store.verify_snapshot(store.read_snapshot(meta), meta) for meta in manifest.snapshots
              if meta.chain.startswith("seen")]
    seen = {key: state for s in states for key, state in s.keyed.get("seen", {}).items()}
    assert {key: state.n for key, state in seen.items()} == {k: N // KEYS for k in range(KEYS)}
    assert {state.kind for state in seen.values()} == {"Bid"}


def test_without_the_old_module_paths_that_state_does_not_decode(earlier_key, monkeypatch):
    import sys

    from raystream._moved_modules import MovedModules

    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, MovedModules)])
    monkeypatch.delitem(sys.modules, "raystream.nexmark", raising=False)
    with pytest.raises(RestoreError, match="No module named 'raystream.nexmark'"):
        test_state_of_a_class_of_the_job_file_that_uses_a_moved_module_decodes(earlier_key)


@pytest.mark.parametrize("old, new", [
    (("raystream._runtime.watermarks", "AssignTimeOp.process"), ("raystream._runtime.operators.event_time", "AssignTimeOp.process")),
    (("raystream.sources", "_Pacer.allowed"), ("raystream.source_api", "Pacer.allowed")),
    (("raystream._runtime.blocking", "in_thread"), ("raystream._runtime.transport.blocking", "in_thread")),
])
def test_a_method_of_a_moved_class_is_found_where_its_class_lives_now(old, new):
    assert moved.now(*old) == new
    obj = importlib.import_module(new[0])
    for part in new[1].split("."):
        obj = getattr(obj, part)


def test_without_the_table_the_earlier_checkpoint_does_not_decode(earlier_key, monkeypatch):
    monkeypatch.setattr(moved, "MODULES", {})
    with pytest.raises(RestoreError, match="No module named 'raystream._runtime.snapshot'"):
        rs.checkpoints.read_state(str(EARLIER), "sum")
