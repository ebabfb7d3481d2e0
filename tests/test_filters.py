"""The mining filters and selection rules, each as a pure function on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from nvdata.mine import filters
from nvdata.mine.selection import row_seeds, select_random, select_top


def test_relative_margin_keeps_95_percent_of_the_hardest_positive():
    scores = np.array([[0.90, 0.86, 0.85, 0.50]])
    removed = filters.relative_margin_mask(scores, np.array([0.9]), 0.05)  # threshold 0.855
    assert removed.tolist() == [[True, True, False, False]]


def test_relative_margin_is_sign_safe_for_negative_positive_scores():
    # p = -0.2: the threshold must lie BELOW p, at -0.21. The sign error p * (1 - m) = -0.19
    # would put it above p and keep -0.195 and -0.205, both closer to the query than allowed.
    scores = np.array([[-0.10, -0.195, -0.205, -0.215, -0.5]])
    removed = filters.relative_margin_mask(scores, np.array([-0.2]), 0.05)
    assert removed.tolist() == [[True, True, True, False, False]]


def test_relative_margin_zero_positive_and_per_row_thresholds():
    scores = np.array([[0.01, -0.01], [0.7, 0.4]])
    removed = filters.relative_margin_mask(scores, np.array([0.0, 0.8]), 0.5)  # thresholds 0, 0.4
    assert removed.tolist() == [[True, False], [True, False]]


def test_absolute_margin_and_score_bounds():
    scores = np.array([[0.8, 0.75, 0.6, 0.1]])
    assert filters.absolute_margin_mask(scores, np.array([0.8]), 0.1).tolist() == [[True, True, False, False]]
    negative = np.array([[-0.85, -0.95, -1.0]])  # threshold -0.8 - 0.1 = -0.9
    assert filters.absolute_margin_mask(negative, np.array([-0.8]), 0.1).tolist() == [[True, False, False]]
    assert filters.max_score_mask(scores, 0.7).tolist() == [[True, True, False, False]]
    assert filters.min_score_mask(scores, 0.5).tolist() == [[False, False, False, True]]


def test_excluded_code_mask_ignores_padding():
    cand = np.array([[5, 7, -1, 9], [1, 2, 3, 4]])
    excl = np.array([[7, -1], [4, 1]])
    assert filters.excluded_code_mask(cand, excl, pad=-1).tolist() == [
        [False, True, False, False],
        [True, False, False, True],
    ]


def test_repeated_code_mask_keeps_the_best_ranked_copy():
    codes = np.array([[3, 1, 3, 2, 1, 3], [4, 5, 6, 7, 8, 9]])
    assert filters.repeated_code_mask(codes).tolist() == [
        [False, False, True, False, True, True],
        [False] * 6,
    ]


def test_rank_window_counts_only_alive_candidates():
    alive = np.array([[False, True, True, False, True, True, True]])
    # alive ranks:        -    0     1     -    2     3     4
    out = filters.rank_window_mask(alive, 1, 3)
    assert out.tolist() == [[False, True, False, False, False, True, True]]
    assert not filters.rank_window_mask(alive, 0, None).any()


def test_select_top_takes_best_kept_and_never_pads():
    keep = np.array([[False, True, True, False, True], [False, False, False, False, True]])
    assert select_top(keep, 2).tolist() == [[1, 2], [4, -1]]
    assert select_top(keep, 9).tolist() == [[1, 2, 4, -1, -1], [4, -1, -1, -1, -1]]


def test_select_random_is_seeded_uniform_and_best_first():
    rng = np.random.default_rng(0)
    keep = rng.random((200, 30)) < 0.6
    seeds = row_seeds(7, [f"q{i}" for i in range(200)])
    a = select_random(keep, 5, seeds)
    assert np.array_equal(a, select_random(keep, 5, seeds))
    for row, picks in zip(keep, a):
        real = picks[picks >= 0]
        assert len(real) == min(5, row.sum())
        assert row[real].all()  # only kept candidates
        assert np.all(np.diff(real) > 0)  # best (lowest rank) first, no repeats
    # Different seeds draw differently; a row's draw depends only on its own key.
    assert not np.array_equal(a, select_random(keep, 5, row_seeds(8, [f"q{i}" for i in range(200)])))
    assert np.array_equal(select_random(keep[5:6], 5, seeds[5:6]), a[5:6])
    # Roughly uniform: every position of a full row gets picked about equally often.
    full = np.ones((4000, 10), dtype=bool)
    picks = select_random(full, 2, row_seeds(1, [str(i) for i in range(4000)]))
    freq = np.bincount(picks.ravel(), minlength=10) / picks.size
    assert np.all(np.abs(freq - 0.1) < 0.02)


@pytest.mark.parametrize("n", [0, 1])
def test_select_handles_degenerate_shapes(n):
    keep = np.ones((n, 3), dtype=bool)
    assert select_top(keep, 2).shape == (n, 2)
    assert select_random(keep, 2, np.zeros(n, dtype=np.uint64)).shape == (n, 2)
