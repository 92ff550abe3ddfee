"""Fixtures of the checkpoint store's tests: the default configuration (no key in the
environment, a fresh home) and a store with three signed checkpoints in it."""
from __future__ import annotations

from pathlib import Path

import pytest

from raystream._runtime.state import signing
from raystream._runtime.state.store import CheckpointStore

from tests.helpers.checkpoints import write_checkpoint


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The default configuration: no key in the environment, no opt-out, a fresh home."""
    for name in (signing.KEY_ENV, signing.KEY_FILE_ENV, signing.UNSIGNED_ENV):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def store(home, tmp_path) -> CheckpointStore:
    signing.current(create=True)  # as the process that starts a job does
    store = CheckpointStore(str(tmp_path / "ckpt" / "j"))
    store.claim_attempt("run")
    store.record_restore("run", 1, 0)
    for n in (1, 2, 3):
        write_checkpoint(store, n, {"a": n})
    return store
