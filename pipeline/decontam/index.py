"""The test-set index: built once from the MTEB test texts, cached on disk, memory-mapped.

One folder per (test sets' identity + index options), named by the hash of both, written to
a temporary folder and renamed into place, so an interrupted build is never read. Contents:

- ``items.arrow``: one row per test text (task, subset, split, item id, field, normalized
  text, the text as published), read back only to confirm a candidate and to show it in the
  report beside the training text it matched;
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from nvdata.decontam.testsets import (
    TestSetSpec,
    iter_test_texts,
    mirror_fingerprint,
    repo_location,
    resolve_test_sets,
)
from nvdata.decontam.text import (
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

INDEX_VERSION = 3  # 3: items.arrow keeps the published test text (for the report)
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
        ("text", pa.string()),
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
        # Keys go to disk as they are made, split by their top bits (see _BucketSpill); the
        # MinHash bands (a few per text, not per word) stay in memory.
        self.spills = {name: _BucketSpill(out / "spill", name) for name in ("exact", "ngram", "short", "shingles")}
        self.parts: dict[str, list[np.ndarray]] = {"band_k": [], "band_i": []}
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
            self._pending.append((t.task, t.subset, t.split, t.item_id, t.field, tb.normalized(i), t.text))
        self._flush_items()
        self.item_task.append(np.full(len(idx), task_code, np.uint16))
        self.n_items += len(idx)

        def indexed(starts: np.ndarray) -> np.ndarray:
            """Which windows belong to the texts indexed here."""
            return item_of[tb.parent[starts]] >= 0

        lengths = tb.lengths
        self.spills["exact"].add(whole, item_of[idx].astype(np.uint32))
        if "ngram" in cfg.methods:
            starts, keys = self.hasher.windows(tb, s, cfg.ngram_n)
            k = indexed(starts)
            self.spills["ngram"].add(keys[k], item_of[tb.parent[starts[k]]].astype(np.uint32))
            # Shorter texts are keyed by their first min_ngram_words words: one window size to
            # scan for all of them; the scanner confirms the rest of the text on the strings.
            short = idx[(lengths[idx] >= cfg.min_ngram_words) & (lengths[idx] < cfg.ngram_n)]
            self.spills["short"].add(self.hasher.at(s, tb.offsets[short], cfg.min_ngram_words),
                                     item_of[short].astype(np.uint32))
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
                self.spills["shingles"].add(np.unique(shingles))

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

    def _finish(self, specs: list[TestSetSpec], per_set: dict) -> None:
        item_task = np.concatenate(self.item_task) if self.item_task else np.zeros(0, np.uint16)
        np.save(self.out / "item_task.npy", item_task)
        sizes = {}
        for name in ("exact", "ngram", "short"):
            sizes[name] = write_table(self.spills[name], item_task, self.out, name, bloom=name != "exact")
        sizes["shingles"] = write_key_bloom(self.spills["shingles"], self.out / "shingle_bloom.npy")
        shutil.rmtree(self.out / "spill", ignore_errors=True)
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
            "sizes": {**sizes, "minhash_texts": int(len(bi))},
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1))


class _BucketSpill:
    """Keys (and their items) appended to disk as they are made, split by the key's top bits.

    The buckets cut the key space into ordered ranges, so each can be sorted on its own and
    the sorted buckets laid end to end are sorted: the finished tables are built one bucket at
    a time, and the build holds one bucket in memory, not every n-gram of the test sets.
    Within a bucket, pairs keep the order they were added in (items increase).
    """

    BITS = 6  # 64 buckets

    def __init__(self, root: Path, name: str) -> None:
        self.dir = Path(root) / name
        self.dir.mkdir(parents=True, exist_ok=True)

    def _file(self, bucket: int, kind: str) -> Path:
        return self.dir / f"{bucket:02d}.{kind}"

    def add(self, keys: np.ndarray, items: np.ndarray | None = None) -> None:
        if not len(keys):
            return
        keys = np.asarray(keys, np.uint64)
        bucket = (keys >> np.uint64(64 - self.BITS)).astype(np.intp)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange((1 << self.BITS) + 1))
        keys = keys[order]
        items = None if items is None else np.asarray(items, np.uint32)[order]
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            lo, hi = bounds[b], bounds[b + 1]
            with open(self._file(b, "keys"), "ab") as f:
                keys[lo:hi].tofile(f)
            if items is not None:
                with open(self._file(b, "items"), "ab") as f:
                    items[lo:hi].tofile(f)

    def buckets(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Each non-empty bucket's ``(keys, items)``, in key order of the buckets."""
        for b in range(1 << self.BITS):
            path = self._file(b, "keys")
            if path.exists():
                items = self._file(b, "items")
                yield np.fromfile(path, np.uint64), (np.fromfile(items, np.uint32) if items.exists() else None)


def _npy_from_raw(raw: Path, dest: Path, dtype, n: int) -> None:
    """Wrap a raw little-endian array file in an ``.npy`` header, streaming (no copy in memory)."""
    with open(dest, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
        )
        shutil.copyfileobj(src, out, 1 << 24)
    raw.unlink()


def _bloom_of(keys_npy: Path, n: int, dest: Path) -> None:
    bits = np.zeros(bloom_size(n), np.uint8)
    keys = np.load(keys_npy, mmap_mode="r")
    for start in range(0, n, 1 << 22):
        bloom_add(bits, np.asarray(keys[start : start + (1 << 22)]))
    np.save(dest, bits)


def write_table(spill: _BucketSpill, item_task: np.ndarray, out: Path, name: str, *, bloom: bool) -> int:
    """``{name}_keys.npy`` / ``{name}_items.npy`` (sorted, first item per task) and the Bloom
    filter over the keys, from a spill, one bucket at a time. Returns the number of keys."""
    n = 0
    with open(out / f"{name}_keys.raw", "wb") as fk, open(out / f"{name}_items.raw", "wb") as fi:
        for keys, items in spill.buckets():
            keys, items = first_item_per_task(keys, items, item_task)
            keys.tofile(fk)
            items.tofile(fi)
            n += len(keys)
    _npy_from_raw(out / f"{name}_keys.raw", out / f"{name}_keys.npy", np.uint64, n)
    _npy_from_raw(out / f"{name}_items.raw", out / f"{name}_items.npy", np.uint32, n)
    if bloom:
        _bloom_of(out / f"{name}_keys.npy", n, out / f"{name}_bloom.npy")
    return n


def write_key_bloom(spill: _BucketSpill, dest: Path) -> int:
    """A Bloom filter of the spill's distinct keys (shingles: only membership is ever asked)."""
    raw = dest.with_suffix(".keys.raw")
    n = 0
    with open(raw, "wb") as f:
        for keys, _ in spill.buckets():
            keys = np.unique(keys)
            keys.tofile(f)
            n += len(keys)
    npy = dest.with_suffix(".keys.npy")
    _npy_from_raw(raw, npy, np.uint64, n)
    _bloom_of(npy, n, dest)
    npy.unlink()
    return n


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
    text: str  # as published in the test set


class TestIndex:
    """A built index, memory-mapped from its folder. ``match.find_matches`` reads it."""

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
