"""Candidate filters for hard-negative mining: small pure functions over candidate arrays.

The search hands every query a row of ``k`` candidates, best first: ``scores`` (float, shape
``(n, k)``) and integer codes that identify each candidate (its corpus index, a 64-bit hash of
its normalized text). Each function here reads those arrays and returns a boolean mask of the
same shape that is True where the rule *removes* a candidate. The miner applies them in turn to
the candidates still alive and counts what each one removed, so every rule can be read, tested
and reported on its own (sentence-transformers' ``mine_hard_negatives`` folds them into one
function, where a sign error in the relative margin once went unnoticed).

Example::

    >>> import numpy as np
    >>> scores = np.array([[0.93, 0.80, 0.41]])
    >>> relative_margin_mask(scores, np.array([0.90]), 0.05)   # threshold 0.855
    array([[ True, False, False]])
"""

from __future__ import annotations

import numpy as np


def excluded_code_mask(
    candidate_codes: np.ndarray, excluded_codes: np.ndarray, *, pad: int = -1
) -> np.ndarray:
    """True where a candidate's code is one of its row's excluded codes.

    ``candidate_codes`` is ``(n, k)``; ``excluded_codes`` is ``(n, m)``: the codes each query
    must not get back, padded with ``pad`` (ignored) where a query has fewer than ``m``. Used
    for "is this candidate one of the query's positives" (by corpus index) and "is it a copy of
    a positive or of the query itself" (by normalized-text hash).
    """
    candidate_codes = np.asarray(candidate_codes)
    excluded_codes = np.asarray(excluded_codes)
    if candidate_codes.shape[0] != excluded_codes.shape[0]:
        raise ValueError("candidate_codes and excluded_codes must have one row per query each")
    mask = np.zeros(candidate_codes.shape, dtype=bool)
    # m is small (the positives of one query), so a loop over columns keeps memory at (n, k).
    for j in range(excluded_codes.shape[1]):
        column = excluded_codes[:, j : j + 1]
        mask |= (candidate_codes == column) & (column != pad)
    return mask


def repeated_code_mask(candidate_codes: np.ndarray) -> np.ndarray:
    """True for every candidate whose code already occurred earlier in its row.

    Rows are best-first, so this keeps the highest-ranked copy of a text that the corpus holds
    several times and removes the others: two negatives of one row are never the same text.
    """
    codes = np.asarray(candidate_codes)
    n, k = codes.shape
    mask = np.zeros((n, k), dtype=bool)
    if k < 2:
        return mask
    # A stable sort keeps equal codes in their original (rank) order, so in sorted order every
    # element equal to its left neighbour is a later copy.
    order = np.argsort(codes, axis=1, kind="stable")
    sorted_codes = np.take_along_axis(codes, order, axis=1)
    later_copy = np.zeros((n, k), dtype=bool)
    later_copy[:, 1:] = sorted_codes[:, 1:] == sorted_codes[:, :-1]
    np.put_along_axis(mask, order, later_copy, axis=1)
    return mask


def rank_window_mask(alive: np.ndarray, range_min: int, range_max: int | None) -> np.ndarray:
    """True for alive candidates whose rank among the alive ones is outside ``[range_min, range_max)``.

    Ranks count only candidates still alive (``alive`` is ``(n, k)`` bool, rows best-first), so
    a skipped positive does not shift the window: ``range_min=10`` skips the ten most similar
    non-positive documents, whatever was removed before them.
    """
    alive = np.asarray(alive, dtype=bool)
    rank = np.cumsum(alive, axis=1) - 1
    outside = rank < range_min
    if range_max is not None:
        outside |= rank >= range_max
    return alive & outside


def relative_margin_mask(
    scores: np.ndarray, min_positive_scores: np.ndarray, relative_margin: float
) -> np.ndarray:
    """NV-Retriever's TopK-PercPos false-negative filter (arXiv 2407.15831, section 4.2).

    Removes a candidate that scores above ``p - |p| * relative_margin``, where ``p`` is the
    lowest score among the query's positives: with the default 0.05 a negative must score below
    95% of the hardest positive. Subtracting ``|p| * margin`` (rather than multiplying by
    ``1 - margin``) keeps the threshold *below* ``p`` when ``p`` is negative.
    """
    p = np.asarray(min_positive_scores, dtype=np.float64)
    threshold = p - np.abs(p) * relative_margin
    return np.asarray(scores) > threshold[:, None]


def absolute_margin_mask(
    scores: np.ndarray, min_positive_scores: np.ndarray, absolute_margin: float
) -> np.ndarray:
    """TopK-MarginPos: removes a candidate scoring above ``p - absolute_margin``."""
    p = np.asarray(min_positive_scores, dtype=np.float64)
    return np.asarray(scores) > (p - absolute_margin)[:, None]


def max_score_mask(scores: np.ndarray, max_score: float) -> np.ndarray:
    """TopK-Abs: removes a candidate scoring above ``max_score`` (too similar to be negative)."""
    return np.asarray(scores) > max_score


def min_score_mask(scores: np.ndarray, min_score: float) -> np.ndarray:
    """Removes a candidate scoring below ``min_score`` (too easy to teach anything)."""
    return np.asarray(scores) < min_score
