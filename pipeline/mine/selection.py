"""Choosing the negatives among the candidates the filters left alive.

Both functions take ``keep`` (``(n, k)`` bool, rows best-first) and return ``(n, num)`` column
positions into the candidate row, hardest first, padded with ``-1`` where a row has fewer than
``num`` candidates left. Nothing is ever padded with a random document: a short row stays short
and the miner reports it.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def select_top(keep: np.ndarray, num: int) -> np.ndarray:
    """The ``num`` best-ranked kept candidates of every row (NV-Retriever's TopK sampling)."""
    keep = np.asarray(keep, dtype=bool)
    num = min(num, keep.shape[1])
    # A stable argsort of ~keep lists the kept positions first, in rank order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :num]
    chosen = np.take_along_axis(keep, order, axis=1)
    return np.where(chosen, order, -1)


def select_random(keep: np.ndarray, num: int, row_seeds: np.ndarray) -> np.ndarray:
    """``num`` kept candidates drawn uniformly without replacement per row, returned best-first.

    ``row_seeds`` (``(n,)`` uint64, see :func:`row_seeds`) fixes each row's draw on its own, so
    a row's negatives do not change when other rows are added or removed.
    """
    keep = np.asarray(keep, dtype=bool)
    n, k = keep.shape
    num = min(num, k)
    priority = _splitmix64(
        np.asarray(row_seeds, dtype=np.uint64)[:, None]
        + np.arange(1, k + 1, dtype=np.uint64)[None, :] * _GOLDEN
    )
    priority[~keep] = np.iinfo(np.uint64).max
    drawn = np.argsort(priority, axis=1, kind="stable")[:, :num]
    chosen = np.take_along_axis(keep, drawn, axis=1)
    drawn = np.where(chosen, drawn, k)  # unfilled slots sort last
    drawn.sort(axis=1)  # rank order = hardest first
    return np.where(drawn == k, -1, drawn)


def row_seeds(seed: int, keys: list[str]) -> np.ndarray:
    """One 64-bit seed per row, from the run seed and a stable row key (the query id)."""
    out = np.empty(len(keys), dtype=np.uint64)
    prefix = f"{int(seed)}\x00".encode()
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(prefix + key.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit hash (Steele et al., SplitMix), vectorized."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x
