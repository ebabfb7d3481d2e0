"""Label- and example-based negatives for classification and clustering rows.

NV-Embed (arXiv 2405.17428, section 4.2 and 5.2.4) turns a labelled example into a contrastive
row in one of two ways:

* label-based (NV-Embed v1): q+ = the text, d+ = its label, d- = other labels of the dataset;
* example-based (NV-Embed v2): d+ = another example of the same class, d- = examples of other
  classes ("random sampling to get a broad coverage across labels and examples").

This module holds the sampling, as small pure functions over numpy arrays: every function takes
a ``numpy.random.Generator`` (see :func:`rng_for`) and returns row or label indices, ``-1``
where nothing could be drawn. The formatter (``nvdata.instruct``) turns indices into texts.

Rows may carry several labels (arXiv categories), so a row's labels are held in CSR form
(:class:`LabelSets`); a negative is never one of the row's own labels, nor (example-based) an
example sharing any label with the row.

>>> sets = build_label_sets([["joy"], ["anger"], ["joy"], ["fear"]])
>>> sets.names
('anger', 'fear', 'joy')
>>> neg = sample_other_labels(sets, 1, rng_for(42, "emotion"))
>>> bool((neg[:, 0] != sets.values).all())  # never the row's own label
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nvdata.errors import NvdataError

# Rows per chunk when a (rows x labels) matrix of random keys is drawn; bounds memory to
# CHUNK_ROWS * num_labels floats whatever the dataset size.
CHUNK_ROWS = 65_536


def rng_for(seed: int, source: str) -> np.random.Generator:
    """The generator for one source: a function of (seed, source name) only.

    Each source gets its own stream, so adding or removing a source from a recipe does not
    change the negatives of the others.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NvdataError(f"seed must be a non-negative integer, got {seed!r}")
    name_key = int.from_bytes(hashlib.blake2b(source.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), name_key]))


@dataclass(frozen=True)
class LabelSets:
    """Each row's labels as indices into a sorted vocabulary (CSR: ``offsets``, ``values``).

    Row ``i`` has labels ``values[offsets[i]:offsets[i+1]]`` (distinct, in first-seen order).
    """

    names: tuple[str, ...]
    offsets: np.ndarray  # int64, num_rows + 1
    values: np.ndarray  # int64, label indices

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_of_values(self) -> np.ndarray:
        """The row each entry of ``values`` belongs to."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), self.counts)


def build_label_sets(per_row: Sequence[Sequence[str]]) -> LabelSets:
    """Index each row's labels against the sorted vocabulary of all labels.

    The vocabulary is sorted, so indices (and therefore the seeded draws) do not depend on
    row order. Duplicate labels within a row are kept once.
    """
    names = tuple(sorted({lab for labels in per_row for lab in labels}))
    index = {name: i for i, name in enumerate(names)}
    offsets = np.zeros(len(per_row) + 1, dtype=np.int64)
    values: list[int] = []
    for i, labels in enumerate(per_row):
        seen: set[int] = set()
        for lab in labels:
            j = index[lab]
            if j not in seen:
                seen.add(j)
                values.append(j)
        offsets[i + 1] = len(values)
    return LabelSets(names, offsets, np.asarray(values, dtype=np.int64))


def label_bits(sets: LabelSets) -> np.ndarray:
    """Each row's label set as a bitset (``uint64``, rows x ceil(labels / 64)).

    Two rows share a label iff ``(bits[a] & bits[b]).any()``; this keeps overlap tests vectorized.
    """
    words = max(1, -(-sets.num_labels // 64))
    bits = np.zeros((sets.num_rows, words), dtype=np.uint64)
    rows = sets.row_of_values()
    word = sets.values // 64
    mask = np.left_shift(np.uint64(1), (sets.values % 64).astype(np.uint64))
    np.bitwise_or.at(bits, (rows, word), mask)
    return bits


def share_a_label(bits: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether rows ``a[i]`` and ``b[i]`` have a label in common."""
    return (bits[a] & bits[b]).any(axis=1)


def sample_member(sets: LabelSets, rng: np.random.Generator) -> np.ndarray:
    """One of each row's own labels, uniformly (``-1`` for a row without labels)."""
    counts = sets.counts
    u = rng.random(sets.num_rows)
    pick = np.minimum((u * counts).astype(np.int64), np.maximum(counts - 1, 0))
    out = np.full(sets.num_rows, -1, dtype=np.int64)
    has = counts > 0
    out[has] = sets.values[sets.offsets[:-1][has] + pick[has]]
    return out


def sample_other_labels(
    sets: LabelSets, k: int, rng: np.random.Generator, *, chunk_rows: int = CHUNK_ROWS
) -> np.ndarray:
    """``k`` distinct labels per row, none of them the row's own, uniformly at random.

    Returns ``(num_rows, k)`` label indices; where fewer than ``k`` labels are left (a dataset
    with one label leaves none), the missing slots are ``-1``.
    """
    if k < 1:
        raise NvdataError(f"number of negatives must be >= 1, got {k}")
    n, num_labels = sets.num_rows, sets.num_labels
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or num_labels == 0:
        return out
    take = min(k, num_labels)
    rows_of = sets.row_of_values()
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        # Random keys per (row, label); own labels get a key above every draw, then the k
        # smallest keys are a uniform k-subset of the remaining labels.
        keys = rng.random((stop - start, num_labels))
        lo, hi = sets.offsets[start], sets.offsets[stop]
        keys[rows_of[lo:hi] - start, sets.values[lo:hi]] = 2.0
        if take < num_labels:
            part = np.argpartition(keys, take - 1, axis=1)[:, :take]
        else:
            part = np.broadcast_to(np.arange(num_labels), keys.shape).copy()
        part_keys = np.take_along_axis(keys, part, axis=1)
        order = np.argsort(part_keys, axis=1, kind="stable")
        chosen = np.take_along_axis(part, order, axis=1)
        chosen_keys = np.take_along_axis(part_keys, order, axis=1)
        chosen[chosen_keys > 1.0] = -1
        out[start:stop, :take] = chosen
    return out


@dataclass(frozen=True)
class ClassPools:
    """The rows of each label, ascending (CSR over labels: ``offsets``, ``rows``)."""

    offsets: np.ndarray  # int64, num_labels + 1
    rows: np.ndarray  # int64
    num_rows: int

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def class_pools(sets: LabelSets) -> ClassPools:
    rows = sets.row_of_values()
    order = np.lexsort((rows, sets.values))
    sizes = np.bincount(sets.values, minlength=sets.num_labels)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return ClassPools(offsets, rows[order], sets.num_rows)


def sample_example_of(
    labels: np.ndarray,
    pools: ClassPools,
    rng: np.random.Generator,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """A random row carrying ``labels[i]``, other than ``exclude[i]``; ``-1`` when none is left.

    ``-1`` in ``labels`` yields ``-1``. With ``exclude`` = the row itself, this draws "another
    example of the same class"; a class whose only example is the row gives ``-1``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(labels), -1, dtype=np.int64)
    valid = labels >= 0
    lab = np.where(valid, labels, 0)
    start = pools.offsets[lab]
    size = pools.offsets[lab + 1] - start
    u = rng.random(len(labels))
    if exclude is None:
        avail = size
        r = np.minimum((u * avail).astype(np.int64), np.maximum(avail - 1, 0))
    else:
        exclude = np.asarray(exclude, dtype=np.int64)
        # Position of `exclude` within its class segment (rows are ascending per segment).
        composite = lab * (pools.num_rows + 1) + exclude
        pool_keys = np.repeat(np.arange(len(pools.offsets) - 1, dtype=np.int64), pools.sizes())
        pool_keys = pool_keys * (pools.num_rows + 1) + pools.rows
        pos = np.searchsorted(pool_keys, composite) - start
        inside = (pos < size) & (pool_keys[np.minimum(start + pos, len(pool_keys) - 1)] == composite)
        inside &= size > 0
        avail = size - inside
        r = np.minimum((u * avail).astype(np.int64), np.maximum(avail - 1, 0))
        r = r + (inside & (r >= pos))
    ok = valid & (avail > 0)
    out[ok] = pools.rows[start[ok] + r[ok]]
    return out


def sample_example_negatives(
    sets: LabelSets,
    pools: ClassPools,
    k: int,
    rng: np.random.Generator,
    *,
    bits: np.ndarray | None = None,
    max_tries: int = 8,
) -> np.ndarray:
    """``k`` example rows per row, each from a different class the row does not belong to.

    Classes are drawn first (uniform over the row's non-classes, so rare classes are covered
    as often as common ones), then an example of each. With several labels per row, an
    example may also belong to one of the row's own classes; such draws are redrawn up to
    ``max_tries`` times and otherwise left ``-1``.
    """
    if bits is None:
        bits = label_bits(sets)
    neg_labels = sample_other_labels(sets, k, rng)
    out = np.full(neg_labels.shape, -1, dtype=np.int64)
    query_rows, slots = np.nonzero(neg_labels >= 0)
    pending = np.arange(len(query_rows))
    for _ in range(max_tries):
        if len(pending) == 0:
            break
        cand = sample_example_of(neg_labels[query_rows[pending], slots[pending]], pools, rng)
        ok = cand >= 0
        ok[ok] = ~share_a_label(bits, query_rows[pending][ok], cand[ok])
        out[query_rows[pending][ok], slots[pending][ok]] = cand[ok]
        pending = pending[~ok]
    return out


def compact_negatives(idx: np.ndarray) -> list[list[int]]:
    """Per row, the drawn indices in slot order with the ``-1`` gaps removed."""
    return [[int(v) for v in row if v >= 0] for row in idx]
