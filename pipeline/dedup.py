"""Row de-duplication: one row per (normalized query, normalized positive) within a source.

Public training sets repeat themselves: the STS Benchmark train split lists 29 pairs twice
(the same pair from another year, in other casing or spacing, or with the sentences swapped).
A repeated row is a second gradient step on the same example and, with in-batch negatives, its
own copy's positive becomes a false negative. Formatting (:mod:`nvdata.instruct`) therefore
keeps the first row of every (query, positive) identity and counts the rest per source as
``duplicates_merged``; identity is :func:`nvdata.text.normalize_text`, the rule every other
stage uses. An STS pair given in both orders needs no rule of its own: pair (a, b) makes the
rows a -> b and b -> a, so (b, a) repeats both. The same row identity holds for every task
type: classification and clustering rows are (text, label or example) pairs.

Example::

    >>> d = FirstSeen()
    >>> d.keep_new([row_key("Which planets have rings?", "Saturn."),
    ...             row_key("which planets have rings", "saturn")]).tolist()
    [True, False]
    >>> d.merged, d.count
    (1, 1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from nvdata.text import normalize_text

KEY_BYTES = 12  # 96 bits: a chance collision among 64M rows is ~1e-14


def row_key(query: str, positive: str) -> bytes:
    """The identity of a (query, positive) row: equal when both texts normalize equal."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for text in (query, positive):
        b = normalize_text(text).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.digest()


def id_key(identifier: str) -> bytes:
    """A ``KEY_BYTES`` key of an exact id string (a document id, a content id) for :class:`FirstSeen`."""
    return hashlib.blake2b(identifier.encode("utf-8"), digest_size=KEY_BYTES).digest()


class FirstSeen:
    """The keys seen so far (a source's rows or documents, in order), as sorted runs of
    ``KEY_BYTES``-byte keys merged log-structured: 12 bytes per key and no Python object per
    key, so a 64M-row source fits in memory (a ``set`` of its ids took ~110 bytes each); a
    lookup is a ``searchsorted`` per run (a handful of runs at any time)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.count = 0  # distinct rows kept
        self.merged = 0  # rows refused as a repeat of an earlier row

    def keep_new(self, keys: Sequence[bytes] | np.ndarray) -> np.ndarray:
        """Bool mask over ``keys`` (from :func:`row_key` or :func:`id_key`; or a numpy ``S12``
        array of them): True for the first occurrence of each identity, here or in any earlier
        call; the others are counted in ``merged``."""
        if not len(keys):
            return np.zeros(0, dtype=bool)
        arr = keys if isinstance(keys, np.ndarray) else np.frombuffer(b"".join(keys), dtype=f"S{KEY_BYTES}")
        keep = np.zeros(len(arr), dtype=bool)
        keep[np.unique(arr, return_index=True)[1]] = True
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, arr), len(run) - 1)
            keep &= run[at] != arr
        new = np.sort(arr[keep])
        if len(new):
            self.runs.append(new)
            while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
                b, a = self.runs.pop(), self.runs.pop()
                self.runs.append(np.sort(np.concatenate([a, b])))
        self.count += len(new)
        self.merged += int(len(arr) - len(new))
        return keep
