"""Row de-duplication: one row per (normalized query, normalized positive) within a source.

Public training sets repeat themselves: the STS Benchmark train split lists 29 pairs twice
(the same pair from another year, in other casing or spacing, or with the sentences swapped).
A repeated row is a second gradient step on the same example and, with in-batch negatives, its
own copy's positive becomes a false negative. Formatting (:mod:`nvdata.instruct`) therefore
keeps the first row of every (query, positive) identity and counts the rest per source as
``duplicates_merged``; identity is :func:`nvdata.text.normalize_text`, the rule every other
stage uses. An STS pair given in both orders needs no rule of its own: pair (a, b) makes the
rows a -> b and b -> a, so (b, a) repeats both.

The same row identity holds for every task type: classification and clustering rows are
(text, label or example) pairs.

Example::

    >>> d = RowDeduplicator()
    >>> d.first("Which planets have rings?", "Saturn."), d.first("which planets have rings", "saturn")
    (True, False)
    >>> d.merged
    1
"""

from __future__ import annotations

import hashlib

from nvdata.text import normalize_text


def row_key(query: str, positive: str) -> bytes:
    """16-byte identity of a (query, positive) row: equal when both normalize equal."""
    h = hashlib.blake2b(digest_size=16)
    for text in (query, positive):
        b = normalize_text(text).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.digest()


class RowDeduplicator:
    """Remembers the row identities seen so far (one source's rows, in order); about 90 bytes
    per distinct row, so a 10M-row source holds ~1 GB while it is formatted."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.merged = 0  # rows refused as a repeat of an earlier row

    def first(self, query: str, positive: str) -> bool:
        """True the first time this (query, positive) identity is seen; False (counted) after."""
        key = row_key(query, positive)
        if key in self._seen:
            self.merged += 1
            return False
        self._seen.add(key)
        return True
