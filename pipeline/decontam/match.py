"""Match a batch of training texts against the test-set index: exact, n-gram, near-duplicate.

Each method runs on its own and reports on its own, so the report can say which method
caught what. Hash lookups only nominate candidates; a match is reported after it is
confirmed on the normalized strings (exact: equal; n-gram: the window occurs, whole-word, in
the test text; near-duplicate: the true Jaccard of the word-shingle sets reaches the
threshold). Per training text, method and test task, the first confirmed test item is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nvdata.decontam.index import TestIndex
from nvdata.decontam.text import (
    TokenBatch,
    WindowHasher,
    band_keys,
    bloom_test,
    jaccard,
    key_range,
    lookup,
    minhash_permutations,
    minhash_signatures,
    shingle_set,
    tokenize,
)
from nvdata.errors import NvdataError

if TYPE_CHECKING:
    from nvdata.decontam import DecontamConfig

METHODS = ("exact", "ngram", "near_dup")
_MAX_LSH_CANDIDATES = 64  # per training text, best-ranked first: confirming more is wasted work
_CHUNK_BYTES = 4 << 20  # text bytes tokenized at once: bounds the per-token arrays (~10 x 8 B/token)


@dataclass
class Match:
    text: int  # index of the training text in the batch
    method: str
    item: int  # test item index
    evidence: dict = field(default_factory=dict)


class Matcher:
    """Holds what is reused across batches (power tables, MinHash permutations)."""

    def __init__(self, index: TestIndex, cfg: DecontamConfig, max_chunk_bytes: int = _CHUNK_BYTES) -> None:
        self.index = index
        self.cfg = cfg
        self.methods = tuple(m for m in METHODS if m in cfg.methods)
        self.hasher = WindowHasher()
        self.perm = minhash_permutations(cfg.num_perm, cfg.minhash_seed) if "near_dup" in self.methods else None
        self.max_chunk_bytes = max_chunk_bytes
        built = index.options
        for key in ("ngram_n", "min_ngram_words", "shingle_size", "num_perm", "minhash_seed", "minhash_threshold"):
            if built.get(key) != getattr(cfg, key):
                raise NvdataError(f"decontam: index {index.path} was built with {key}={built.get(key)}, the config has {getattr(cfg, key)}")
        missing = [m for m in self.methods if m not in built.get("methods", METHODS)]
        if missing:
            raise NvdataError(f"decontam: index {index.path} was built without method(s) {missing}")

    def find_texts(self, texts: pa.Array) -> list[Match]:
        """Matches of a string array, tokenized in chunks of at most ``max_chunk_bytes`` of text
        (or one text) so the per-token arrays stay small whatever the batch holds."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        sizes = pc.fill_null(pc.binary_length(texts), 0).to_numpy(zero_copy_only=False)
        cum = np.cumsum(sizes, dtype=np.int64)
        out: list[Match] = []
        lo = 0
        while lo < len(texts):
            before = int(cum[lo - 1]) if lo else 0
            hi = max(lo + 1, int(np.searchsorted(cum, before + self.max_chunk_bytes, side="right")))
            for m in self.find(tokenize(texts.slice(lo, hi - lo))):
                m.text += lo
                out.append(m)
            lo = hi
        return out

    def find(self, tb: TokenBatch) -> list[Match]:
        if len(tb.hashes) == 0:
            return []
        s = self.hasher.prefix(tb)
        out: list[Match] = []
        if "exact" in self.methods:
            out += self._exact(tb, s)
        if "ngram" in self.methods:
            out += self._ngram(tb, s)
        if "near_dup" in self.methods:
            out += self._near_dup(tb, s)
        return out

    # -- exact ------------------------------------------------------------------------------
    def _exact(self, tb: TokenBatch, s: np.ndarray) -> list[Match]:
        ix = self.index
        texts, keys = self.hasher.whole(tb, s)
        found, _ = lookup(keys, ix.exact_keys)
        out = []
        for j in np.flatnonzero(found):
            norm = tb.normalized(int(texts[j]))
            for p in key_range(ix.exact_keys, keys[j]):
                item = ix.item(int(ix.exact_items[p]))
                if item.norm == norm:
                    out.append(Match(int(texts[j]), "exact", item.index, {"text": _clip(norm)}))
        return out

    # -- n-gram -----------------------------------------------------------------------------
    def _ngram(self, tb: TokenBatch, s: np.ndarray) -> list[Match]:
        ix, n = self.index, self.cfg.ngram_n
        out: list[Match] = []
        done: set[tuple[int, str]] = set()  # (training text, task) already matched
        # Texts of n+ words: any shared n-gram. Bloom first: most windows stop there.
        starts, keys = self.hasher.windows(tb, s, n)
        maybe = np.flatnonzero(bloom_test(ix.ngram_bloom, keys)) if len(keys) else np.zeros(0, np.int64)
        found, _ = lookup(keys[maybe], ix.ngram_keys)
        self._confirm(tb, starts[maybe[found]], keys[maybe[found]], n, ix.ngram_keys, ix.ngram_items, out, done)
        # Test texts of min_ngram_words..n-1 words count as one n-gram of their own length;
        # they are keyed by their first min_ngram_words words, the rest is checked on strings.
        if len(ix.short_keys):
            starts, keys = self.hasher.windows(tb, s, self.cfg.min_ngram_words)
            maybe = np.flatnonzero(bloom_test(ix.short_bloom, keys)) if len(keys) else np.zeros(0, np.int64)
            found, _ = lookup(keys[maybe], ix.short_keys)
            self._confirm(tb, starts[maybe[found]], keys[maybe[found]], None, ix.short_keys, ix.short_items, out, done)
        return out

    def _confirm(self, tb, starts, keys, length, table_keys, table_items, out, done) -> None:
        """``length`` None: the candidate is a whole short test text starting at ``start``."""
        ix = self.index
        parent = tb.parent
        for start, key in zip(starts.tolist(), keys, strict=True):
            text = int(parent[start])
            for p in key_range(table_keys, key):
                item_idx = int(table_items[p])
                task = ix.tasks[int(ix.item_task[item_idx])]
                if (text, task) in done:
                    continue
                item = ix.item(item_idx)
                n = length or item.norm.count(" ") + 1
                if start + n > tb.offsets[text + 1]:
                    continue
                window = " ".join(tb.flat_tokens(start, start + n))
                if (f" {window} " in f" {item.norm} ") if length else window == item.norm:
                    done.add((text, task))
                    out.append(Match(text, "ngram", item_idx, {"ngram": _clip(window), "n": n}))

    # -- near-duplicate ---------------------------------------------------------------------
    def _near_dup(self, tb: TokenBatch, s: np.ndarray) -> list[Match]:
        ix, cfg = self.index, self.cfg
        k, threshold = cfg.shingle_size, cfg.minhash_threshold
        starts, shingles = self.hasher.windows(tb, s, k)
        if len(starts) == 0 or ix.band_items.shape[1] == 0:
            return []
        owner = tb.parent[starts]
        # Necessary condition: J(A, B) >= t needs |A & B| >= t|A|, so at least a fraction t of
        # the text's distinct shingles must occur somewhere in the test sets. The Bloom filter
        # can only over-count, so no near-duplicate is lost here.
        in_test = bloom_test(ix.shingle_bloom, shingles).astype(np.uint64)
        packed = np.sort((owner.astype(np.uint64) << np.uint64(40)) | ((shingles >> np.uint64(25)) << np.uint64(1)) | in_test)
        packed = packed[np.r_[True, packed[1:] != packed[:-1]]]  # distinct shingles per text
        texts = (packed >> np.uint64(40)).astype(np.int64)
        total = np.bincount(texts, minlength=len(tb))
        hit = np.bincount(texts, weights=(packed & np.uint64(1)).astype(np.float64), minlength=len(tb))
        candidates = np.flatnonzero((total > 0) & (hit >= threshold * total - 1e-9))
        if len(candidates) == 0:
            return []
        sel = np.isin(owner, candidates)
        c_owner, c_shingles = owner[sel], shingles[sel]
        first = np.flatnonzero(np.r_[True, c_owner[1:] != c_owner[:-1]])
        sigs = minhash_signatures(c_shingles, first, self.perm)
        bkeys = band_keys(sigs, ix.bands, ix.rows)
        out = []
        for j, text in enumerate(c_owner[first].tolist()):
            items = _band_candidates(ix, bkeys[:, j])
            if not items:
                continue
            mine = shingle_set(tb.tokens(text), k)
            best: dict[str, tuple[float, int]] = {}
            for item_idx in items:
                task = ix.tasks[int(ix.item_task[item_idx])]
                jac = jaccard(mine, shingle_set(ix.item(item_idx).norm.split(), k))
                if jac >= threshold and jac > best.get(task, (-1.0, 0))[0]:
                    best[task] = (jac, item_idx)
            for jac, item_idx in best.values():
                out.append(Match(text, "near_dup", item_idx, {"jaccard": round(jac, 4), "shingle_size": k}))
        return out


def _band_candidates(ix: TestIndex, keys: np.ndarray) -> list[int]:
    """The test items sharing a band with one text, most shared bands first (then by item), at
    most ``_MAX_LSH_CANDIDATES``. A band key can hold many items (templated test texts); a
    true near-duplicate shares most bands, so ranking by shared bands keeps it in the list
    however many weaker candidates a common band brings."""
    found = []
    for b in range(ix.bands):
        r = key_range(ix.band_keys[b], keys[b])
        if len(r):
            found.append(np.asarray(ix.band_items[b][r.start : r.stop]))
    if not found:
        return []
    items, shared = np.unique(np.concatenate(found), return_counts=True)
    order = np.lexsort((items, -shared))[:_MAX_LSH_CANDIDATES]
    return items[order].tolist()


def _clip(s: str, n: int = 300) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
