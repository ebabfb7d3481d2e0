"""Sorting and grouping fixed-width keys in bounded memory, over memory-mapped scratch files.

The dense miner numbers a source's queries and looks its rows up by id through tables of
16-byte digests, one per row (:func:`nvdata.mine.dense._digests`). ``np.argsort`` over such a
table allocates an index of 8 bytes per row and its sort in the heap: ~1.5 GB for PAQ's 64M
rows. Here the table is sorted out of core instead, the way an external radix sort does:

1. count the keys by their leading 16 bits (one pass, chunk by chunk);
2. scatter the row numbers into their bucket's slice of the output, in row order;
3. sort each run of whole buckets of at most ``chunk`` rows in memory (stable).

Digests are uniform, so the runs are even; the heap holds one chunk at a time, the tables
live in the page cache. Buckets laid end to end are the keys in global order, so the result
equals ``np.argsort(keys, kind="stable")`` exactly (a key's rows stay in row order).
:func:`group_first_seen` builds on it what the miner needs: groups of equal keys numbered in
first-seen order, with their rows in CSR form.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CHUNK = 1 << 18  # rows held in memory at a time (~10 MiB of temporaries)
# The working tables :func:`group_first_seen` asks ``alloc`` for beyond its outputs (the
# caller may delete them after it returns).
GROUP_TEMPORARIES = ("group_order", "group_sorted", "group_is_first", "group_q_at_first", "group_counts", "group_rank")
_BITS = 16


def _buckets(keys: np.ndarray) -> np.ndarray:
    """Each key's leading 16 bits (``S16`` digests compare bytewise, so these order them)."""
    head = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), -1)[:, :2].astype(np.int64)
    return (head[:, 0] << 8) | head[:, 1]


def sort_keys(keys: np.ndarray, order: np.ndarray, ordered: np.ndarray, *, chunk: int | None = None) -> None:
    """Fill ``order`` (int64, ``len(keys)``) with ``np.argsort(keys, kind="stable")`` and
    ``ordered`` (``keys.dtype``) with ``keys[order]``, holding at most about ``chunk`` rows in
    memory (``chunk`` None: :data:`CHUNK`) beyond one bucket (a bucket is the rows sharing a key's first 16 bits; only a key
    repeated on more than ``chunk`` rows makes one larger). ``keys`` is a fixed-width bytes
    array of at least 2 bytes per key (``S16`` digests); the outputs are usually
    memory-mapped scratch arrays."""
    n, chunk = len(keys), chunk or CHUNK
    if n == 0:
        return
    counts = np.zeros(1 << _BITS, dtype=np.int64)
    for i in range(0, n, chunk):
        counts += np.bincount(_buckets(keys[i : i + chunk]), minlength=1 << _BITS)
    starts = np.concatenate([[0], np.cumsum(counts)])
    cursor = starts[:-1].copy()
    for i in range(0, n, chunk):
        b = _buckets(keys[i : i + chunk])
        o = np.argsort(b, kind="stable")
        sb = b[o]
        first = np.searchsorted(sb, sb, side="left")  # where each row's bucket begins in this chunk
        order[cursor[sb] + (np.arange(len(sb)) - first)] = i + o
        cursor += np.bincount(b, minlength=1 << _BITS)
    # Runs of whole buckets of at most `chunk` rows (a larger bucket is a run by itself).
    lo = 0
    while lo < n:
        hi = int(starts[np.searchsorted(starts, lo + chunk, side="right") - 1])
        if hi <= lo:
            hi = int(starts[np.searchsorted(starts, lo, side="right")])
        rows = np.asarray(order[lo:hi])
        k = np.asarray(keys[rows])
        o = np.argsort(k, kind="stable")
        order[lo:hi] = rows[o]
        ordered[lo:hi] = k[o]
        lo = hi


def group_first_seen(
    keys: np.ndarray, alloc: Callable[[str, int, type], np.ndarray], *, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Group the rows of equal ``keys``, the groups numbered by their first row.

    ``alloc(name, length, dtype)`` gives an output (or scratch) array, e.g. a memory-mapped
    file. Returns ``(of_row, firsts, q_off, row_by_q, max_rows)``: each row's group;
    each group's first row (ascending); the CSR offsets (``n_groups + 1``) of ``row_by_q``,
    each group's rows in row order; the most rows of any group. Equal to the in-memory
    ``np.unique``/``argsort`` form (``tests/test_keysort.py``), in memory of ``chunk`` rows.
    """
    n, chunk = len(keys), chunk or CHUNK
    order = alloc("group_order", n, np.int64)
    ordered = alloc("group_sorted", n, keys.dtype)
    sort_keys(keys, order, ordered, chunk=chunk)
    # Pass A, over sorted positions: where each group starts; a row is its group's first
    # (stable sort: the first of its group in sorted order).
    is_first = alloc("group_is_first", n, np.bool_)
    n_q = 0
    for i in range(0, n, chunk):
        s = _starts(ordered, i, min(n, i + chunk))
        is_first[np.asarray(order[i : i + len(s)])[s]] = True
        n_q += int(s.sum())
    # Pass B, over rows: groups numbered in first-seen order = rank of their first row.
    q_at = alloc("group_q_at_first", n, np.int64)
    firsts = alloc("firsts", n_q, np.int64)
    q = 0
    for i in range(0, n, chunk):
        f = np.asarray(is_first[i : i + chunk])
        c = np.cumsum(f)
        q_at[i : i + len(f)] = q + c - 1
        firsts[q : q + int(c[-1])] = i + np.flatnonzero(f)
        q += int(c[-1])
    # Pass C, over sorted positions: each row's group (its group's first row's number),
    # group sizes, and a row's rank inside its group.
    of_row = alloc("of_row", n, np.int64)
    counts = alloc("group_counts", n_q, np.int64)
    rank = alloc("group_rank", n, np.int64)
    head_pos = -1  # sorted position where the group running into this chunk began
    for i in range(0, n, chunk):
        e = min(n, i + chunk)
        s = _starts(ordered, i, e)
        pos = np.arange(i, e)
        begin = np.maximum.accumulate(np.where(s, pos, head_pos))
        head_pos = int(begin[-1])
        rows = np.asarray(order[i:e])
        group_q = np.asarray(q_at[np.asarray(order[begin])])
        of_row[rows] = group_q
        rank[i:e] = pos - begin
        ends = np.flatnonzero(np.append(s[1:], e == n or _starts(ordered, e, e + 1)[0]))
        counts[group_q[ends]] = rank[i:e][ends] + 1
    q_off = alloc("q_off", n_q + 1, np.int64)
    q_off[0] = 0
    total, max_rows = 0, 0
    for i in range(0, n_q, chunk):
        c = np.asarray(counts[i : i + chunk])
        q_off[i + 1 : i + 1 + len(c)] = total + np.cumsum(c)
        total += int(c.sum())
        max_rows = max(max_rows, int(c.max()))
    # Pass D, over sorted positions: a group's rows (already in row order) to its CSR slice.
    row_by_q = alloc("row_by_q", n, np.int64)
    for i in range(0, n, chunk):
        rows = np.asarray(order[i : i + chunk])
        g = np.asarray(of_row[rows])
        row_by_q[np.asarray(q_off[g]) + np.asarray(rank[i : i + len(rows)])] = rows
    return of_row, firsts, q_off, row_by_q, max_rows


def _starts(ordered: np.ndarray, i: int, e: int) -> np.ndarray:
    """Whether each sorted position ``i..e-1`` starts a group (its key differs from the one before)."""
    k = np.asarray(ordered[max(i - 1, 0) : e])
    if i == 0:
        return np.concatenate([[True], k[1:] != k[:-1]]) if e > 0 else np.zeros(0, dtype=bool)
    return k[1:] != k[:-1]
