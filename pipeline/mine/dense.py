"""Dense hard-negative mining for retrieval rows (NV-Embed section 4.2, NV-Retriever).

One source at a time: embed its queries and its candidate pool (the corpus table), search the
top-k nearest documents of every query exactly, drop the candidates that must not be negatives
and pick ``num_negatives`` of the rest. The three parts live apart:

* search:     :mod:`nvdata.mine.encode` (encoder, embedding cache) and
              :mod:`nvdata.mine.search` (faiss / torch exact top-k over corpus chunks; every
              score then recomputed exactly, so shards never depend on the thread count);
* grouping:   :mod:`nvdata.mine.keysort` (queries numbered and key tables sorted out of core);
* filters:    :mod:`nvdata.mine.filters`, each rule a pure function over the candidate arrays;
* selection:  :mod:`nvdata.mine.selection` (top or seeded random).

This module only wires them together and counts what each step did, in four phases over a
work folder (:func:`group_queries`, :func:`prepare`, :func:`search_block` per block of
queries, :func:`finish`), plain functions that do not know where they run:
:func:`mine_dense_files` runs them in one process, the Ray engine the blocks on an actor pool.

What is never a negative of a row: any positive of its query (all rows whose query text is the
same by :func:`nvdata.text.normalize_text`, whatever their ``query_id``: :func:`query_group_key`;
by document id and by normalized-text hash, so an exact or trivially different
copy of a positive elsewhere in the corpus is caught too), the query's own text or document,
and a second copy of a text already among the candidates. Then the positive-aware filter of
NV-Retriever (TopK-PercPos, arXiv 2407.15831) drops likely false negatives: a candidate scoring
above ``p - |p| * relative_margin``, ``p`` the query's lowest positive score (95% of it with the
default 0.05). A row that ends up with fewer negatives than asked keeps what it has or is
dropped (``on_shortfall``); it is never padded with random documents.

Example::

    >>> cfg = DenseConfig.from_dict({"num_negatives": 4}, "recipe.mining.dense")
    >>> mined, report = mine_dense_negatives(
    ...     rows, corpus, cfg, encoder=None, device="cpu", cache_dir=Path("cache"), seed=0)
    >>> mined.column("negatives")[0]          # 4 texts, hardest first
    >>> report["removed"]["relative_margin"]  # candidates dropped as likely false negatives
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import schema
from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.mine import filters, keysort
from nvdata.mine import stats as score_stats
from nvdata.mine.encode import EmbeddingCache, Encoder, default_num_workers, load_encoder, DTYPES
from nvdata.mine.search import BACKENDS, RESCORE_SLACK, exact_scores, make_searcher, rescore
from nvdata.mine.selection import row_seeds, select_random, select_top
from nvdata.stages.io import (
    BATCH_ROWS,
    RELEASE_EVERY,
    exact_batches,
    iter_batches,
    num_rows,
    release_memory,
    take_chunked,
)
from nvdata.text import text_hash

SAMPLING = ("top", "random")
ON_SHORTFALL = ("keep", "drop")
QUERY_PROMPTS = ("model", "instruction", "none")
DOCUMENT_PROMPTS = ("model", "none")
# Extra neighbours fetched per query so that excluding its positives (and its own text) still
# leaves top_k candidates; capped so one query with hundreds of positives does not widen the
# search for all of them.
_MAX_POSITIVE_SLACK = 64
_HASH_BATCH = 8192  # candidate texts hashed at a time (bounds their Python strings)
_QUERY_BLOCK = 16384  # queries searched and filtered at a time (bounds the candidate working set)
FILTER_ORDER = (
    "positive_id",
    "query_id",
    "positive_text",
    "query_text",
    "duplicate_candidate",
    "rank_window",
    "relative_margin",
    "absolute_margin",
    "max_score",
    "min_score",
)


class _OptionError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message


@dataclass(frozen=True)
class DenseConfig:
    """Options of the dense miner (recipe section ``mining.dense``).

    num_negatives      negatives per row (7, the hard negatives per query of NV-Embed's recipe).
    top_k              nearest candidates considered per query, after positives are removed.
    range_min/max      rank window over those candidates: skip the ``range_min`` most similar,
                       stop at ``range_max`` (None: ``top_k``).
    relative_margin    TopK-PercPos: drop candidates above ``p - |p| * m`` (None: off).
    absolute_margin    TopK-MarginPos: drop candidates above ``p - m`` (None: off).
    max_score          drop candidates above this score (None: off).
    min_score          drop candidates below this score (None: off).
    sampling           ``top`` (hardest first) or ``random`` (seeded, among the kept).
    on_shortfall       ``keep`` a row with fewer negatives than asked, or ``drop`` it.
    backend            ``auto`` | ``faiss`` | ``torch`` (see :mod:`nvdata.mine.search`).
    batch_size         texts per encoder forward pass.
    query_prompt       ``model``: the encoder's own "query" prompt, if it has one;
                       ``instruction``: the row's instruction in NV-Embed's template
                       ("Instruct: ...\\nQuery: "), for instruction-tuned encoders;
                       ``none``: the bare query.
    document_prompt    ``model`` (the encoder's "document" prompt, if any) or ``none``.
    dtype              encoder precision: ``auto`` (bf16 on CUDA, fp32 on CPU) or explicit.
    max_seq_length     token limit of the encoder (None: the model's own).
    chunk_size         corpus texts per encode / cache file / search step.
    search_batch_size  queries per matmul block of the search.
    num_workers        tokenizer threads (None: 0 on CPU, several on CUDA).
    """

    num_negatives: int = 7
    top_k: int = 100
    range_min: int = 0
    range_max: int | None = None
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    on_shortfall: str = "keep"
    backend: str = "auto"
    batch_size: int = 128
    query_prompt: str = "model"
    document_prompt: str = "model"
    dtype: str = "auto"
    max_seq_length: int | None = None
    chunk_size: int = 65536
    search_batch_size: int = 8192
    num_workers: int | None = None

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _OptionError as err:
            raise NvdataError(f"dense.{err.key}: {err.message}") from None

    @classmethod
    def from_dict(cls, d: dict | None, where: str) -> "DenseConfig":
        """Build from a recipe mapping; unknown keys and bad values raise naming ``where.key``."""
        d = dict(d or {})
        reject_unknown_keys(d, (f.name for f in dataclasses.fields(cls)), where)
        try:
            cfg = object.__new__(cls)
            for f in dataclasses.fields(cls):
                object.__setattr__(cfg, f.name, d.get(f.name, f.default))
            cfg._validate()
        except _OptionError as err:
            raise NvdataError(f"{where}.{err.key}: {err.message}") from None
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _validate(self) -> None:
        ints = {
            "num_negatives": 1,
            "top_k": 1,
            "range_min": 0,
            "batch_size": 1,
            "chunk_size": 1,
            "search_batch_size": 1,
        }
        for key, low in ints.items():
            _check_int(key, getattr(self, key), low)
        for key, low in {"range_max": 1, "max_seq_length": 1, "num_workers": 0}.items():
            if getattr(self, key) is not None:
                _check_int(key, getattr(self, key), low)
        for key in ("relative_margin", "absolute_margin", "max_score", "min_score"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)):
                raise _OptionError(key, f"must be a finite number or null, got {value!r}")
        if self.relative_margin is not None and self.relative_margin < 0:
            raise _OptionError("relative_margin", f"must be >= 0, got {self.relative_margin}")
        for key, allowed in (
            ("sampling", SAMPLING),
            ("on_shortfall", ON_SHORTFALL),
            ("backend", BACKENDS),
            ("query_prompt", QUERY_PROMPTS),
            ("document_prompt", DOCUMENT_PROMPTS),
            ("dtype", DTYPES),
        ):
            if getattr(self, key) not in allowed:
                raise _OptionError(key, f"{getattr(self, key)!r} is not one of {', '.join(allowed)}")
        window_end = self.range_max if self.range_max is not None else self.top_k
        if self.range_max is not None and self.range_max > self.top_k:
            raise _OptionError("range_max", f"{self.range_max} exceeds top_k={self.top_k}")
        if self.range_min >= window_end:
            raise _OptionError("range_min", f"{self.range_min} leaves no candidates (window ends at {window_end})")
        if self.num_negatives > window_end - self.range_min:
            raise _OptionError(
                "num_negatives",
                f"{self.num_negatives} negatives cannot come from the {window_end - self.range_min} "
                f"ranks [{self.range_min}, {window_end})",
            )
        if (
            self.max_score is not None
            and self.min_score is not None
            and self.min_score > self.max_score
        ):
            raise _OptionError("min_score", f"{self.min_score} is above max_score={self.max_score}")


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _OptionError(key, f"must be an integer, got {value!r}")
    if value < low:
        raise _OptionError(key, f"must be >= {low}, got {value}")


# -- the query side -----------------------------------------------------------------------


def query_group_key(batch: pa.RecordBatch | pa.Table) -> pa.Array | pa.ChunkedArray:
    """The column that makes rows one query: rows with equal keys share their positives and
    their candidates, and none of their positives is ever a negative of any of them.

    This is the one place that says what "the same query" is: the same query text by the
    project's text identity (:func:`nvdata.text.text_hash`), whatever the rows' ``query_id``,
    so "Which planets have rings?" and "which planets have rings" are one query.
    """
    return pa.array([text_hash(q) for q in batch.column("query").to_pylist()], pa.string())


def hash_code(text: str) -> int:
    """64-bit signed code of :func:`nvdata.text.text_hash` (normalized-text identity); never 0."""
    code = int(text_hash(text)[:16], 16)
    code = code - (1 << 64) if code >= (1 << 63) else code
    return code or 1


def _digests(values) -> np.ndarray:
    """A 16-byte blake2b digest per string, as a sortable ``S16`` array (the on-disk keys)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.cast(pa.string()).to_pylist()
    blob = b"".join(hashlib.blake2b(v.encode("utf-8"), digest_size=16).digest() for v in values)
    return np.frombuffer(blob, dtype="S16").copy() if values else np.empty(0, dtype="S16")


def _query_prompt(enc: Encoder, mode: str, instruction: str) -> str | None:
    if mode == "none":
        return None
    if mode == "model":
        return enc.prompt("query")
    prefix = schema.instructed_query(instruction, "")
    if schema.instructed_query(instruction, "\x00") != prefix + "\x00":
        raise NvdataError("schema.QUERY_TEMPLATE must end with the query for query_prompt='instruction'")
    return prefix


class _Scratch:
    """The miner's work folder: side tables (per row, per query, per corpus document) as
    ``.npy`` files memory-mapped from it, so they live in the page cache, not in the heap, and
    any process that reaches the folder (a Ray actor on another node) can open them again."""

    def __init__(self, parent: Path | None = None, *, root: Path | None = None):
        if root is not None:
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)
            return
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=".dense-", dir=parent))

    def array(self, name: str, shape, dtype, fill=None) -> np.ndarray:
        shape = tuple(np.atleast_1d(shape).tolist())
        if int(np.prod(shape)) == 0:
            np.save(self.root / f"{name}.npy", np.zeros(shape, dtype=dtype))
            return np.zeros(shape, dtype=dtype)
        a = np.lib.format.open_memmap(self.root / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        if fill is not None:
            a[...] = fill
        return a

    def load(self, name: str, mode: str = "r") -> np.ndarray | None:
        """A table written by :meth:`array` (``mode`` ``r`` or ``r+``); None if never written."""
        path = self.root / f"{name}.npy"
        if not path.exists():
            return None
        try:
            return np.load(path, mmap_mode=mode)
        except ValueError:  # an empty table cannot be mapped
            return np.load(path)

    def write_json(self, name: str, value: dict) -> None:
        tmp = self.root / f".{name}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.root / f"{name}.json")

    def read_json(self, name: str) -> dict:
        return json.loads((self.root / f"{name}.json").read_text())

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class _Queries:
    """The distinct queries of a source and what each must not get back, as side tables.

    Queries are numbered in first-seen order. Per row: ``of_row`` (its query),
    ``positive_at`` / ``positive_score`` (its positive's corpus index and score). Per query
    (CSR over rows): ``row_by_q[q_off[q]:q_off[q+1]]`` its rows in order; over positives'
    normalized-text codes: ``ph_values[ph_off[q]:ph_off[q+1]]``, sorted and distinct. Plus
    ``query_hashes`` and ``seeds``. Per row, ``qid_keys``: the digest of its ``query_id``, to
    find the query's own documents (one per ``query_id`` of the query; ``own_at`` in ``_mine``).
    """

    n_rows: int
    n_q: int
    of_row: np.ndarray
    row_by_q: np.ndarray
    q_off: np.ndarray
    ph_values: np.ndarray
    ph_off: np.ndarray
    max_positives: int
    firsts: np.ndarray  # first row of each query (ascending)
    pid_keys: np.ndarray  # digest of each row's positive_id
    query_hashes: np.ndarray | None = None
    qid_keys: np.ndarray | None = None  # digest of each row's query_id
    seeds: np.ndarray | None = None


def _group_rows(rows_files, n_rows: int, scratch: _Scratch, batch_rows: int) -> tuple[_Queries, str]:
    """First pass over the rows: validate, number the queries, index positives per query."""
    gkey = scratch.array("gkey", n_rows, "S16")
    pid = scratch.array("pid", n_rows, "S16")
    qid = scratch.array("qid", n_rows, "S16")
    pos_hash = scratch.array("pos_hash", n_rows, np.int64)
    sources: set[str] = set()
    r = 0
    for b in iter_batches(rows_files, batch_rows=batch_rows):
        source = _check_rows(b, sources)
        n = b.num_rows
        gkey[r : r + n] = _digests(query_group_key(b))
        pid[r : r + n] = _digests(b.column("positive_id"))
        qid[r : r + n] = _digests(b.column("query_id"))
        pos_hash[r : r + n] = [hash_code(p) for p in b.column("positive").to_pylist()]
        r += n
    # Number the groups by their first row, out of core (mine.keysort): no per-row index in the heap.
    of_row, firsts, q_off, row_by_q, max_positives = keysort.group_first_seen(
        gkey, lambda name, n, dtype: scratch.array(name, n, dtype))
    n_q = len(firsts)
    ph_values, ph_off = _distinct_per_query(pos_hash, row_by_q, q_off, scratch)
    for name in keysort.GROUP_TEMPORARIES:
        (scratch.root / f"{name}.npy").unlink(missing_ok=True)
    queries = _Queries(n_rows, n_q, of_row, row_by_q, q_off, ph_values, ph_off, max_positives, firsts, pid,
                       qid_keys=qid)
    return queries, (next(iter(sources)) if sources else "?")


def _distinct_per_query(pos_hash, row_by_q, q_off, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Each query's distinct positive text codes, sorted (CSR ``ph_values`` / ``ph_off``), a
    run of queries of about ``keysort.CHUNK`` rows at a time (two passes: count, then fill)."""
    n_q = len(q_off) - 1
    runs = []
    a = 0
    while a < n_q:  # whole queries, about CHUNK rows each (a query with more rows is a run alone)
        b = max(a + 1, int(np.searchsorted(q_off, q_off[a] + keysort.CHUNK, side="right")) - 1)
        runs.append((a, min(b, n_q)))
        a = min(b, n_q)

    def distinct(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(row_by_q[q_off[a] : q_off[b]])
        q = np.repeat(np.arange(b - a, dtype=np.int64), np.diff(np.asarray(q_off[a : b + 1])))
        vals = np.asarray(pos_hash[rows])
        o = np.lexsort((vals, q))
        vals, q = vals[o], q[o]
        keep = np.ones(len(vals), dtype=bool)
        keep[1:] = (vals[1:] != vals[:-1]) | (q[1:] != q[:-1])
        return vals[keep], np.bincount(q[keep], minlength=b - a)

    ph_off = scratch.array("ph_off", n_q + 1, np.int64)
    ph_off[0] = 0
    total = 0
    for a, b in runs:
        ph_off[a + 1 : b + 1] = total + np.cumsum(distinct(a, b)[1])
        total = int(ph_off[b])
    ph_values = scratch.array("ph_values", total, np.int64)
    for a, b in runs:
        ph_values[ph_off[a] : ph_off[b]] = distinct(a, b)[0]
    return ph_values, ph_off


def _check_rows(b, sources: set) -> str:
    need = ("query_id", "positive_id", "query", "positive", "instruction")
    if "source" in b.schema.names and b.num_rows:
        sources.update(b.column("source").unique().to_pylist())
        if len(sources) > 1:
            raise NvdataError(f"dense mining: rows come from several sources {sorted(sources)}; mine one source at a time")
    source = next(iter(sources)) if sources else "?"
    for col in need:
        if col not in b.schema.names:
            raise NvdataError(f"dense mining [{source}]: rows lack column {col!r}")
    for col in need:
        if b.column(col).null_count:
            raise NvdataError(f"dense mining [{source}]: rows have null {col!r}")
    return source


def _check_corpus(chunk, source: str) -> None:
    for col in ("doc_id", "text"):
        if col not in chunk.schema.names:
            raise NvdataError(f"dense mining [{source}]: corpus lacks column {col!r}")
    for col in ("doc_id", "text"):
        if chunk.column(col).null_count:
            raise NvdataError(f"dense mining [{source}]: corpus has null {col!r}")


def query_chunks(rows_files, firsts: np.ndarray, cfg: DenseConfig, batch_rows: int, on_batch=None):
    """The chunks the queries are embedded in, in order: ``(instruction, qs, texts)``.

    Each query's text is its first row's (``firsts``, ascending row numbers, one per query);
    queries are grouped by prompt (one per distinct ``instruction`` under
    ``query_prompt='instruction'``, else one group with ``instruction`` None) and a group is
    flushed at ``cfg.chunk_size`` texts, the rest at the end, groups in first-seen order.
    ``qs`` are the queries' numbers. The miner embeds these chunks itself; a distributed
    executor embeds the same chunks first on its encoder pool, into the content-keyed cache,
    and the miner then finds every one there. ``on_batch(q0, texts, qids)`` sees each batch's
    first rows (queries ``q0..``) as they are read.
    """
    by_instruction = cfg.query_prompt == "instruction"
    pending: dict[str | None, tuple[list[int], list[str]]] = {}
    r = q = 0
    for b in iter_batches(rows_files, batch_rows=batch_rows, columns=["query_id", "query", "instruction"]):
        lo, hi = np.searchsorted(firsts, [r, r + b.num_rows])
        if hi > lo:
            take = pa.array(np.asarray(firsts[lo:hi]) - r)
            texts = b.column("query").take(take).to_pylist()
            instructions = b.column("instruction").take(take).to_pylist() if by_instruction else None
            if on_batch is not None:
                on_batch(q, texts, b.column("query_id").take(take).cast(pa.string()).to_pylist())
            for i, text in enumerate(texts):
                key = instructions[i] if by_instruction else None
                qs, group = pending.setdefault(key, ([], []))
                qs.append(q + i)
                group.append(text)
                if len(group) == cfg.chunk_size:
                    yield key, np.asarray(qs, dtype=np.int64), list(group)
                    qs.clear(), group.clear()
            q += len(texts)
        r += b.num_rows
    for key, (qs, group) in pending.items():
        if qs:
            yield key, np.asarray(qs, dtype=np.int64), group


def query_prompt(enc: Encoder, cfg: DenseConfig, instruction: str | None) -> str | None:
    """The prompt a chunk of :func:`query_chunks` is embedded with (its ``instruction``)."""
    return _query_prompt(enc, cfg.query_prompt, instruction)


def _embed_queries(rows_files, queries: _Queries, cache: EmbeddingCache, enc: Encoder, cfg: DenseConfig,
                   seed: int, scratch: _Scratch, batch_rows: int) -> np.ndarray:
    """Second pass: each query's text (its first row's), embedded in the chunks of
    :func:`query_chunks` into a memory-mapped array; its text hash and seed noted on the way."""
    n_q = queries.n_q
    q_emb = scratch.array("q_emb", (n_q, enc.dim), np.float32)
    queries.query_hashes = scratch.array("query_hashes", n_q, np.int64)
    queries.seeds = scratch.array("seeds", n_q, np.uint64) if cfg.sampling == "random" else None

    def on_batch(q0: int, texts: list[str], qids: list[str]) -> None:
        queries.query_hashes[q0 : q0 + len(texts)] = [hash_code(t) for t in texts]
        if queries.seeds is not None:
            queries.seeds[q0 : q0 + len(texts)] = row_seeds(seed, qids)

    for instruction, qs, texts in query_chunks(rows_files, queries.firsts, cfg, batch_rows, on_batch):
        q_emb[qs] = cache.embed(texts, prompt=query_prompt(enc, cfg, instruction))
        del texts
        release_memory()
    return q_emb


def _sorted_keys(scratch: _Scratch, name: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` sorted (stable) and where each sorted key came from, as scratch files, sorted
    out of core (:func:`nvdata.mine.keysort.sort_keys`)."""
    order = scratch.array(f"{name}_order", len(keys), np.int64)
    ordered = scratch.array(f"{name}_sorted", len(keys), keys.dtype)
    keysort.sort_keys(keys, order, ordered)
    return order, ordered


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``lo[i]..hi[i]-1`` of every range, concatenated, and which range each is from."""
    lens = hi - lo
    which = np.repeat(np.arange(len(lo)), lens)
    pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
    return pos, which


def _first_hits(doc_keys: np.ndarray, sorted_keys: np.ndarray, key_order: np.ndarray, found: np.ndarray):
    """Entries (of a key table sorted as ``sorted_keys``, positions ``key_order``) whose key is
    one of ``doc_keys`` and that are not ``found`` yet, each with the first document matching it."""
    uniq, first_j = np.unique(doc_keys, return_index=True)
    lo = np.searchsorted(sorted_keys, uniq, "left")
    hi = np.searchsorted(sorted_keys, uniq, "right")
    pos, which = _expand(lo, hi)
    entries = key_order[pos]
    js = first_j[which]
    new = found[entries] < 0
    return entries[new], js[new]


# -- the miner ----------------------------------------------------------------------------


def mine_dense_negatives(
    rows: pa.Table,
    corpus: pa.Table,
    cfg: DenseConfig,
    *,
    encoder: str | Encoder | None,
    device: str | None,
    cache_dir: Path,
    seed: int,
    batch_rows: int = BATCH_ROWS,
) -> tuple[pa.Table, dict]:
    """Fill ``negatives``, ``negative_scores``, ``positive_score`` of one source's retrieval rows.

    ``rows`` are ``schema.FORMATTED`` rows of one source; ``corpus`` is its
    ``schema.RAW_RETRIEVAL_CORPUS`` candidate pool. ``encoder`` is a model directory, a Hub id,
    an already loaded :class:`~nvdata.mine.encode.Encoder` (load once, mine many sources) or
    None for the bundled all-MiniLM-L6-v2. Embeddings are cached under ``cache_dir``.

    Returns the rows in their input order (minus short rows when ``on_shortfall='drop'``) with
    ``negative_method='dense'``, and a report dict for ``reports/mining.json``. The in-memory
    form of :func:`mine_dense_files`, which the build uses (it streams from and to Parquet).
    """
    with tempfile.TemporaryDirectory(prefix="nvdata-dense-") as tmp:
        tmp = Path(tmp)
        pq.write_table(rows, tmp / "rows.parquet")
        pq.write_table(corpus, tmp / "corpus.parquet")
        report = mine_dense_files(tmp / "rows.parquet", tmp / "corpus.parquet", tmp / "mined.parquet", cfg,
                                  encoder=encoder, device=device, cache_dir=cache_dir, seed=seed,
                                  batch_rows=batch_rows, work_dir=tmp)
        return pq.read_table(tmp / "mined.parquet"), report


def mine_dense_files(
    rows_files: Path | list[Path],
    corpus_files: Path | list[Path],
    out_file: Path,
    cfg: DenseConfig,
    *,
    encoder: str | Encoder | None,
    device: str | None,
    cache_dir: Path,
    seed: int,
    batch_rows: int = BATCH_ROWS,
    work_dir: Path | None = None,
) -> dict:
    """Dense-mine one source from Parquet to Parquet in bounded memory; returns the report.

    ``rows_files`` (``schema.FORMATTED``) and ``corpus_files`` (``schema.RAW_RETRIEVAL_CORPUS``)
    are read in record batches of ``batch_rows`` (corpus: ``chunk_size``) rows, several times:
    (1) query numbering and the per-query positive codes, (2) query embeddings, (3) corpus
    embeddings into the content-keyed cache, positives located by id (1-3: :func:`prepare`),
    (4) search, filters and selection one block of queries at a time against the memory-mapped
    corpus embeddings (:func:`search_block`), (5) the blocks merged and the rows written batch
    by batch in input order (:func:`finish`). Side tables (per row and per query) are
    memory-mapped ``.npy`` files in a temporary folder under ``work_dir``, removed after. A
    distributed executor runs the same phases, the blocks on several workers.
    """
    t_start = time.perf_counter()
    rows_files, corpus_files = _file_list(rows_files), _file_list(corpus_files)
    if num_rows(rows_files) == 0:
        return _mine_empty(rows_files, corpus_files, out_file, cfg, batch_rows)
    enc = encoder if isinstance(encoder, Encoder) else load_encoder(
        encoder, device=device, dtype=cfg.dtype, max_seq_length=cfg.max_seq_length
    )
    enc_before = enc.stats.to_dict()
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(enc.device)
    scratch = _Scratch(work_dir)
    try:
        with EmbeddingCache(Path(cache_dir), enc, batch_size=cfg.batch_size, num_workers=workers) as cache:
            group_queries(rows_files, scratch.root, batch_rows)
            meta = prepare(rows_files, corpus_files, scratch.root, cfg, enc=enc, cache=cache, seed=seed,
                           batch_rows=batch_rows)
            doc_hash = scratch.array("doc_hash", meta["n_corpus"], np.int64, fill=0)
            for s in meta["blocks"]:
                search_block(scratch.root, s, cfg, device=enc.device, doc_hash=doc_hash)
            report = finish(rows_files, out_file, scratch.root, cfg, batch_rows=batch_rows)
            enc_after = enc.stats.to_dict()
            report["encode"] = {
                **cache.stats.to_dict(),
                "batches": enc_after["batches"] - enc_before["batches"],
                "seconds": round(enc_after["seconds"] - enc_before["seconds"], 3),
                "workers": workers,
            }
    finally:
        scratch.close()
    report["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 3)  # incl. cache writes
    return report


def _file_list(files) -> list[Path]:
    return [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]


def _mine_empty(rows_files, corpus_files, out_file, cfg: DenseConfig, batch_rows: int) -> dict:
    pq.write_table(_output_schema(pq.read_schema(rows_files[0])).empty_table(), out_file, compression="zstd")
    sources: set[str] = set()
    for b in iter_batches(rows_files, batch_rows=batch_rows):
        _check_rows(b, sources)
    return _report_skeleton("?", cfg, None, 0, num_rows(corpus_files), 0)


def _output_schema(in_schema: pa.Schema) -> pa.Schema:
    fmt = schema.FORMATTED
    out = in_schema
    for name in ("negatives", "negative_scores", "positive_score", "negative_method"):
        i = out.get_field_index(name)
        out = out.set(i, fmt.field(name)) if i >= 0 else out.append(fmt.field(name))
    return out


# -- the phases: plain functions over a work folder, so any process can run any of them ----------


def query_block_size(cfg: DenseConfig) -> int:
    """Queries per search block: whole multiples of the search's own query batches, so every
    search call sees the same queries whatever the block size (results equal to one block,
    bit for bit). Never depends on how many workers search the blocks."""
    return cfg.search_batch_size * max(1, -(-_QUERY_BLOCK // cfg.search_batch_size))


def group_queries(rows_files, work: Path, batch_rows: int = BATCH_ROWS) -> dict:
    """Phase 1 (no encoder): number the queries of ``rows_files`` and index their positives,
    as side tables in ``work``; returns (and saves) ``{"n_rows", "n_q", "source", ...}``.
    ``firsts.npy`` then holds each query's first row (:func:`query_chunks` reads it)."""
    rows_files, scratch = _file_list(rows_files), _Scratch(root=work)
    n_rows = num_rows(rows_files)
    if n_rows == 0:
        raise NvdataError("dense mining: no rows to group")
    queries, source = _group_rows(rows_files, n_rows, scratch, batch_rows)
    _flush(queries.of_row, queries.row_by_q, queries.q_off, queries.ph_values, queries.ph_off, queries.firsts,
           queries.pid_keys, queries.qid_keys)
    for name in ("gkey", "pos_hash"):  # only needed while grouping
        (scratch.root / f"{name}.npy").unlink(missing_ok=True)
    grouped = {"n_rows": n_rows, "n_q": queries.n_q, "source": source, "max_positives": queries.max_positives}
    scratch.write_json("grouped", grouped)
    release_memory()
    return grouped


def _flush(*arrays) -> None:
    """Write mapped tables through to their files: another node reads them next."""
    for a in arrays:
        if isinstance(a, np.memmap):
            a.flush()


def first_rows(work: Path) -> np.ndarray:
    """Each query's first row (ascending), from a work folder :func:`group_queries` filled."""
    return _Scratch(root=work).load("firsts")


def _load_queries(scratch: _Scratch) -> _Queries:
    g = scratch.read_json("grouped")
    return _Queries(
        g["n_rows"], g["n_q"], scratch.load("of_row"), scratch.load("row_by_q"), scratch.load("q_off"),
        scratch.load("ph_values"), scratch.load("ph_off"), g["max_positives"], scratch.load("firsts"),
        scratch.load("pid"), query_hashes=scratch.load("query_hashes"), qid_keys=scratch.load("qid"),
        seeds=scratch.load("seeds"),
    )


def prepare(rows_files, corpus_files, work: Path, cfg: DenseConfig, *, enc: Encoder, cache: EmbeddingCache,
            seed: int, batch_rows: int = BATCH_ROWS, block: int | None = None) -> dict:
    """Phase 2, after :func:`group_queries`: embed the queries (:func:`query_chunks`), one pass
    over the corpus (each chunk embedded into ``cache`` or found there; where the positives
    and the queries' own documents sit, the positives' scores), the positives the corpus
    lacks. Leaves in ``work`` every table a block search needs and returns (and saves) the
    plan: ``blocks`` (each block's first query; ``block`` queries each, default
    :func:`query_block_size`), ``chunks`` (the cached corpus embedding files), ``k_search``."""
    rows_files, corpus_files, scratch = _file_list(rows_files), _file_list(corpus_files), _Scratch(root=work)
    enc_before, cache_before = enc.stats.to_dict(), cache.stats.to_dict()
    queries = _load_queries(scratch)
    n_rows, n_q, source = queries.n_rows, queries.n_q, scratch.read_json("grouped")["source"]
    n_corpus = num_rows(corpus_files)
    q_emb = _embed_queries(rows_files, queries, cache, enc, cfg, seed, scratch, batch_rows)
    release_memory()

    # One pass over the corpus: encode (or load) a chunk into the cache, and note where the
    # positives and the queries' own documents sit so their scores and ids come for free.
    doc_prompt = enc.prompt("document") if cfg.document_prompt == "model" else None
    pid_order, pid_sorted = _sorted_keys(scratch, "pid", queries.pid_keys)
    qk_order, qk_sorted = _sorted_keys(scratch, "qk", queries.qid_keys)
    positive_at = scratch.array("positive_at", n_rows, np.int64, fill=-1)
    positive_score = scratch.array("positive_score", n_rows, np.float32, fill=np.nan)
    own_at = scratch.array("own_at", n_rows, np.int64, fill=-1)  # per row: its query_id's document
    chunks: list[tuple[str, int]] = []
    texts_path = scratch.root / "corpus_text.arrow"
    with pa.OSFile(str(texts_path), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("text", pa.string())])) as w:
        start = 0
        for chunk in exact_batches(iter_batches(corpus_files, batch_rows=cfg.chunk_size), cfg.chunk_size):
            _check_corpus(chunk, source)
            texts = chunk.column("text").to_pylist()
            c_emb = cache.embed(texts, prompt=doc_prompt)
            chunks.append((str(cache.path_for(texts, doc_prompt)), start))
            w.write_table(pa.table({"text": chunk.column("text").cast(pa.string())}))
            doc_keys = _digests(chunk.column("doc_id"))
            hr, hc = _first_hits(doc_keys, pid_sorted, pid_order, positive_at)
            if hr.size:
                positive_at[hr] = start + hc
                positive_score[hr] = exact_scores(q_emb[queries.of_row[hr]], c_emb[hc])
            hq, hj = _first_hits(doc_keys, qk_sorted, qk_order, own_at)
            if hq.size:
                own_at[hq] = start + hj
            start += chunk.num_rows
            del texts, c_emb, chunk
            release_memory()
    del pid_order, pid_sorted, qk_order, qk_sorted
    for name in ("pid_order", "pid_sorted", "qk_order", "qk_sorted"):
        (scratch.root / f"{name}.npy").unlink(missing_ok=True)
    # Positives the corpus does not hold (it should, but a source may be incomplete).
    missing = _score_missing_positives(rows_files, positive_at, positive_score, q_emb, queries, cache,
                                       doc_prompt, cfg, batch_rows)
    cache.flush()  # the corpus chunks are read back memory-mapped from here on
    _flush(q_emb, positive_at, positive_score, own_at, queries.query_hashes, queries.seeds)
    block = block or query_block_size(cfg)
    enc_after, cache_after = enc.stats.to_dict(), cache.stats.to_dict()
    plan = {
        "n_corpus": n_corpus,
        "k_search": cfg.top_k + min(queries.max_positives, _MAX_POSITIVE_SLACK) + 1,
        "chunks": chunks,
        "block": block,
        "blocks": list(range(0, n_q, block)),
        "missing": int(missing),
        "report": _report_skeleton(source, cfg, enc, n_rows, n_corpus, n_q),
        "encode": {**{k: v - cache_before.get(k, 0) if isinstance(v, (int, float)) else v
                      for k, v in cache_after.items()},
                   "batches": enc_after["batches"] - enc_before["batches"],
                   "seconds": round(enc_after["seconds"] - enc_before["seconds"], 3)},
    }
    scratch.write_json("plan", plan)
    return plan


def corpus_size(work: Path) -> int:
    """Documents in the corpus of a work folder :func:`prepare` filled."""
    return int(_Scratch(root=work).read_json("plan")["n_corpus"])


def _block_name(s: int) -> str:
    return f"block-{s:012d}"


def search_block(work: Path, s: int, cfg: DenseConfig, *, device: str, doc_hash: np.ndarray | None = None) -> dict:
    """Phase 3: the queries of the block starting at ``s`` searched exactly against every
    corpus chunk (top ``k_search`` per query, merged across chunks by the searcher), then the
    filters and the selection (:func:`_filter_and_select`). Writes the block's choices
    (``block-<s>.idx.npy`` / ``.scores.npy``, ``(b, num_negatives)``) and its counts
    (``block-<s>.json``, written last) into ``work``; blocks are independent, so they may run
    in any order, in any process. ``doc_hash``: a memo of corpus text codes (int64 per
    document, 0 = not yet hashed) kept across the blocks a process runs; a fresh one if None."""
    scratch = _Scratch(root=work)
    plan = scratch.read_json("plan")
    queries = _load_queries(scratch)
    n_q, e = queries.n_q, min(queries.n_q, s + plan["block"])
    if not (0 <= s < n_q and s % plan["block"] == 0):
        raise ValueError(f"search_block: {s} is not a block start of {n_q} queries")
    if doc_hash is None:
        doc_hash = doc_hash_memo(plan["n_corpus"])
    q_emb = scratch.load("q_emb")
    t0 = time.perf_counter()
    chunks = [(np.load(path, mmap_mode="r"), offset) for path, offset in plan["chunks"]]
    cand_scores, cand_idx, backend = search_candidates(np.array(q_emb[s:e]), chunks, plan["k_search"], cfg,
                                                       device=device)
    search_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    corpus_texts = pa.ipc.open_file(pa.memory_map(str(scratch.root / "corpus_text.arrow"))).read_all().column("text")
    block_q = _block_queries(queries, scratch.load("positive_at"), scratch.load("positive_score"),
                             scratch.load("own_at"), s, e)
    removed_scores = {k: score_stats.Histogram(*score_stats.COSINE_RANGE, score_stats.COSINE_BINS) for k in FILTER_ORDER}
    idx, sc, removed, considered = _filter_and_select(
        cand_scores, cand_idx, corpus_texts, doc_hash, block_q, cfg, removed_scores)
    result = {
        "start": s, "stop": e, "backend": backend, "retrieved": int((cand_idx >= 0).sum()),
        "considered": int(considered), "removed": {k: int(v) for k, v in removed.items()},
        "removed_scores": {k: h.counts.tolist() for k, h in removed_scores.items()},
        "search_seconds": search_seconds, "filter_seconds": time.perf_counter() - t0,
        "process": f"{socket.gethostname()}:{os.getpid()}",
    }
    del cand_scores, cand_idx, corpus_texts, block_q
    name = _block_name(s)
    for suffix, values in (("idx", idx), ("scores", sc)):  # temp then rename: a retried block overwrites
        tmp = scratch.root / f".{name}.{suffix}.{os.getpid()}.npy"
        np.save(tmp, values)
        os.replace(tmp, scratch.root / f"{name}.{suffix}.npy")
    scratch.write_json(name, result)
    release_memory()
    return result


def search_candidates(queries: np.ndarray, chunks: list[tuple[np.ndarray, int]], k: int, cfg: DenseConfig, *,
                      device: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Each query's ``k`` nearest corpus items: ``(scores float32 (n, k), indices int64 (n, k),
    backend)``, best first. ``chunks``: the corpus embeddings as ``(array, offset)`` pieces.
    The search (:mod:`nvdata.mine.search`) only picks candidates, ``RESCORE_SLACK`` more than
    asked; their scores are then computed exactly (:func:`nvdata.mine.search.rescore`): a
    GEMM's float32 scores change with how BLAS splits the work over threads (1 vs 2 cores
    moved ~0.5% of 8,192 x 117 scores by up to 4e-7 and reordered 504), and the shards
    must not depend on the machine."""
    searcher = make_searcher(cfg.backend, queries, k + RESCORE_SLACK, device=device,
                             query_batch_size=cfg.search_batch_size)
    for emb, offset in chunks:
        searcher.add(emb, offset=offset)
    _, idx = searcher.result()
    backend = searcher.backend
    del searcher
    scores, idx = rescore(queries, idx, _chunk_gather(chunks), k)
    return scores, idx, backend


def _chunk_gather(chunks: list[tuple[np.ndarray, int]]):
    """``gather(rows)``: the embeddings of global corpus indices ``rows`` from the (memory-
    mapped) chunk files laid end to end at their offsets."""
    starts = np.array([offset for _, offset in chunks], dtype=np.int64)

    def gather(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), chunks[0][0].shape[1]), dtype=np.float32)
        which = np.searchsorted(starts, rows, side="right") - 1
        for c in np.unique(which):
            at = which == c
            emb, offset = chunks[c]
            local = rows[at] - offset
            order = np.argsort(local, kind="stable")  # read each file front to back
            got = np.empty((len(local), emb.shape[1]), dtype=np.float32)
            got[order] = emb[local[order]]
            out[at] = got
        return out

    return gather


def doc_hash_memo(n_corpus: int) -> np.ndarray:
    """A zero-filled int64 memo of corpus text codes for :func:`search_block`, in an
    anonymous temporary file (page cache, not heap; gone when the array is)."""
    if n_corpus == 0:
        return np.zeros(0, dtype=np.int64)
    return np.memmap(tempfile.TemporaryFile(prefix="nvdata-dochash-"), dtype=np.int64, mode="w+", shape=(n_corpus,))


def finish(rows_files, out_file: Path, work: Path, cfg: DenseConfig, *, batch_rows: int = BATCH_ROWS) -> dict:
    """Phase 4: merge the blocks' results in block order (choices placed by query number,
    counts and histograms added: exact whatever order they ran in), write every row with its
    query's negatives to ``out_file`` in input order (:func:`_write_rows`); the report."""
    rows_files, scratch = _file_list(rows_files), _Scratch(root=work)
    plan = scratch.read_json("plan")
    queries = _load_queries(scratch)
    n_q, num = queries.n_q, cfg.num_negatives
    chosen_idx = scratch.array("chosen_idx", (n_q, num), np.int64)
    chosen_scores = scratch.array("chosen_scores", (n_q, num), np.float32)
    removed = dict.fromkeys(FILTER_ORDER, 0)
    removed_scores = {k: np.zeros(score_stats.COSINE_BINS, dtype=np.int64) for k in FILTER_ORDER}
    considered = retrieved = 0
    search_seconds = filter_seconds = 0.0
    backend, processes = None, set()
    for s in plan["blocks"]:
        name = _block_name(s)
        if not (scratch.root / f"{name}.json").is_file():
            raise NvdataError(f"dense mining [{plan['report']['source']}]: query block {s} was never searched")
        got = scratch.read_json(name)
        chosen_idx[s : got["stop"]] = np.load(scratch.root / f"{name}.idx.npy")
        chosen_scores[s : got["stop"]] = np.load(scratch.root / f"{name}.scores.npy")
        for k in FILTER_ORDER:
            removed[k] += got["removed"][k]
            removed_scores[k] += np.asarray(got["removed_scores"][k], dtype=np.int64)
        considered += got["considered"]
        retrieved += got["retrieved"]
        search_seconds += got["search_seconds"]
        filter_seconds += got["filter_seconds"]
        backend = got["backend"]
        processes.add(got["process"])
    corpus_texts = pa.ipc.open_file(pa.memory_map(str(scratch.root / "corpus_text.arrow"))).read_all().column("text")
    stats = _write_rows(rows_files, out_file, _output_schema(pq.read_schema(rows_files[0])), corpus_texts,
                        queries.of_row, chosen_idx, chosen_scores, scratch.load("positive_score"), cfg, scratch,
                        batch_rows)
    report = plan["report"]
    requested = cfg.num_negatives
    counts_hist = stats["hist"]
    report.update(
        {
            "rows_out": stats["kept"],
            "positives_not_in_corpus": plan["missing"],
            "search": {"backend": backend, "k": int(plan["k_search"]), "seconds": round(search_seconds, 3),
                       "query_blocks": len(plan["blocks"]), "block_size": plan["block"],
                       "processes": len(processes)},
            "candidates": {
                "retrieved": int(retrieved),
                "considered": int(considered),
                "eligible": int(considered - sum(removed[k] for k in FILTER_ORDER[5:])),
            },
            "removed": {k: int(v) for k, v in removed.items()},
            "negatives": {
                "requested_per_row": requested,
                "total": stats["total"],
                "per_row_histogram": {str(c): int(n) for c, n in enumerate(counts_hist) if n},
            },
            "shortfall": {
                "rows": int(counts_hist[:requested].sum()),
                "kept": stats["short_kept"],
                "dropped": int(counts_hist[:requested].sum()) - stats["short_kept"],
                "without_negatives": int(counts_hist[0]),
            },
            "scores": stats["scores"],
            "score_histograms": {**stats["score_histograms"], "removed": {
                k: h.tolist() for k, h in removed_scores.items() if h.any()}},
        }
    )
    report["timing"] = {"filter_select_seconds": round(filter_seconds, 3)}
    report["encode"] = plan["encode"]  # the prepare phase's (the local miner's own replaces it)
    return report


def _score_missing_positives(rows_files, positive_at, positive_score, q_emb, queries, cache, doc_prompt,
                             cfg: DenseConfig, batch_rows: int) -> int:
    """Embed the positives the corpus lacks (in row order, ``chunk_size`` at a time) and score them."""
    missing = int((positive_at < 0).sum())
    if not missing:
        return 0
    buf_rows: list[int] = []
    buf_texts: list[str] = []

    def flush(upto: int) -> None:
        rr = np.asarray(buf_rows[:upto], dtype=np.int64)
        p_emb = cache.embed(buf_texts[:upto], prompt=doc_prompt)
        positive_score[rr] = exact_scores(q_emb[queries.of_row[rr]], p_emb)
        del buf_rows[:upto], buf_texts[:upto]

    r = 0
    for b in iter_batches(rows_files, batch_rows=batch_rows, columns=["positive"]):
        local = np.flatnonzero(np.asarray(positive_at[r : r + b.num_rows]) < 0)
        if local.size:
            buf_rows.extend((local + r).tolist())
            buf_texts.extend(b.column("positive").take(pa.array(local)).to_pylist())
            while len(buf_rows) >= cfg.chunk_size:
                flush(cfg.chunk_size)
        r += b.num_rows
    if buf_rows:
        flush(len(buf_rows))
    return missing


@dataclass
class _BlockQueries:
    """What the filters need for queries ``s..e`` (one search block)."""

    positive_idx: np.ndarray  # (b, m) corpus index of each positive row, -1 padded
    positive_hashes: np.ndarray  # (b, m') distinct positive text codes, 0 padded
    query_hashes: np.ndarray  # (b, 1)
    query_at: np.ndarray  # (b, m') the query's own documents (one per query_id), -1 padded
    min_positive: np.ndarray  # (b,) float64
    seeds: np.ndarray | None


def _block_queries(queries: _Queries, positive_at, positive_score, own_at, s: int, e: int) -> _BlockQueries:
    nb = e - s
    rows = np.asarray(queries.row_by_q[queries.q_off[s] : queries.q_off[e]])
    q_local = np.repeat(np.arange(nb, dtype=np.int64), np.diff(queries.q_off[s : e + 1]))
    positive_idx = _ragged_by_query(q_local, np.asarray(positive_at[rows]), nb, pad=-1)
    min_positive = np.full(nb, np.inf, dtype=np.float64)
    np.minimum.at(min_positive, q_local, np.asarray(positive_score[rows]).astype(np.float64))
    ph_q = np.repeat(np.arange(nb, dtype=np.int64), np.diff(queries.ph_off[s : e + 1]))
    ph = np.asarray(queries.ph_values[queries.ph_off[s] : queries.ph_off[e]])
    positive_hashes = _ragged_by_query(ph_q, ph, nb, pad=0)
    return _BlockQueries(
        positive_idx, positive_hashes,
        np.asarray(queries.query_hashes[s:e])[:, None], _ragged_by_query(q_local, np.asarray(own_at[rows]), nb, pad=-1),
        min_positive,
        np.asarray(queries.seeds[s:e]) if queries.seeds is not None else None,
    )


def _ragged_by_query(of_row: np.ndarray, values: np.ndarray, n_q: int, *, pad: int) -> np.ndarray:
    """Group per-row ``values`` by query into an ``(n_q, m)`` matrix padded with ``pad``."""
    order = np.argsort(of_row, kind="stable")
    q_sorted = of_row[order]
    starts = np.searchsorted(q_sorted, np.arange(n_q))
    slot = np.arange(len(order)) - starts[q_sorted]
    width = int(slot.max()) + 1 if len(order) else 1
    out = np.full((n_q, width), pad, dtype=values.dtype)
    out[q_sorted, slot] = values[order]
    return out


def _filter_and_select(
    cand_scores: np.ndarray,
    cand_idx: np.ndarray,
    corpus_texts: pa.ChunkedArray,
    doc_hash: np.ndarray,
    bq: _BlockQueries,
    cfg: DenseConfig,
    removed_scores: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """Apply every filter in ``FILTER_ORDER`` to one block of queries and select; the scores of
    the candidates each filter removes are added to ``removed_scores[filter]`` (a
    ``mine.stats.Histogram``) when given."""
    num = cfg.num_negatives
    removed = dict.fromkeys(FILTER_ORDER, 0)
    idx, scores = cand_idx, cand_scores
    # Hash each candidate text once per run, only for documents some query retrieved.
    # A few thousand texts at a time: a block's candidates can span most of the corpus (16,384
    # queries x ~100 candidates), and their texts as one Python list grew with the corpus
    # (~300 MiB at 800k documents; bench/bench_scale.py).
    wanted = np.unique(idx[idx >= 0])
    todo = wanted[np.asarray(doc_hash[wanted]) == 0]
    for i in range(0, todo.size, _HASH_BATCH):
        part = todo[i : i + _HASH_BATCH]
        doc_hash[part] = [hash_code(t) for t in take_chunked(corpus_texts, part).to_pylist()]
    codes = np.where(idx >= 0, np.asarray(doc_hash[np.maximum(idx, 0)]), 0)

    alive = idx >= 0
    steps = {
        "positive_id": lambda: filters.excluded_code_mask(idx, bq.positive_idx, pad=-1),
        "query_id": lambda: filters.excluded_code_mask(idx, bq.query_at, pad=-1),
        "positive_text": lambda: filters.excluded_code_mask(codes, bq.positive_hashes, pad=0),
        "query_text": lambda: filters.excluded_code_mask(codes, bq.query_hashes, pad=0),
        "duplicate_candidate": lambda: filters.repeated_code_mask(codes),
    }
    for name, mask_fn in steps.items():
        hit = mask_fn() & alive
        removed[name] += int(hit.sum())
        if removed_scores is not None:
            removed_scores[name].add(scores[hit])
        alive &= ~hit
    # The candidate list is top_k deep once positives and copies are out; the slack
    # fetched to make room for them is not part of it.
    alive &= ~filters.rank_window_mask(alive, 0, cfg.top_k)
    considered = int(alive.sum())
    p = bq.min_positive
    score_steps = {
        "rank_window": lambda: filters.rank_window_mask(alive, cfg.range_min, cfg.range_max),
        "relative_margin": lambda: filters.relative_margin_mask(scores, p, cfg.relative_margin),
        "absolute_margin": lambda: filters.absolute_margin_mask(scores, p, cfg.absolute_margin),
        "max_score": lambda: filters.max_score_mask(scores, cfg.max_score),
        "min_score": lambda: filters.min_score_mask(scores, cfg.min_score),
    }
    for name, mask_fn in score_steps.items():
        if name != "rank_window" and getattr(cfg, name) is None:
            continue
        hit = mask_fn() & alive
        removed[name] += int(hit.sum())
        if removed_scores is not None:
            removed_scores[name].add(scores[hit])
        alive &= ~hit

    pos = select_top(alive, num) if cfg.sampling == "top" else select_random(alive, num, bq.seeds)
    valid = pos >= 0
    safe = np.maximum(pos, 0)
    chosen_idx = np.full((len(idx), num), -1, dtype=np.int64)
    chosen_scores = np.full((len(idx), num), np.nan, dtype=np.float32)
    width = pos.shape[1]
    chosen_idx[:, :width] = np.where(valid, np.take_along_axis(idx, safe, axis=1), -1)
    chosen_scores[:, :width] = np.where(valid, np.take_along_axis(scores, safe, axis=1), np.nan)
    return chosen_idx, chosen_scores, removed, considered


def _write_rows(rows_files, out_file, out_schema, corpus_texts, of_row, chosen_idx, chosen_scores,
                positive_score, cfg: DenseConfig, scratch: _Scratch, batch_rows: int) -> dict:
    """Last pass: each batch of rows gets its query's choices and is written, in input order."""
    num = cfg.num_negatives
    fmt = schema.FORMATTED
    hist = np.zeros(num + 1, dtype=np.int64)
    kept_total = short_kept = neg_total = 0
    n_rows = len(of_row)
    pos_vals = scratch.array("summary_pos", n_rows, np.float64)
    neg_vals = scratch.array("summary_neg", n_rows * num, np.float64)
    margin_vals = scratch.array("summary_margin", n_rows * num, np.float64)
    n_pos = n_neg = 0
    r = batches_done = 0
    with pq.ParquetWriter(out_file, out_schema, compression="zstd") as writer:
        for b in iter_batches(rows_files, batch_rows=batch_rows):
            n = b.num_rows
            q = np.asarray(of_row[r : r + n])
            idx, sc = np.asarray(chosen_idx[q]), np.asarray(chosen_scores[q])
            valid = idx >= 0  # chosen entries are left-aligned, so row-major order is row order
            counts = valid.sum(axis=1)
            kept = counts >= num if cfg.on_shortfall == "drop" else np.ones(n, dtype=bool)
            hist += np.bincount(counts, minlength=num + 1)
            short_kept += int(((counts < num) & kept).sum())
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            values = (take_chunked(corpus_texts, idx[valid]) if valid.any()
                      else pa.array([], pa.string()))
            pscore = np.asarray(positive_score[r : r + n])
            columns = {
                "negatives": pa.ListArray.from_arrays(offsets, values.cast(pa.string())),
                "negative_scores": pa.ListArray.from_arrays(offsets, pa.array(sc[valid].astype(np.float32), pa.float32())),
                "positive_score": pa.array(pscore.astype(np.float32), fmt.field("positive_score").type),
                "negative_method": pa.array(["dense"] * n, fmt.field("negative_method").type),
            }
            out = pa.Table.from_batches([b])
            for name, col in columns.items():
                i = out.schema.get_field_index(name)
                field = fmt.field(name)
                col = col.cast(field.type)
                out = out.set_column(i, field, col) if i >= 0 else out.append_column(field, col)
            if not kept.all():
                out = out.filter(pa.array(kept))
            writer.write_table(out.cast(out_schema))
            kept_total += int(kept.sum())
            neg_total += int(counts[kept].sum())
            # Score summary over the rows written (quantiles at the end, from the mapped files).
            kp = pscore[kept].astype(np.float64)
            kn = sc[kept][valid[kept]].astype(np.float64)
            pos_vals[n_pos : n_pos + len(kp)] = kp
            neg_vals[n_neg : n_neg + len(kn)] = kn
            margin_vals[n_neg : n_neg + len(kn)] = np.repeat(kp, counts[kept]) - kn
            n_pos += len(kp)
            n_neg += len(kn)
            r += n
            batches_done += 1
            if batches_done % RELEASE_EVERY == 0:
                release_memory()
    # One schema with the BM25 miner (mine.stats): quantiles, and histograms on fixed cosine bins;
    # computed from the scratch files a chunk at a time (never a whole copy in memory).
    histograms = {"low": float(score_stats.COSINE_RANGE[0]), "high": float(score_stats.COSINE_RANGE[1]),
                  "bins": int(score_stats.COSINE_BINS)}
    for name, values in (("positive", pos_vals[:n_pos]), ("negative", neg_vals[:n_neg])):
        h = score_stats.Histogram(*score_stats.COSINE_RANGE, score_stats.COSINE_BINS)
        for i in range(0, len(values), 1 << 20):
            h.add(values[i : i + (1 << 20)])
        histograms[name] = h.counts.tolist()
    scores = {"positive": _quantiles(pos_vals[:n_pos]), "negative": _quantiles(neg_vals[:n_neg]),
              "margin": _quantiles(margin_vals[:n_neg])}
    return {"hist": hist, "kept": kept_total, "short_kept": short_kept, "total": neg_total, "scores": scores,
            "score_histograms": histograms}


def _quantiles(values: np.ndarray) -> dict:
    """:func:`nvdata.mine.stats.score_quantiles` of float64 ``values`` (a scratch array, sorted
    in place): each quantile is numpy's own interpolation between the two order statistics it
    falls between, so the result is the same and a memory-mapped array is never copied whole.
    """
    if not all(np.isfinite(values[i : i + (1 << 20)]).all() for i in range(0, len(values), 1 << 20)):
        values = values[np.isfinite(values)]  # rare (a NaN score): a copy of the finite ones
    if values.size == 0:
        return {"count": 0}
    out = {"count": int(values.size), "mean": round(float(values.mean()), 6)}
    values.sort()
    n = values.size
    for name, q in score_stats.QUANTILES.items():
        at = q * (n - 1)
        lo = int(np.floor(at))
        pair = np.array([values[lo], values[min(lo + 1, n - 1)]], dtype=np.float64)
        out[name] = round(float(np.quantile(pair, at - lo)), 6)
    return out


def _report_skeleton(source: str, cfg: DenseConfig, enc: Encoder | None, n_rows: int, n_corpus: int, n_q: int) -> dict:
    return {
        "source": source,
        "method": "dense",
        "encoder": enc.describe() if enc is not None else None,
        "config": cfg.to_dict(),
        "rows_in": n_rows,
        "rows_out": n_rows,
        "queries": n_q,
        "corpus_size": n_corpus,
        "filter_order": list(FILTER_ORDER),
    }
