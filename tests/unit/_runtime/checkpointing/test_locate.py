"""What a checkpoint URI names, told from one listing of the storage: on S3 every listing
is a LIST request, and one level above the job roots there used to be dozens."""
import pytest

from raystream._runtime.checkpointing.locate import Listing, locate, locate_run
from raystream._runtime.state.store import CheckpointStore
from raystream._storage import LocalStorage
from raystream.errors import RestoreError

from tests.helpers.checkpoints import write_checkpoint


@pytest.fixture
def listings(monkeypatch) -> list[str]:
    """The prefixes a local storage is listed at, in order."""
    seen: list[str] = []
    real = LocalStorage.list

    def counting(self, prefix):
        seen.append(prefix)
        return real(self, prefix)

    monkeypatch.setattr(LocalStorage, "list", counting)
    return seen


def storage_of_jobs(tmp_path, jobs: list[str]):
    """A checkpoint storage holding a job root of each name, with a run and a checkpoint."""
    for name in jobs:
        store = CheckpointStore(str(tmp_path / "storage" / name))
        store.claim_attempt("run")
        write_checkpoint(store, 1, {"k": 1})  # a manifest of job "j"
    return tmp_path / "storage"


def test_one_level_above_the_job_roots_the_storage_is_listed_once(tmp_path, listings):
    storage = storage_of_jobs(tmp_path, [f"job{i:02d}" for i in range(25)])
    listings.clear()
    with pytest.raises(RestoreError) as info:
        locate_run(str(storage))
    jobs = ", ".join(f"job{i:02d}" for i in range(10))
    assert str(info.value) == (f"{storage} is a checkpoint storage, not a job's checkpoint root: it holds the jobs "
                               f"{jobs}; give {storage / 'job00'} (or another of them)")
    assert listings == [""]


def test_a_job_root_a_run_and_an_empty_folder_are_each_told_from_one_listing(tmp_path, listings):
    storage = storage_of_jobs(tmp_path, ["i", "j", "k"])
    listings.clear()
    store, run_id = locate_run(str(storage / "j"))
    assert (store.root, run_id, listings) == (str(storage / "j"), "run", [""])
    listings.clear()
    store, run_id = locate_run(str(storage / "j" / "run"))
    assert (store.root, run_id, listings) == (str(storage / "j"), "run", [""])
    listings.clear()
    assert locate_run(str(tmp_path / "empty")) is None and listings == [""]
    listings.clear()
    ref = locate(str(storage / "j"))  # then the run's manifests, refusals, restores and attempts
    assert (ref.run_id, ref.checkpoint_id) == ("run", 1) and len(listings) <= 6, listings


def test_a_listing_answers_as_the_storage_does_from_any_folder(tmp_path):
    storage = LocalStorage(str(tmp_path / "s"))
    for key in ("a/1", "a/b/2", "a/b/3", "ab/4", "b/5"):
        storage.put(key, key.encode())
    listing = Listing(storage)
    for prefix in ("", "a", "a/", "a/b/", "ab", "c/"):
        assert listing.list(prefix) == storage.list(prefix), prefix
    under = listing.under("a")
    assert under.list("") == ["1", "b/2", "b/3"] and under.list("b/") == ["b/2", "b/3"]
    assert under.get("b/2") == b"a/b/2" and under.uri("b/2") == storage.uri("a/b/2")
    with pytest.raises(NotImplementedError):
        under.put("c", b"")
