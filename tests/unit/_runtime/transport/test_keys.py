"""Key routing is stable across processes and consistent with key-group ranges."""
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raystream._runtime.transport.keys import (
    KeyRouter,
    UnsupportedKeyError,
    groups_of_subtask,
    key_group,
    stable_hash,
    subtask_of_group,
)

SAMPLE = ["apple", "", "ünïcode", 0, -1, 2**70, 3.5, b"raw", None, ("a", 1), True]

_PROBE = ("from raystream._runtime.transport.keys import key_group\n"
          "print([key_group(k, 128) for k in {sample!r}])")


def test_same_key_same_group_in_every_process():
    """Python's hash() is salted per process; key groups must not be."""
    expected = [key_group(k, 128) for k in SAMPLE]
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", _PROBE.format(sample=SAMPLE)],
                             env=env, capture_output=True, text=True, check=True).stdout
        assert eval(out) == expected


def test_equal_keys_hash_equal():
    assert stable_hash(1) == stable_hash(1.0) == stable_hash(True)
    assert stable_hash(("a", 1)) == stable_hash(("a", 1.0))
    assert stable_hash("a") != stable_hash(b"a")


@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, object(), float("nan"), ("ok", [1])])
def test_unsupported_keys_get_a_clear_error(bad):
    with pytest.raises(UnsupportedKeyError, match="key"):
        KeyRouter(2, 128).route_all([bad])


@given(parallelism=st.integers(1, 128), max_parallelism=st.integers(1, 512))
def test_group_ranges_cover_every_group_once(parallelism, max_parallelism):
    if parallelism > max_parallelism:
        return
    seen = []
    for subtask in range(parallelism):
        groups = groups_of_subtask(subtask, parallelism, max_parallelism)
        assert all(subtask_of_group(g, parallelism, max_parallelism) == subtask for g in groups)
        seen.extend(groups)
    assert seen == list(range(max_parallelism))


@given(st.lists(st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=8)), max_size=50))
def test_router_agrees_with_key_groups_and_interns(keys):
    router = KeyRouter(3, 128)
    routed = router.route_all(keys)
    for key, (target, interned) in zip(keys, routed):
        assert target == subtask_of_group(key_group(key, 128), 3, 128)
        assert interned == key
    # equal keys come back as one object, so pickle writes them once
    first = {}
    for key, (_, interned) in zip(keys, routed):
        assert first.setdefault((type(key), key), interned) is interned
