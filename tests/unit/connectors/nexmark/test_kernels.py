"""The numpy building blocks of the columnar generator, against records.py's."""
from __future__ import annotations

import numpy as np

from raystream.connectors.nexmark import kernels
from raystream.connectors.nexmark.records import _mix, price


def test_splitmix64_over_an_array_is_records_py_s():
    states = np.random.default_rng(1).integers(0, 2**64 - 1, 1_000, dtype=np.uint64, endpoint=True)
    mixed = kernels.mix(states, np.empty_like(states), np.empty_like(states))
    assert mixed.tolist() == [_mix(int(s)) for s in states]


def test_prices_near_a_rounding_tie_are_those_of_python():
    """numpy's power may differ from Python's in the last bit; prices within 1e-4 of x.5 are
    recomputed in Python, and every price equals the per-record one."""
    states = np.random.default_rng(3).integers(0, 2**64 - 1, 400_000, dtype=np.uint64, endpoint=True)
    value = np.power(10.0, (states >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 6.0) * 100.0
    near = states[np.abs(value - np.rint(value)) > 0.5 - 1e-4]
    assert len(near) > 10  # the recomputation runs
    for sample in (near, states[:20_000]):
        want = [price((int(s) >> 11) / (1 << 53)) for s in sample]
        assert kernels.prices(sample).tolist() == want
