"""Out-of-core key sorting and grouping (mine.keysort) equal their in-memory numpy forms."""

import numpy as np
import pytest

from nvdata.mine import keysort


def _keys(n: int, distinct: int, seed: int, prefix_collisions: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, size=(distinct, 16), dtype=np.uint8)
    if prefix_collisions:  # many keys share their leading 16 bits (one big bucket)
        pool[: distinct // 2, :2] = 7
    return pool[rng.integers(0, distinct, size=n)].copy().view("S16").ravel()


@pytest.mark.parametrize("n,distinct,chunk,collide", [
    (0, 1, 4, False), (1, 1, 4, False), (1000, 50, 7, False), (1000, 1000, 64, False),
    (1000, 3, 5, False), (3000, 400, 100, True), (5000, 4000, 1 << 18, False),
])
def test_sort_keys_equals_a_stable_argsort(n, distinct, chunk, collide):
    keys = _keys(n, distinct, seed=n + chunk, prefix_collisions=collide)
    order, ordered = np.full(n, -1, dtype=np.int64), np.empty(n, dtype="S16")
    keysort.sort_keys(keys, order, ordered, chunk=chunk)
    expect = np.argsort(keys, kind="stable")
    assert np.array_equal(order, expect)
    assert np.array_equal(ordered, keys[expect])


def _grouped_in_memory(keys):
    """The miner's former in-memory grouping (np.argsort over every row)."""
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sk[1:] != sk[:-1]
    group_of_sorted = np.cumsum(starts) - 1
    first_of_group = order[starts]
    n_q = len(first_of_group)
    q_of_group = np.empty(n_q, dtype=np.int64)
    q_of_group[np.argsort(first_of_group, kind="stable")] = np.arange(n_q)
    of_row = np.empty(n, dtype=np.int64)
    of_row[order] = q_of_group[group_of_sorted]
    counts = np.bincount(of_row, minlength=n_q)
    q_off = np.concatenate([[0], np.cumsum(counts)])
    return of_row, np.sort(first_of_group), q_off, np.argsort(of_row, kind="stable"), int(counts.max())


@pytest.mark.parametrize("n,distinct,chunk", [(1, 1, 3), (997, 60, 7), (997, 1, 10), (2000, 1500, 33), (3000, 200, 1 << 18)])
def test_group_first_seen_equals_the_in_memory_grouping(n, distinct, chunk):
    keys = _keys(n, distinct, seed=distinct)
    got = keysort.group_first_seen(keys, lambda name, size, dtype: np.zeros(size, dtype=dtype), chunk=chunk)
    expect = _grouped_in_memory(keys)
    for g, e in zip(got[:4], expect[:4]):
        assert np.array_equal(g, e)
    assert got[4] == expect[4]
