"""The end column of a Lifetime window in milliseconds: timestamps of every unit, near the
ends of int64."""
from __future__ import annotations

import pyarrow as pa

from raystream._runtime.operators.lifetime_placement import MAX_END, end_millis
from raystream._runtime.time.watermarks import MIN_TIME


def test_an_end_in_seconds_far_before_the_epoch_stays_far_before_it():
    """Review 47: the lower bound for seconds, MIN_TIME // 1000, was floored, so times 1000
    it wrapped past int64 to a time near its top: a row whose end is ~292 million years
    before its own time opened a window to the end of the input instead of failing."""
    for unit, scale in (("s", 1000), ("ms", 1)):
        values, has = end_millis(pa.array([-(2 ** 62), -(2 ** 60), 0, 2 ** 62], pa.timestamp(unit)))
        assert has.all()
        assert values[0] >= MIN_TIME and values[0] < 0 and values[1] < 0
        assert values[2] == 0 and MAX_END - scale < values[3] <= MAX_END
        assert values.tolist() == sorted(values.tolist())
