"""Download: each registry source -> ``datasets.load_dataset`` -> canonical raw Parquet cache.

The same ``load_dataset`` call serves the Hub and a local mirror (``DIR/<org>/<name>``, laid out
as ``huggingface-cli download --repo-type dataset`` leaves it), so air-gapped clusters and the
tests run the real loading code. Every source is read as a stream of Arrow batches and written
incrementally, so a 64M-row source never sits in memory.

Cache layout: ``CACHE/raw/<source>-<key>/`` where ``key`` hashes what the download depends on
(Hub id, config, split, revision, column mapping, limit, the mirror's path and its files' sizes
and mtimes); the CLI's ``CACHE`` is ``nvdata.paths.default_cache_dir()`` (``$NVDATA_CACHE``).
Inside: ``pairs.parquet`` + ``corpus.parquet`` (retrieval) or ``data.parquet`` (other task types), and ``meta.json``
written last. The folder is built under a temp name and renamed, so an interrupted download
leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import layouts
from nvdata.dedup import FirstSeen, id_key
from nvdata.errors import NvdataError
from nvdata.fsutil import mirror_fingerprint, staged_dir
from nvdata.registry import SourceEntry
from nvdata.schema import (
    RAW_CLASSIFICATION,
    RAW_CLUSTERING,
    RAW_RETRIEVAL_CORPUS,
    RAW_RETRIEVAL_PAIRS,
    RAW_STS,
)
from nvdata.text import content_id

BATCH_ROWS = 10_000
# With --limit, a BEIR corpus keeps every positive plus this many other documents per pair, so
# the miner still has a realistic pool without streaming an 8.8M-passage corpus.
LIMIT_CORPUS_FACTOR = 50
CACHE_FORMAT = 1


@dataclass(frozen=True)
class RawSource:
    """A downloaded source: where its canonical raw tables are."""

    name: str
    task_type: str
    path: Path
    rows: int
    cached: bool  # True when this call reused an earlier download

    @property
    def data_file(self) -> Path:
        return self.path / ("pairs.parquet" if self.task_type == "retrieval" else "data.parquet")

    @property
    def corpus_file(self) -> Path | None:
        return self.path / "corpus.parquet" if self.task_type == "retrieval" else None

    def read(self) -> pa.Table:
        return pq.read_table(self.data_file)

    def read_corpus(self) -> pa.Table:
        if self.corpus_file is None:
            raise NvdataError(f"source {self.name!r} is not a retrieval source: it has no corpus")
        return pq.read_table(self.corpus_file)


# -- loading ------------------------------------------------------------------------------


def repo_location(entry: SourceEntry, mirror: Path | None) -> str:
    """The ``path`` argument for ``load_dataset``: a Hub id, or the mirror's copy of it."""
    if mirror is None:
        return entry.hf_id
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise NvdataError(f"mirror directory {mirror} does not exist")
    local = mirror / entry.hf_id
    if not local.is_dir():
        raise NvdataError(
            f"source {entry.name!r}: {entry.hf_id} is not in the mirror (expected {local}/); "
            "see `nvdata sample-mirror` for the layout"
        )
    return str(local)


def stream_split(
    entry: SourceEntry, config: str | None, split: str, mirror: Path | None
) -> Iterator[pa.Table]:
    """Yield the split as Arrow tables of up to BATCH_ROWS rows, straight from load_dataset."""
    import datasets

    kwargs = {"split": split, "streaming": True}
    if entry.data_files is not None:  # a user's local file (nvdata.custom): no Hub, no mirror
        path, config = entry.file_format, None
        kwargs["data_files"] = {split: entry.data_files}
    else:
        path = repo_location(entry, mirror)
        if mirror is None and entry.revision:
            kwargs["revision"] = entry.revision  # a mirror is one snapshot: no revisions to pick
    try:
        ds = _streaming_dataset(path, config, **kwargs)
    except NvdataError:
        raise
    except Exception as e:  # datasets raises many types; name the source in every one
        raise NvdataError(
            f"source {entry.name!r}: cannot load {path} config={config!r} split={split!r}: "
            f"{type(e).__name__}: {e}"
        ) from e
    try:
        for batch in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    except Exception as e:
        raise NvdataError(
            f"source {entry.name!r}: reading {path} config={config!r} split={split!r} failed: "
            f"{type(e).__name__}: {e}"
        ) from e


def _streaming_dataset(path: str, config: str | None, **kwargs):
    """``datasets.load_dataset(..., streaming=True)``, resharded: a Parquet source becomes one
    shard per row group (``IterableDataset.reshard``; same rows, same order). As one shard per
    file, Arrow's scanner decoded a whole file ahead of the reader (pyarrow 26: the memory of an
    800k-row download held ~400 MiB of decoded rows, the rest of the file; ``bench_scale.py``);
    per row group it holds one. Other formats have nothing to split and stream as before."""
    import datasets

    ds = datasets.load_dataset(path, config, **kwargs)
    return ds.reshard() if hasattr(ds, "reshard") else ds


def _limited(batches: Iterator[pa.Table], limit: int | None) -> Iterator[pa.Table]:
    seen = 0
    for b in batches:
        if limit is not None and seen + b.num_rows >= limit:
            yield b.slice(0, limit - seen)
            return
        seen += b.num_rows
        yield b


def _column(table: pa.Table, name: str, entry: SourceEntry, what: str) -> list:
    if name not in table.column_names:
        raise NvdataError(
            f"source {entry.name!r}: column {name!r} (mapped to {what!r}) is missing; "
            f"the data has {table.column_names}"
        )
    return table.column(name).to_pylist()


def _text(value, entry: SourceEntry, row: int, field: str) -> str:
    if value is None:
        raise NvdataError(f"source {entry.name!r}, row {row}: field {field!r} is null")
    if not isinstance(value, str):
        raise NvdataError(
            f"source {entry.name!r}, row {row}: field {field!r} must be text, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


# -- per task type mapping ------------------------------------------------------------------


def _map_pairs(entry, batches) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Pair-only retrieval: rows + the distinct positives as the candidate pool."""
    qcol, pcol = entry.columns["query"], entry.columns["positive"]
    seen_docs = FirstSeen()  # 12 bytes per document, no Python object per row
    row = 0
    for b in batches:
        queries, positives = _column(b, qcol, entry, "query"), _column(b, pcol, entry, "positive")
        out = {k: [] for k in RAW_RETRIEVAL_PAIRS.names}
        for q, p in zip(queries, positives):
            q, p = _text(q, entry, row, qcol), _text(p, entry, row, pcol)
            out["row_index"].append(row)
            out["query_id"].append(content_id(q))
            out["query"].append(q)
            out["positive_id"].append(content_id(p))
            out["positive"].append(p)
            row += 1
        new = seen_docs.keep_new([id_key(pid) for pid in out["positive_id"]])
        docs = {"doc_id": [d for d, k in zip(out["positive_id"], new) if k],
                "text": [t for t, k in zip(out["positive"], new) if k]}
        yield (
            pa.table(out, schema=RAW_RETRIEVAL_PAIRS),
            pa.table(docs, schema=RAW_RETRIEVAL_CORPUS),
        )


def _beir_doc_text(title, text) -> str:
    return f"{title} {text}" if title else text


def _download_beir(entry, mirror, limit, pairs_writer, corpus_writer) -> int:
    """BEIR layout: qrels (train, score > 0) joined to queries and corpus by id."""
    qrels: list[tuple[str, str]] = []
    for b in stream_split(entry, "default", entry.split, mirror):
        qids = _column(b, "query-id", entry, "query-id")
        cids = _column(b, "corpus-id", entry, "corpus-id")
        scores = _column(b, "score", entry, "score")
        for q, c, s in zip(qids, cids, scores):
            if s is not None and float(s) > 0:
                qrels.append((str(q), str(c)))
                if limit is not None and len(qrels) >= limit:
                    break
        if limit is not None and len(qrels) >= limit:
            break
    if not qrels:
        raise NvdataError(f"source {entry.name!r}: split {entry.split!r} has no positive qrels")
    want_q = {q for q, _ in qrels}
    want_d = {c for _, c in qrels}
    queries: dict[str, str] = {}
    for b in stream_split(entry, "queries", "queries", mirror):
        for qid, text in zip(_column(b, "_id", entry, "_id"), _column(b, "text", entry, "text")):
            if str(qid) in want_q:
                queries[str(qid)] = text
    positives: dict[str, str] = {}
    extra_budget = None if limit is None else limit * LIMIT_CORPUS_FACTOR
    row = 0
    for b in stream_split(entry, "corpus", "corpus", mirror):
        ids = _column(b, "_id", entry, "_id")
        texts = _column(b, "text", entry, "text")
        titles = b.column("title").to_pylist() if "title" in b.column_names else [None] * len(ids)
        keep = {"doc_id": [], "text": []}
        for did, title, text in zip(ids, titles, texts):
            did = str(did)
            is_pos = did in want_d
            if not is_pos and extra_budget is not None:
                if extra_budget <= 0:
                    row += 1
                    continue
                extra_budget -= 1
            doc = _beir_doc_text(title, _text(text, entry, row, "corpus.text"))
            if is_pos:
                positives[did] = doc
            keep["doc_id"].append(did)
            keep["text"].append(doc)
            row += 1
        corpus_writer.write_table(pa.table(keep, schema=RAW_RETRIEVAL_CORPUS))
    out = {k: [] for k in RAW_RETRIEVAL_PAIRS.names}
    for i, (q, c) in enumerate(qrels):
        if q not in queries:
            raise NvdataError(f"source {entry.name!r}, qrels row {i}: query-id {q!r} not in queries")
        if c not in positives:
            raise NvdataError(f"source {entry.name!r}, qrels row {i}: corpus-id {c!r} not in corpus")
        out["row_index"].append(i)
        out["query_id"].append(q)
        out["query"].append(_text(queries[q], entry, i, "queries.text"))
        out["positive_id"].append(c)
        out["positive"].append(positives[c])
        if len(out["row_index"]) >= BATCH_ROWS:
            pairs_writer.write_table(pa.table(out, schema=RAW_RETRIEVAL_PAIRS))
            out = {k: [] for k in RAW_RETRIEVAL_PAIRS.names}
    pairs_writer.write_table(pa.table(out, schema=RAW_RETRIEVAL_PAIRS))
    return len(qrels)


def _map_classification(entry, batches) -> Iterator[pa.Table]:
    tcol, lcol = entry.columns["text"], entry.columns["label"]
    ltcol = entry.columns.get("label_text")
    names = entry.label_names
    row = 0
    for b in batches:
        texts, labels = _column(b, tcol, entry, "text"), _column(b, lcol, entry, "label")
        label_texts = _column(b, ltcol, entry, "label_text") if ltcol else [None] * len(texts)
        out = {k: [] for k in RAW_CLASSIFICATION.names}
        for t, lab, lt in zip(texts, labels, label_texts):
            if lab is None:
                raise NvdataError(f"source {entry.name!r}, row {row}: field {lcol!r} is null")
            if lt is None:
                if names is None:
                    raise NvdataError(
                        f"source {entry.name!r}, row {row}: no label text (map a label_text "
                        "column or give label_names in the registry)"
                    )
                lt = names[int(lab)]
            out["row_index"].append(row)
            out["text"].append(_text(t, entry, row, tcol))
            out["label"].append(str(lab))
            out["label_text"].append(_text(lt, entry, row, ltcol or "label_names"))
            row += 1
        yield pa.table(out, schema=RAW_CLASSIFICATION)


def _map_clustering(entry, batches) -> Iterator[pa.Table]:
    tcol, ccol = entry.columns["text"], entry.columns["categories"]
    row = 0
    for b in batches:
        texts, cats = _column(b, tcol, entry, "text"), _column(b, ccol, entry, "categories")
        out = {k: [] for k in RAW_CLUSTERING.names}
        for t, c in zip(texts, cats):
            if c is None:
                raise NvdataError(f"source {entry.name!r}, row {row}: field {ccol!r} is null")
            if isinstance(c, list):
                cs = [str(x) for x in c if x is not None and str(x).strip()]
            elif entry.categories_sep:
                cs = [x for x in str(c).split(entry.categories_sep) if x.strip()]
            else:
                cs = [str(c)]
            if not cs:
                raise NvdataError(f"source {entry.name!r}, row {row}: field {ccol!r} is empty")
            out["row_index"].append(row)
            out["text"].append(_text(t, entry, row, tcol))
            out["categories"].append(cs)
            row += 1
        yield pa.table(out, schema=RAW_CLUSTERING)


def _score(value, entry: SourceEntry, row: int, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NvdataError(
            f"source {entry.name!r}, row {row}: field {field!r} must be a number, "
            f"got {type(value).__name__} {value!r}"
        )
    if math.isnan(value):
        raise NvdataError(f"source {entry.name!r}, row {row}: field {field!r} is NaN")
    return float(value)


def _map_sts(entry, batches) -> Iterator[pa.Table]:
    """Gold scores are mapped linearly from the source's ``score_range`` onto 0-5."""
    c1, c2, cs = (entry.columns[k] for k in ("sentence1", "sentence2", "score"))
    lo, hi = entry.score_range
    row = 0
    for b in batches:
        s1, s2 = _column(b, c1, entry, "sentence1"), _column(b, c2, entry, "sentence2")
        sc = _column(b, cs, entry, "score")
        out = {k: [] for k in RAW_STS.names}
        for a, bb, s in zip(s1, s2, sc):
            out["row_index"].append(row)
            out["sentence1"].append(_text(a, entry, row, c1))
            out["sentence2"].append(_text(bb, entry, row, c2))
            raw_score = _score(s, entry, row, cs)
            if not lo <= raw_score <= hi:
                raise NvdataError(f"source {entry.name!r}, row {row}: field {cs!r} = {raw_score} "
                                  f"is outside the registry's score_range [{lo}, {hi}]")
            out["score"].append((raw_score - lo) * 5.0 / (hi - lo))
            row += 1
        yield pa.table(out, schema=RAW_STS)


_TABLE_MAPPERS = {
    "classification": (_map_classification, RAW_CLASSIFICATION),
    "clustering": (_map_clustering, RAW_CLUSTERING),
    "sts": (_map_sts, RAW_STS),
}


# -- the download stage -----------------------------------------------------------------------


def download_key(entry: SourceEntry, mirror: Path | None, limit: int | None) -> str:
    """Hash of everything the cached raw tables depend on: the registry entry (Hub id, config,
    split, revision, mapping), ``limit``, and the mirror's path and files (``mirror_fingerprint``:
    path, size, mtime of each file, as the test-set index keys on)."""
    ident = {
        "format": CACHE_FORMAT,
        "hf_id": entry.hf_id,
        "config": entry.config,
        "split": entry.split,
        "revision": entry.revision,
        "layout": entry.layout,
        "columns": entry.columns,
        "categories_sep": entry.categories_sep,
        "label_names": list(entry.label_names or ()),
        "score_range": list(entry.score_range),
        "limit": limit,
        "mirror": str(Path(mirror).resolve()) if mirror else None,
        # the mirror's files, not just its path: a snapshot updated in place is re-read
        "mirror_files": mirror_fingerprint(Path(mirror) / entry.hf_id) if mirror else None,
    }
    blob = json.dumps(ident, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def obtainable(entry: SourceEntry, mirror: Path | None) -> bool:
    """Whether the source can be loaded: public, or gated but present in the mirror."""
    return entry.available or (mirror is not None and (Path(mirror) / entry.hf_id).is_dir())


def _cached_source(entry: SourceEntry, path: Path) -> RawSource | None:
    """The finished download at ``path`` (its meta.json is written last), if there is one."""
    meta = path / "meta.json"
    if meta.is_file():
        rows = json.loads(meta.read_text())["rows"]
        return RawSource(entry.name, entry.task_type, path, rows, cached=True)
    return None


def download_source(
    entry: SourceEntry,
    *,
    cache: Path,
    mirror: Path | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RawSource:
    """Fetch one source into the raw cache (or reuse it) and return where it is.

    ``progress(n)`` is called with the number of rows written so far, after every batch.
    """
    if not obtainable(entry, mirror):
        raise NvdataError(f"source {entry.name!r} is not publicly available: {entry.unavailable_reason}")
    if limit is not None and limit <= 0:
        raise NvdataError(f"--limit must be positive, got {limit}")
    final = Path(cache) / "raw" / f"{entry.name}-{download_key(entry, mirror, limit)}"
    if not force:
        hit = _cached_source(entry, final)
        if hit is not None:
            return hit
    # --force swaps the old copy out only once the new one is complete
    with staged_dir(final, prefix=f".tmp-{entry.name}-") as tmp:
        rows = _write_raw(entry, tmp, mirror, limit, progress or (lambda n: None))
        if rows == 0:
            raise NvdataError(
                f"source {entry.name!r}: split {entry.split!r} of {entry.hf_id} is empty"
            )
        meta = {"source": entry.name, "rows": rows, "key": final.name, **entry.to_dict(),
                "limit": limit, "mirror": str(mirror) if mirror else None}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return RawSource(entry.name, entry.task_type, final, rows, cached=False)


def _write_raw(entry: SourceEntry, out: Path, mirror: Path | None, limit: int | None,
               progress: Callable[[int], None]) -> int:
    if entry.task_type == "retrieval":
        with pq.ParquetWriter(out / "pairs.parquet", RAW_RETRIEVAL_PAIRS, compression="zstd") as pw, \
             pq.ParquetWriter(out / "corpus.parquet", RAW_RETRIEVAL_CORPUS, compression="zstd") as cw:
            if entry.layout == "beir":
                rows = _download_beir(entry, mirror, limit, pw, cw)
                progress(rows)
                return rows
            rows = 0
            batches = _limited(stream_split(entry, entry.config, entry.split, mirror), limit)
            mapper = layouts.map_passages if entry.layout == "passages" else _map_pairs
            for pairs, docs in mapper(entry, batches):
                pw.write_table(pairs)
                cw.write_table(docs)
                rows += pairs.num_rows
                progress(rows)
            return rows
    mapper, schema = _TABLE_MAPPERS[entry.task_type]
    rows = 0
    with pq.ParquetWriter(out / "data.parquet", schema, compression="zstd") as w:
        batches = _limited(stream_split(entry, entry.config, entry.split, mirror), limit)
        if entry.layout == "clusters":  # whole cluster sets per row -> one text per row
            batches = layouts.explode_cluster_sets(entry, batches)
        for t in mapper(entry, batches):
            w.write_table(t)
            rows += t.num_rows
            progress(rows)
    return rows
