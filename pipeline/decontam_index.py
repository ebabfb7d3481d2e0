"""The test-set index: built once from the MTEB test texts, cached on disk, memory-mapped.

One folder per (test sets' identity + index options), named by the hash of both, written to
a temporary folder and renamed into place, so an interrupted build is never read. Contents:

- ``items.arrow``: one row per test text (task, subset, split, item id, field, normalized
  text), read back only to confirm a candidate and to name it in the report;
- ``exact_*``: the hash of every normalized test text;
- ``ngram_*``: every n-gram hash (n = ``ngram_n``) of texts with at least n words, plus a Bloom
  filter in front of it; ``short_*``: texts of ``min_ngram_words``..n-1 words, which count as
  one n-gram of their own length, keyed by the hash of their first ``min_ngram_words`` words;
- ``shingle_bloom``: every word-shingle of the test texts (a necessary condition for
  near-duplicates), and ``band_*``: the MinHash LSH bands of each text's shingle set.

Key arrays are sorted ``uint64`` (``.npy``, memory-mapped) with a parallel item array, keeping
for each key the first item of every task that has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from nvdata.decontam_testsets import (
    TestSetSpec,
    iter_test_texts,
    mirror_fingerprint,
    repo_location,
    resolve_test_sets,
)
from nvdata.decontam_text import (
    WindowHasher,
    band_keys,
    bloom_add,
    bloom_size,
    lsh_params,
    minhash_permutations,
    minhash_signatures,
    tokenize,
)
from nvdata.errors import NvdataError

if TYPE_CHECKING:
    from nvdata.decontam import DecontamConfig

log = logging.getLogger(__name__)

INDEX_VERSION = 2
ITEMS_PER_BATCH = 1 << 14  # items.arrow record batch size: item i is in batch i // ITEMS_PER_BATCH
_CHUNK = 20_000  # test texts hashed per step
ITEM_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("subset", pa.string()),
        ("split", pa.string()),
        ("item_id", pa.string()),
        ("field", pa.string()),
        ("norm", pa.string()),
    ]
)


def index_identity(cfg: DecontamConfig, specs: list[TestSetSpec], mirror: Path | None) -> dict:
    """What the index depends on: the test sets (and their mirror files) and the index options."""
    sets = []
    for spec in specs:
        local = repo_location(spec, mirror)
        entry = spec.to_dict()
        entry["source"] = "mirror" if local else "hub"
        if local:
            entry["fingerprint"] = mirror_fingerprint(local)
        sets.append(entry)
    return {"version": INDEX_VERSION, "options": cfg.index_options(), "test_sets": sets}


def build_test_index(cfg: DecontamConfig, *, mirror: Path | None, cache_dir: Path) -> TestIndex:
    """Load the index for ``cfg``'s test sets from ``cache_dir``, building it first if needed."""
    specs = resolve_test_sets(cfg)
    identity = index_identity(cfg, specs, Path(mirror) if mirror else None)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    out = Path(cache_dir) / "decontam" / f"index-{key[:24]}"
    if (out / "meta.json").is_file():
        return TestIndex.load(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        _IndexBuilder(cfg, tmp).build(specs, Path(mirror) if mirror else None, Path(cache_dir) / "datasets")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = json.loads((tmp / "meta.json").read_text())
    meta.update(key=key, identity=identity, build_seconds=round(time.perf_counter() - t0, 2))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same index first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("decontam: built test index %s (%d texts)", out, meta["n_items"])
    return TestIndex.load(out)


class _IndexBuilder:
    def __init__(self, cfg: DecontamConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = out
        self.hasher = WindowHasher()
        self.parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("exact_k", "exact_i", "ngram_k", "ngram_i", "short_k", "short_i", "shingles", "band_k", "band_i")
        }
        self.short_lengths: set[int] = set()
        self.seen: dict[int, set[int]] = {}  # per task: exact keys of the texts indexed
        self.item_task: list[np.ndarray] = []
        self.n_items = 0
        self.bands, self.rows = lsh_params(cfg.minhash_threshold, cfg.num_perm)
        self.perm = minhash_permutations(cfg.num_perm, cfg.minhash_seed)

    def build(self, specs: list[TestSetSpec], mirror: Path | None, hf_cache: Path) -> None:
        per_set: dict[str, dict] = {}
        with pa.OSFile(str(self.out / "items.arrow"), "wb") as sink, pa.ipc.new_file(sink, ITEM_SCHEMA) as writer:
            self._writer = writer
            self._pending: list[tuple] = []
            for code, spec in enumerate(specs):
                counts: dict[str, int] = {}
                chunk = []
                for t in iter_test_texts(spec, mirror, hf_cache):
                    chunk.append(t)
                    counts[t.split] = counts.get(t.split, 0) + 1
                    if len(chunk) >= _CHUNK:
                        self._add(chunk, code)
                        chunk = []
                if chunk:
                    self._add(chunk, code)
                if not counts:
                    raise NvdataError(f"decontam: test set {spec.task} ({spec.path}) has no text in {list(spec.splits)}")
                per_set[spec.task] = {
                    "texts": sum(counts.values()), "distinct_texts": len(self.seen.get(code, ())),
                    "splits": counts, "path": spec.path,
                }
            self._flush_items(final=True)
        self._finish(specs, per_set)

    def _add(self, chunk: list, task_code: int) -> None:
        cfg = self.cfg
        tb = tokenize([t.text for t in chunk])
        s = self.hasher.prefix(tb)
        idx, whole = self.hasher.whole(tb, s)  # texts with at least one word
        # A text already indexed for this task adds nothing (clustering sets repeat texts a lot).
        seen = self.seen.setdefault(task_code, set())
        fresh = []
        for j, key in enumerate(whole.tolist()):
            if key not in seen:
                seen.add(key)
                fresh.append(j)
        idx, whole = idx[fresh], whole[fresh]
        item_of = np.full(len(chunk), -1, np.int64)
        item_of[idx] = self.n_items + np.arange(len(idx))
        for i in idx.tolist():
            t = chunk[i]
            self._pending.append((t.task, t.subset, t.split, t.item_id, t.field, tb.normalized(i)))
        self._flush_items()
        self.item_task.append(np.full(len(idx), task_code, np.uint16))
        self.n_items += len(idx)

        def indexed(starts: np.ndarray) -> np.ndarray:
            """Which windows belong to the texts indexed here."""
            return item_of[tb.parent[starts]] >= 0

        lengths = tb.lengths
        self.parts["exact_k"].append(whole)
        self.parts["exact_i"].append(item_of[idx].astype(np.uint32))
        if "ngram" in cfg.methods:
            starts, keys = self.hasher.windows(tb, s, cfg.ngram_n)
            k = indexed(starts)
            self.parts["ngram_k"].append(keys[k])
            self.parts["ngram_i"].append(item_of[tb.parent[starts[k]]].astype(np.uint32))
            # Shorter texts are keyed by their first min_ngram_words words: one window size to
            # scan for all of them; the scanner confirms the rest of the text on the strings.
            short = idx[(lengths[idx] >= cfg.min_ngram_words) & (lengths[idx] < cfg.ngram_n)]
            self.parts["short_k"].append(self.hasher.at(s, tb.offsets[short], cfg.min_ngram_words))
            self.parts["short_i"].append(item_of[short].astype(np.uint32))
            self.short_lengths.update(int(x) for x in np.unique(lengths[short]))
        if "near_dup" in cfg.methods:
            starts, shingles = self.hasher.windows(tb, s, cfg.shingle_size)
            k = indexed(starts)
            starts, shingles = starts[k], shingles[k]
            if len(starts):
                owner = tb.parent[starts]
                first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
                sig = minhash_signatures(shingles, first, self.perm)
                self.parts["band_k"].append(band_keys(sig, self.bands, self.rows))
                self.parts["band_i"].append(item_of[owner[first]].astype(np.uint32))
                self.parts["shingles"].append(np.unique(shingles))

    def _flush_items(self, final: bool = False) -> None:
        while len(self._pending) >= ITEMS_PER_BATCH or (final and self._pending):
            rows, self._pending = self._pending[:ITEMS_PER_BATCH], self._pending[ITEMS_PER_BATCH:]
            cols = list(zip(*rows, strict=True))
            self._writer.write_batch(
                pa.record_batch([pa.array(c, pa.string()) for c in cols], schema=ITEM_SCHEMA)
            )

    def _cat(self, name: str, dtype) -> np.ndarray:
        parts = self.parts[name]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    def _save_table(self, name: str, item_task: np.ndarray) -> None:
        keys, items = self._cat(f"{name}_k", np.uint64), self._cat(f"{name}_i", np.uint32)
        self.parts[f"{name}_k"], self.parts[f"{name}_i"] = [], []
        keys, items = first_item_per_task(keys, items, item_task)
        np.save(self.out / f"{name}_keys.npy", keys)
        np.save(self.out / f"{name}_items.npy", items)
        if name in ("ngram", "short"):
            bits = np.zeros(bloom_size(len(keys)), np.uint8)
            bloom_add(bits, keys)
            np.save(self.out / f"{name}_bloom.npy", bits)

    def _finish(self, specs: list[TestSetSpec], per_set: dict) -> None:
        item_task = np.concatenate(self.item_task) if self.item_task else np.zeros(0, np.uint16)
        np.save(self.out / "item_task.npy", item_task)
        for name in ("exact", "ngram", "short"):
            self._save_table(name, item_task)
        shingles = np.unique(self._cat("shingles", np.uint64))
        bits = np.zeros(bloom_size(len(shingles)), np.uint8)
        bloom_add(bits, shingles)
        np.save(self.out / "shingle_bloom.npy", bits)
        bk = np.concatenate(self.parts["band_k"], axis=1) if self.parts["band_k"] else np.zeros((self.bands, 0), np.uint64)
        bi = self._cat("band_i", np.uint32)
        order = np.argsort(bk, axis=1, kind="stable")
        np.save(self.out / "band_keys.npy", np.take_along_axis(bk, order, axis=1))
        np.save(self.out / "band_items.npy", bi[order])
        meta = {
            "tasks": [s.task for s in specs],
            "test_sets": per_set,
            "n_items": int(self.n_items),
            "short_lengths": sorted(self.short_lengths),
            "lsh": {"bands": int(self.bands), "rows": int(self.rows)},
            "sizes": {
                "exact": int(np.load(self.out / "exact_keys.npy", mmap_mode="r").shape[0]),
                "ngram": int(np.load(self.out / "ngram_keys.npy", mmap_mode="r").shape[0]),
                "short": int(np.load(self.out / "short_keys.npy", mmap_mode="r").shape[0]),
                "shingles": int(len(shingles)),
                "minhash_texts": int(len(bi)),
            },
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1))


def first_item_per_task(keys: np.ndarray, items: np.ndarray, item_task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by key and keep, per key, the first item of each task that has it."""
    if len(keys) == 0:
        return keys, items
    order = np.argsort(keys, kind="stable")  # items were appended in increasing order
    keys, items = keys[order], items[order]
    del order
    task = item_task[items]
    new = np.r_[True, (keys[1:] != keys[:-1]) | (task[1:] != task[:-1])]
    return keys[new], items[new]


@dataclass
class TestItem:
    index: int
    task: str
    subset: str
    split: str
    item_id: str
    field: str
    norm: str


class TestIndex:
    """A built index, memory-mapped from its folder. ``decontam_match.find_matches`` reads it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())

        def arr(name: str) -> np.ndarray:
            return np.load(self.path / f"{name}.npy", mmap_mode="r")

        self.exact_keys, self.exact_items = arr("exact_keys"), arr("exact_items")
        self.ngram_keys, self.ngram_items, self.ngram_bloom = arr("ngram_keys"), arr("ngram_items"), arr("ngram_bloom")
        self.short_keys, self.short_items, self.short_bloom = arr("short_keys"), arr("short_items"), arr("short_bloom")
        self.shingle_bloom = arr("shingle_bloom")
        self.band_keys, self.band_items = arr("band_keys"), arr("band_items")
        self.item_task = arr("item_task")
        self.bands, self.rows = self.meta["lsh"]["bands"], self.meta["lsh"]["rows"]
        self.tasks: list[str] = self.meta["tasks"]
        self._items = pa.ipc.open_file(pa.memory_map(str(self.path / "items.arrow")))
        self._batch_cache: dict[int, pa.RecordBatch] = {}

    @classmethod
    def load(cls, path: Path) -> TestIndex:
        return cls(path)

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def options(self) -> dict:
        return self.meta["identity"]["options"]

    def __len__(self) -> int:
        return int(self.meta["n_items"])

    def item(self, i: int) -> TestItem:
        b, r = divmod(int(i), ITEMS_PER_BATCH)
        batch = self._batch_cache.get(b)
        if batch is None:
            if len(self._batch_cache) > 64:
                self._batch_cache.clear()
            batch = self._batch_cache[b] = self._items.get_batch(b)
        row = {name: batch.column(name)[r].as_py() for name in ITEM_SCHEMA.names}
        return TestItem(index=int(i), **row)

    def summary(self) -> dict:
        """The part of the index the report shows: key, options, test sets and their sizes."""
        return {
            "key": self.key,
            "path": str(self.path),
            "options": self.options,
            "n_texts": len(self),
            "sizes": self.meta["sizes"],
            "lsh": self.meta["lsh"],
            "test_sets": {
                s["task"]: {
                    "path": s["path"], "revision": s["revision"], "subsets": s["subsets"],
                    "splits": s["splits"], "source": s["source"], "parent": s["parent"],
                    "texts": self.meta["test_sets"].get(s["task"], {}).get("texts", 0),
                    "texts_per_split": self.meta["test_sets"].get(s["task"], {}).get("splits", {}),
                }
                for s in self.meta["identity"]["test_sets"]
            },
        }
