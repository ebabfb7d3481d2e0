"""Decontaminate stage: a per-batch map from raw rows to the rows no test set contains.

``decontaminate_batches`` is the map (any batch, any order, any worker: a row is dropped or
kept by its own text alone); ``decontaminate_source`` streams one downloaded source through it
and writes ``pairs.parquet`` + ``corpus.parquet`` (retrieval) or ``data.parquet``, plus
``hits.json`` (every dropped row and why) and ``counts.json`` (rows checked / kept / dropped
per table). Memory: one batch and the memory-mapped test index, whatever the source size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import decontam, emit
from nvdata.sources import RawSource
from nvdata.stages.io import iter_batches, write_batches

# Canonical raw fields checked against the test sets, per raw table.
DECONTAM_FIELDS = {
    "pairs": ["query", "positive"],
    "corpus": ["text"],
    "classification": ["text"],
    "clustering": ["text"],
    "sts": ["sentence1", "sentence2"],
}


def raw_tables(raw: RawSource) -> list[tuple[str, Path]]:
    """(kind, raw file) of a downloaded source, in the order they are scanned."""
    if raw.task_type == "retrieval":
        return [("pairs", raw.data_file), ("corpus", raw.corpus_file)]
    return [(raw.task_type, raw.data_file)]


def decontaminate_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    kind: str,
    source: str,
    index: decontam.TestIndex,
    cfg: decontam.DecontamConfig,
    hits: list[dict],
    counts: decontam.DecontamCounts | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield each raw batch of table ``kind`` without its contaminated rows; hits go to ``hits``.

    ``kind`` is ``pairs`` / ``corpus`` (retrieval), ``classification``, ``clustering`` or
    ``sts``; each hit is tagged with it (``hit["table"]``). ``counts`` adds up the rows and
    texts checked.
    """
    id_col = "doc_id" if kind == "corpus" else "row_index"
    start = len(hits)
    for clean in decontam.iter_decontaminate(
        batches, DECONTAM_FIELDS[kind], index=index, cfg=cfg, id_column=id_col, source=source, hits=hits,
        counts=counts,
    ):
        for h in hits[start:]:
            h.setdefault("table", kind)
        start = len(hits)
        yield clean


def decontaminate_source(
    raw: RawSource,
    *,
    index: decontam.TestIndex,
    cfg: decontam.DecontamConfig,
    out: Path,
    batch_rows: int,
) -> dict:
    """Stream every raw table of ``raw`` through :func:`decontaminate_batches` into ``out``.

    Returns ``counts`` (also written to ``out/counts.json``): per table, rows checked, kept,
    dropped, and the texts checked (``nvdata.counts`` names them for the reports).
    """
    hits: list[dict] = []
    counts = {}
    for kind, path in raw_tables(raw):
        schema = pq.read_schema(path)
        checked = pq.ParquetFile(path).metadata.num_rows
        texts = decontam.DecontamCounts()
        kept = write_batches(
            Path(out) / path.name, schema,
            decontaminate_batches(iter_batches(path, batch_rows=batch_rows), kind=kind, source=raw.name,
                                  index=index, cfg=cfg, hits=hits, counts=texts),
        )
        counts[kind] = {"checked": checked, "kept": kept, "dropped": checked - kept,
                        "texts": texts.sources.get(raw.name, {}).get("texts_checked", 0)}
    emit.write_json(Path(out) / "hits.json", hits)
    emit.write_json(Path(out) / "counts.json", counts)
    return counts
