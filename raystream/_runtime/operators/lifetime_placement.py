"""Where the rows of a batch go in a Lifetime window step (operators/columnar_lifetimes.py,
L2-L4): each row's end, the windows in play, and the (row, window) pairs as the rules
give them one row at a time, in numpy where a key has one window in play."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.event_time import TIMESTAMP_DIVISORS
from raystream._runtime.operators.lifetime_waiting import PENDING
from raystream._runtime.time.watermarks import MAX_TIME, MIN_TIME

MAX_END = MAX_TIME // 2  # an end past it is taken as it: end + 1 + allowed lateness stays an int64


def end_millis(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(each row's end in milliseconds, floored, at most MAX_END; whether it has one) of
    the end column: integers (milliseconds) or timestamps."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)):
        raise TypeError(f"a Lifetime window's end column holds milliseconds (integers) or timestamps; got {kind}")
    has = column.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_null(kind):
        return np.zeros(len(column), dtype=np.int64), has
    if pa.types.is_unsigned_integer(kind):
        values = np.minimum(column.fill_null(0).to_numpy(zero_copy_only=False), MAX_END).astype(np.int64)
    else:
        values = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(kind):
        divisor = TIMESTAMP_DIVISORS[kind.unit]
        if divisor < 0:  # the lower bound rounded up: MIN_TIME // 1000 floored, times 1000, wraps past int64
            values = np.clip(values, -(-MIN_TIME // -divisor), MAX_END // -divisor) * -divisor
        else:
            values = values // divisor  # floored, as event times from a timestamp column are
    return np.minimum(values, MAX_END), has



def windows_in_play(state: dict[Any, Any], keys: list[Any], codes: np.ndarray, opening: np.ndarray,
                    times: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every window of the keys present (code, start, end, from which row on it is
    open: -1 for a window of the state, else its first opening row), sorted by code:
    those in the state (Python, once per distinct key) and those the rows open."""
    found_codes, found_starts, found_ends = [], [], []
    for code, windows in enumerate(map(state.get, keys)):  # the lookups in C, the loop per key held
        if windows:
            for w in windows:
                if w != PENDING:
                    found_codes.append(code)
                    found_starts.append(w[0])
                    found_ends.append(w[1])
    all_codes = np.concatenate([np.asarray(found_codes, dtype=np.int64), codes[opening]])
    all_starts = np.concatenate([np.asarray(found_starts, dtype=np.int64), times[opening]])
    all_ends = np.concatenate([np.asarray(found_ends, dtype=np.int64), ends[opening] + 1])
    all_from = np.concatenate([np.full(len(found_codes), -1, dtype=np.int64), opening])
    order = np.lexsort((all_from, all_ends, all_starts, all_codes))
    all_codes, all_starts, all_ends, all_from = all_codes[order], all_starts[order], all_ends[order], all_from[order]
    if len(opening):  # a window opened twice (or already open) is one window, open from its first
        first = np.ones(len(order), dtype=bool)
        first[1:] = (np.diff(all_codes) != 0) | (np.diff(all_starts) != 0) | (np.diff(all_ends) != 0)
        all_codes, all_starts, all_ends, all_from = all_codes[first], all_starts[first], all_ends[first], \
            all_from[first]
    return all_codes, all_starts, all_ends, all_from

def placed(codes: np.ndarray, times: np.ndarray, ends: np.ndarray, opening: np.ndarray, held: int, limit: int,
           windows: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """L4: the (row, window) pairs, rows in order, as the rules give them row by row:
    a row goes to the windows of its key open when it comes (its own included) that
    hold its time; a row in none waits (if the watermark has not passed its time) and
    goes to the first window opened later that holds it. Keys with one window in play
    (nearly all) in numpy; keys with several, row by row in Python."""
    win_codes, win_starts, win_ends, win_from = windows
    per_key = np.bincount(win_codes, minlength=int(codes.max()) + 1 if len(codes) else 0)
    several = per_key[codes] > 1
    one = np.flatnonzero(per_key[codes] == 1)
    w = np.searchsorted(win_codes, codes[one])  # each such row's window
    t = times[one]
    holds = (win_starts[w] <= t) & (t < win_ends[w])
    # a row that came before its window opened is in it only if it was waiting then
    came_open = (one >= win_from[w]) | (one < held) | (t > limit)
    keep = holds & came_open
    pair_rows, pair_windows = one[keep], w[keep]
    if several.any():
        more_rows, more_windows = _placed_in_turn(np.flatnonzero(several), codes, times, ends, opening, held, limit,
                                                  windows)
        pair_rows = np.concatenate([pair_rows, more_rows])
        pair_windows = np.concatenate([pair_windows, more_windows])
        order = np.argsort(pair_rows, kind="stable")
        pair_rows, pair_windows = pair_rows[order], pair_windows[order]
    return pair_rows, pair_windows

def _placed_in_turn(rows: np.ndarray, codes: np.ndarray, times: np.ndarray, ends: np.ndarray,
                    opening: np.ndarray, held: int, limit: int, windows: tuple[np.ndarray, ...]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`placed` for the rows of keys with several windows in play, a row at a time."""
    win_codes, win_starts, win_ends, win_from = windows
    index = {(c, s, e): i for i, (c, s, e) in enumerate(zip(win_codes.tolist(), win_starts.tolist(),
                                                             win_ends.tolist()))}
    opener = np.zeros(len(codes), dtype=bool)
    opener[opening] = True
    open_now: dict[int, list[int]] = {}  # per key, the windows open so far
    for i, (c, f) in enumerate(zip(win_codes.tolist(), win_from.tolist())):
        if f < 0:
            open_now.setdefault(c, []).append(i)
    waiting: dict[int, list[int]] = {}
    out_rows, out_windows = [], []
    t_of, e_of = times.tolist(), ends.tolist()
    for i in rows[np.argsort(codes[rows], kind="stable")].tolist():  # per key, in arrival order
        c, t = int(codes[i]), t_of[i]
        mine = open_now.setdefault(c, [])
        if i < held:
            waiting.setdefault(c, []).append(i)
            continue
        if opener[i]:
            w = index[(c, t, e_of[i] + 1)]
            if w not in mine:
                mine.append(w)
                still = []
                for r in waiting.get(c, ()):
                    if win_starts[w] <= t_of[r] < win_ends[w]:
                        out_rows.append(r)
                        out_windows.append(w)
                    else:
                        still.append(r)
                waiting[c] = still
        homes = [w for w in mine if win_starts[w] <= t < win_ends[w]]
        if homes:
            out_rows += [i] * len(homes)
            out_windows += homes
        elif t > limit:
            waiting.setdefault(c, []).append(i)
    return np.asarray(out_rows, dtype=np.int64), np.asarray(out_windows, dtype=np.int64)
