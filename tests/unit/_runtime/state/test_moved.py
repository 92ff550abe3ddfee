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


@pytest.mark.parametrize("old", sorted(moved.MODULES) + sorted(moved.NAMES))
def test_every_moved_name_resolves_to_what_lives_there_now(old):
    if ":" in old:
        module, name = moved.now(*old.split(":"))
        assert hasattr(importlib.import_module(module), name), old
    else:
        importlib.import_module(moved.MODULES[old])


def test_a_checkpoint_of_the_earlier_layout_reads_with_its_keyed_state(earlier_key):
    sums = {row["key"]: row["value"] for row in rs.checkpoints.read_state(str(EARLIER), "sum").to_pylist()}
    assert sums == expected_sums(N)
    timers = rs.checkpoints.read_state(str(EARLIER), "timers").to_pylist()
    assert sorted(row["key"] for row in timers) == list(range(KEYS))


def test_without_the_table_the_earlier_checkpoint_does_not_decode(earlier_key, monkeypatch):
    monkeypatch.setattr(moved, "MODULES", {})
    with pytest.raises(RestoreError, match="No module named 'raystream._runtime.snapshot'"):
        rs.checkpoints.read_state(str(EARLIER), "sum")
