"""Dense hard-negative mining for retrieval rows (NV-Embed section 4.2, NV-Retriever).

One source at a time: embed its queries and its candidate pool (the corpus table), search the
top-k nearest documents of every query exactly, drop the candidates that must not be negatives
and pick ``num_negatives`` of the rest. The three parts live apart:

* search:     :mod:`nvdata.mine.encode` (encoder, embedding cache) and
              :mod:`nvdata.mine.search` (faiss / torch exact top-k over corpus chunks);
* filters:    :mod:`nvdata.mine.filters`, each rule a pure function over the candidate arrays;
* selection:  :mod:`nvdata.mine.selection` (top or seeded random).

This module only wires them together and counts what each step did.

What is never a negative of a row: any positive of its query (all rows sharing the
``query_id``, by document id and by normalized-text hash, so an exact or trivially different
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nvdata import schema
from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.mine import filters, stats
from nvdata.mine.encode import EmbeddingCache, Encoder, default_num_workers, load_encoder, DTYPES
from nvdata.mine.search import BACKENDS, make_searcher
from nvdata.mine.selection import row_seeds, select_random, select_top
from nvdata.text import text_hash

SAMPLING = ("top", "random")
ON_SHORTFALL = ("keep", "drop")
QUERY_PROMPTS = ("model", "instruction", "none")
DOCUMENT_PROMPTS = ("model", "none")
# Extra neighbours fetched per query so that excluding its positives (and its own text) still
# leaves top_k candidates; capped so one query with hundreds of positives does not widen the
# search for all of them.
_MAX_POSITIVE_SLACK = 64
_QUERY_BLOCK = 16384  # queries filtered at a time (bounds the candidate-text working set)
_OUTPUT_BLOCK = 50_000  # rows per output chunk (keeps string arrays far below 2 GiB)
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


@dataclass
class _Queries:
    """The distinct queries of a source and what each must not get back."""

    ids: list[str]  # distinct query_id, in first-seen order
    texts: list[str]
    instructions: list[str]
    of_row: np.ndarray  # (n_rows,) index into ids
    positive_hashes: np.ndarray  # (n_q, m) int64 hash codes of all positives' texts, 0-padded
    query_hashes: np.ndarray  # (n_q, 1) hash code of the query text
    max_positives: int

    @classmethod
    def from_rows(cls, rows: pa.Table) -> "_Queries":
        qids = rows.column("query_id").to_pylist()
        queries = rows.column("query").to_pylist()
        instructions = rows.column("instruction").to_pylist()
        positives = rows.column("positive").to_pylist()
        index: dict[str, int] = {}
        texts, instr, pos_hashes = [], [], []
        of_row = np.empty(len(qids), dtype=np.int64)
        for r, qid in enumerate(qids):
            q = index.get(qid)
            if q is None:
                q = index[qid] = len(texts)
                texts.append(queries[r])
                instr.append(instructions[r])
                pos_hashes.append(set())
            of_row[r] = q
            pos_hashes[q].add(hash_code(positives[r]))
        width = max(len(h) for h in pos_hashes)
        pos_matrix = np.zeros((len(texts), width), dtype=np.int64)
        for q, hashes in enumerate(pos_hashes):
            pos_matrix[q, : len(hashes)] = sorted(hashes)
        query_hashes = np.array([[hash_code(t)] for t in texts], dtype=np.int64)
        max_pos = int(np.bincount(of_row).max())
        return cls(list(index), texts, instr, of_row, pos_matrix, query_hashes, max_pos)


def hash_code(text: str) -> int:
    """64-bit signed code of :func:`nvdata.text.text_hash` (normalized-text identity); never 0."""
    code = int(text_hash(text)[:16], 16)
    code = code - (1 << 64) if code >= (1 << 63) else code
    return code or 1


def _query_prompt(enc: Encoder, mode: str, instruction: str) -> str | None:
    if mode == "none":
        return None
    if mode == "model":
        return enc.prompt("query")
    prefix = schema.instructed_query(instruction, "")
    if schema.instructed_query(instruction, "\x00") != prefix + "\x00":
        raise NvdataError("schema.QUERY_TEMPLATE must end with the query for query_prompt='instruction'")
    return prefix


def _embed_queries(cache: EmbeddingCache, enc: Encoder, queries: _Queries, cfg: DenseConfig) -> np.ndarray:
    """Query embeddings, grouped by prompt (one per distinct instruction) and cached in chunks."""
    prompts = [_query_prompt(enc, cfg.query_prompt, ins) for ins in queries.instructions]
    out = np.empty((len(queries.texts), enc.dim), dtype=np.float32)
    groups: dict[str | None, list[int]] = {}
    for q, p in enumerate(prompts):
        groups.setdefault(p, []).append(q)
    for prompt, members in groups.items():
        for start in range(0, len(members), cfg.chunk_size):
            block = members[start : start + cfg.chunk_size]
            out[block] = cache.embed([queries.texts[q] for q in block], prompt=prompt)
    return out


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
) -> tuple[pa.Table, dict]:
    """Fill ``negatives``, ``negative_scores``, ``positive_score`` of one source's retrieval rows.

    ``rows`` are ``schema.FORMATTED`` rows of one source; ``corpus`` is its
    ``schema.RAW_RETRIEVAL_CORPUS`` candidate pool. ``encoder`` is a model directory, a Hub id,
    an already loaded :class:`~nvdata.mine.encode.Encoder` (load once, mine many sources) or
    None for the bundled all-MiniLM-L6-v2. Embeddings are cached under ``cache_dir``.

    Returns the rows in their input order (minus short rows when ``on_shortfall='drop'``) with
    ``negative_method='dense'``, and a report dict for ``reports/mining.json``.
    """
    t_start = time.perf_counter()
    source = _check_inputs(rows, corpus)
    if rows.num_rows == 0:
        return rows, _report_skeleton(source, cfg, None, rows.num_rows, corpus.num_rows, 0)

    enc = encoder if isinstance(encoder, Encoder) else load_encoder(
        encoder, device=device, dtype=cfg.dtype, max_seq_length=cfg.max_seq_length
    )
    enc_before = enc.stats.to_dict()
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(enc.device)
    with EmbeddingCache(Path(cache_dir), enc, batch_size=cfg.batch_size, num_workers=workers) as cache:
        mined, report = _mine(rows, corpus, cfg, enc, cache, source, seed, workers, enc_before)
    report["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 3)  # incl. cache writes
    return mined, report


def _mine(
    rows: pa.Table,
    corpus: pa.Table,
    cfg: DenseConfig,
    enc: Encoder,
    cache: EmbeddingCache,
    source: str,
    seed: int,
    workers: int,
    enc_before: dict,
) -> tuple[pa.Table, dict]:
    queries = _Queries.from_rows(rows)
    n_q, n_rows = len(queries.ids), rows.num_rows
    report = _report_skeleton(source, cfg, enc, n_rows, corpus.num_rows, n_q)

    q_emb = _embed_queries(cache, enc, queries, cfg)

    # One pass over the corpus: encode (or load) a chunk, search it, and note where the
    # positives and the queries' own documents sit so their scores and ids come for free.
    k_search = cfg.top_k + min(queries.max_positives, _MAX_POSITIVE_SLACK) + 1
    searcher = make_searcher(
        cfg.backend, q_emb, k_search, device=enc.device, query_batch_size=cfg.search_batch_size
    )
    doc_prompt = enc.prompt("document") if cfg.document_prompt == "model" else None
    pending_positive: dict[str, list[int]] = {}
    for r, pid in enumerate(rows.column("positive_id").to_pylist()):
        pending_positive.setdefault(pid, []).append(r)
    query_index = {qid: q for q, qid in enumerate(queries.ids)}
    positive_at = np.full(n_rows, -1, dtype=np.int64)  # corpus index of each row's positive
    query_at = np.full((n_q, 1), -1, dtype=np.int64)  # corpus index of the query's own doc
    positive_score = np.full(n_rows, np.nan, dtype=np.float32)
    search_seconds = 0.0
    for start in range(0, corpus.num_rows, cfg.chunk_size):
        chunk = corpus.slice(start, cfg.chunk_size)
        c_emb = cache.embed(chunk.column("text").to_pylist(), prompt=doc_prompt)
        t0 = time.perf_counter()
        searcher.add(c_emb, offset=start)
        search_seconds += time.perf_counter() - t0
        hit_rows, hit_cols = [], []
        for j, doc_id in enumerate(chunk.column("doc_id").to_pylist()):
            found = pending_positive.pop(doc_id, None)
            if found is not None:
                hit_rows.extend(found)
                hit_cols.extend([j] * len(found))
            q = query_index.get(doc_id)
            if q is not None and query_at[q, 0] < 0:
                query_at[q, 0] = start + j
        if hit_rows:
            hr, hc = np.asarray(hit_rows), np.asarray(hit_cols)
            positive_at[hr] = start + hc
            positive_score[hr] = np.einsum("ij,ij->i", q_emb[queries.of_row[hr]], c_emb[hc])
    # Positives the corpus does not hold (it should, but a source may be incomplete).
    missing = np.flatnonzero(positive_at < 0)
    if missing.size:
        texts = rows.column("positive").take(pa.array(missing)).to_pylist()
        p_emb = np.concatenate(
            [cache.embed(texts[i : i + cfg.chunk_size], prompt=doc_prompt) for i in range(0, len(texts), cfg.chunk_size)]
        )
        positive_score[missing] = np.einsum("ij,ij->i", q_emb[queries.of_row[missing]], p_emb)
    t0 = time.perf_counter()
    cand_scores, cand_idx = searcher.result()
    search_seconds += time.perf_counter() - t0
    del q_emb

    # Per query: the corpus indices that are its positives, the lowest positive score.
    positive_idx = _ragged_by_query(queries.of_row, positive_at, n_q, pad=-1)
    min_positive = np.full(n_q, np.inf, dtype=np.float64)
    np.minimum.at(min_positive, queries.of_row, positive_score.astype(np.float64))

    t0 = time.perf_counter()
    chosen_idx, chosen_scores, removed, considered, removed_scores = _filter_and_select(
        cand_scores, cand_idx, corpus, queries, positive_idx, query_at, min_positive, cfg, seed
    )
    filter_seconds = time.perf_counter() - t0

    mined, kept_rows, counts = _assemble(rows, corpus, queries.of_row, chosen_idx, chosen_scores, positive_score, cfg)

    requested = cfg.num_negatives
    short = counts < requested
    report.update(
        {
            "rows_out": int(kept_rows.sum()),
            "positives_not_in_corpus": int(missing.size),
            "search": {"backend": searcher.backend, "k": int(k_search), "seconds": round(search_seconds, 3)},
            "candidates": {
                "retrieved": int((cand_idx >= 0).sum()),
                "considered": int(considered),
                "eligible": int(considered - sum(removed[k] for k in FILTER_ORDER[5:])),
            },
            "removed": {k: int(v) for k, v in removed.items()},
            "negatives": {
                "requested_per_row": requested,
                "total": int(counts[kept_rows].sum()),
                "per_row_histogram": {str(c): int(n) for c, n in zip(*np.unique(counts, return_counts=True))},
            },
            "shortfall": {
                "rows": int(short.sum()),
                "kept": int((short & kept_rows).sum()),
                "dropped": int((short & ~kept_rows).sum()),
                "without_negatives": int((counts == 0).sum()),
            },
            **_score_summary(mined, removed_scores),
        }
    )
    enc_after = enc.stats.to_dict()
    report["encode"] = {
        **cache.stats.to_dict(),
        "batches": enc_after["batches"] - enc_before["batches"],
        "seconds": round(enc_after["seconds"] - enc_before["seconds"], 3),
        "workers": workers,
    }
    report["timing"] = {"filter_select_seconds": round(filter_seconds, 3)}
    return mined, report


def _check_inputs(rows: pa.Table, corpus: pa.Table) -> str:
    need_rows = ("query_id", "positive_id", "query", "positive", "instruction")
    source = "?"
    if "source" in rows.column_names and rows.num_rows:
        sources = rows.column("source").unique().to_pylist()
        if len(sources) > 1:
            raise NvdataError(f"dense mining: rows come from several sources {sources}; mine one source at a time")
        source = sources[0]
    for col in need_rows:
        if col not in rows.column_names:
            raise NvdataError(f"dense mining [{source}]: rows lack column {col!r}")
    for col in ("doc_id", "text"):
        if col not in corpus.column_names:
            raise NvdataError(f"dense mining [{source}]: corpus lacks column {col!r}")
    for col in need_rows:
        if rows.column(col).null_count:
            raise NvdataError(f"dense mining [{source}]: rows have null {col!r}")
    for col in ("doc_id", "text"):
        if corpus.column(col).null_count:
            raise NvdataError(f"dense mining [{source}]: corpus has null {col!r}")
    return source


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
    corpus: pa.Table,
    queries: _Queries,
    positive_idx: np.ndarray,
    query_at: np.ndarray,
    min_positive: np.ndarray,
    cfg: DenseConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """Apply every filter in ``FILTER_ORDER`` and select; returns per-query choices, counts and
    the histogram of the scores each filter removed."""
    n_q, _ = cand_idx.shape
    num = cfg.num_negatives
    chosen_idx = np.full((n_q, num), -1, dtype=np.int64)
    chosen_scores = np.full((n_q, num), np.nan, dtype=np.float32)
    removed = dict.fromkeys(FILTER_ORDER, 0)
    removed_scores = {name: stats.Histogram(*stats.COSINE_RANGE, stats.COSINE_BINS) for name in FILTER_ORDER}
    considered = 0
    texts = corpus.column("text")
    doc_hash = np.zeros(corpus.num_rows, dtype=np.int64)  # 0 = not hashed yet
    seeds = row_seeds(seed, queries.ids) if cfg.sampling == "random" else None
    for start in range(0, n_q, _QUERY_BLOCK):
        sl = slice(start, start + _QUERY_BLOCK)
        idx, scores = cand_idx[sl], cand_scores[sl]
        # Hash each candidate text once per run, only for documents some query retrieved.
        wanted = np.unique(idx[idx >= 0])
        todo = wanted[doc_hash[wanted] == 0]
        if todo.size:
            doc_hash[todo] = [hash_code(t) for t in texts.take(pa.array(todo)).to_pylist()]
        codes = np.where(idx >= 0, doc_hash[np.maximum(idx, 0)], 0)

        alive = idx >= 0
        steps = {
            "positive_id": lambda: filters.excluded_code_mask(idx, positive_idx[sl], pad=-1),
            "query_id": lambda: filters.excluded_code_mask(idx, query_at[sl], pad=-1),
            "positive_text": lambda: filters.excluded_code_mask(codes, queries.positive_hashes[sl], pad=0),
            "query_text": lambda: filters.excluded_code_mask(codes, queries.query_hashes[sl], pad=0),
            "duplicate_candidate": lambda: filters.repeated_code_mask(codes),
        }
        for name, mask_fn in steps.items():
            hit = mask_fn() & alive
            removed[name] += int(hit.sum())
            removed_scores[name].add(scores[hit])
            alive &= ~hit
        # The candidate list is top_k deep once positives and copies are out; the slack
        # fetched to make room for them is not part of it.
        alive &= ~filters.rank_window_mask(alive, 0, cfg.top_k)
        considered += int(alive.sum())
        p = min_positive[sl]
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
            removed_scores[name].add(scores[hit])
            alive &= ~hit

        if cfg.sampling == "top":
            pos = select_top(alive, num)
        else:
            pos = select_random(alive, num, seeds[sl])
        valid = pos >= 0
        safe = np.maximum(pos, 0)
        chosen_idx[sl] = np.where(valid, np.take_along_axis(idx, safe, axis=1), -1)
        chosen_scores[sl] = np.where(valid, np.take_along_axis(scores, safe, axis=1), np.nan)
    return chosen_idx, chosen_scores, removed, considered, removed_scores


def _assemble(
    rows: pa.Table,
    corpus: pa.Table,
    of_row: np.ndarray,
    chosen_idx: np.ndarray,
    chosen_scores: np.ndarray,
    positive_score: np.ndarray,
    cfg: DenseConfig,
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Write the choices into the rows (in order); returns table, kept-row mask, counts."""
    counts = (chosen_idx >= 0).sum(axis=1)[of_row]
    kept = np.ones(rows.num_rows, dtype=bool)
    if cfg.on_shortfall == "drop":
        kept = counts >= cfg.num_negatives
    texts = corpus.column("text")
    neg_chunks, score_chunks = [], []
    for start in range(0, rows.num_rows, _OUTPUT_BLOCK):
        q = of_row[start : start + _OUTPUT_BLOCK]
        idx, sc = chosen_idx[q], chosen_scores[q]
        valid = idx >= 0  # chosen entries are left-aligned, so row-major order is row order
        offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
        values = texts.take(pa.array(idx[valid])).combine_chunks() if valid.any() else pa.array([], pa.string())
        neg_chunks.append(pa.ListArray.from_arrays(offsets, values.cast(pa.string())))
        score_chunks.append(pa.ListArray.from_arrays(offsets, pa.array(sc[valid].astype(np.float32), pa.float32())))
    fmt = schema.FORMATTED
    columns = {
        "negatives": pa.chunked_array(neg_chunks, fmt.field("negatives").type),
        "negative_scores": pa.chunked_array(score_chunks, fmt.field("negative_scores").type),
        "positive_score": pa.array(positive_score.astype(np.float32), fmt.field("positive_score").type),
        "negative_method": pa.array(["dense"] * rows.num_rows, fmt.field("negative_method").type),
    }
    out = rows
    for name, col in columns.items():
        i = out.schema.get_field_index(name)
        field = fmt.field(name)
        out = out.set_column(i, field, col) if i >= 0 else out.append_column(field, col)
    if not kept.all():
        out = out.filter(pa.array(kept))
    return out, kept, counts


def _score_summary(mined: pa.Table, removed_scores: dict) -> dict:
    """``scores`` (quantiles) and ``score_histograms`` (fixed cosine bins) of the positives, the
    kept negatives, their margins, and the candidates each filter removed (``mine.stats``)."""
    pos = mined.column("positive_score").to_numpy(zero_copy_only=False).astype(np.float64)
    negs = mined.column("negative_scores").combine_chunks()
    neg_values = negs.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = negs.value_lengths().to_numpy(zero_copy_only=False)
    margin = np.repeat(pos, lengths) - neg_values  # positive minus each of its row's negatives
    hist = stats.score_histograms(*stats.COSINE_RANGE, stats.COSINE_BINS, positive=pos, negative=neg_values)
    hist["removed"] = {name: h.counts.tolist() for name, h in removed_scores.items() if h.counts.any()}
    return {
        "scores": {name: stats.score_quantiles(v) for name, v in
                   (("positive", pos), ("negative", neg_values), ("margin", margin))},
        "score_histograms": hist,
    }


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
