"""Hub layouts beyond one flat table: nested passage lists and whole cluster sets.

Two shapes the NV-Embed-v2 sources come in (registry ``layout``):

- ``passages``: one row per query with a list of positive passages and, optionally, a list of
  judged negative passages, each passage a ``{docid, title, text}`` struct (Tevatron's format,
  used by Mr. TyDi and Cohere's MIRACL copies). Each positive gives one (query, positive) pair;
  the candidate pool is every passage seen, deduplicated by docid.
- ``clusters``: one row per cluster set, a list of texts and a parallel list of labels (MTEB's
  clustering layout, e.g. mteb/stackexchange-clustering). Exploded to one (text, label) row
  each, which the flat clustering mapper then reads.

Both are streaming generators over Arrow batches, like the mappers in ``nvdata.sources``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from nvdata.dedup import FirstSeen, id_key
from nvdata.errors import NvdataError
from nvdata.registry import SourceEntry
from nvdata.schema import RAW_RETRIEVAL_CORPUS, RAW_RETRIEVAL_PAIRS


def _passage(p, entry: SourceEntry, row: int, field: str) -> tuple[str, str]:
    """(docid, text) of one passage struct; the title, when present, leads the text (as BEIR)."""
    if not isinstance(p, dict) or p.get("text") is None:
        raise NvdataError(f"source {entry.name!r}, row {row}: {field!r} holds a passage without text: {p!r}")
    if not isinstance(p["text"], str):
        raise NvdataError(f"source {entry.name!r}, row {row}: {field!r} passage text must be text, got {p['text']!r}")
    docid = p.get("docid")
    if docid is None:
        raise NvdataError(f"source {entry.name!r}, row {row}: {field!r} holds a passage without docid")
    title = p.get("title")
    return str(docid), (f"{title} {p['text']}" if title else p["text"])


def map_passages(entry: SourceEntry, batches: Iterator[pa.Table]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """``passages`` layout -> (pairs, new corpus documents) per batch, schema.RAW_RETRIEVAL_*.

    Pairs are numbered in stream order (``row_index``), one per positive passage; a query with
    no positive passage is an error naming the row (it would silently vanish otherwise).
    """
    qcol, pcol = entry.columns["query"], entry.columns["positive"]
    ncol = entry.columns.get("negatives")
    seen = FirstSeen()  # 12 bytes per passage id, no Python object per passage
    pair_no = 0
    row = 0
    for b in batches:
        for col in (qcol, pcol) + ((ncol,) if ncol else ()):
            if col not in b.column_names:
                raise NvdataError(f"source {entry.name!r}: column {col!r} is missing; the data has {b.column_names}")
        queries = b.column(qcol).to_pylist()
        positives = b.column(pcol).to_pylist()
        negatives = b.column(ncol).to_pylist() if ncol else [None] * len(queries)
        ids = b.column("query_id").to_pylist() if "query_id" in b.column_names else [None] * len(queries)
        pairs = {k: [] for k in RAW_RETRIEVAL_PAIRS.names}
        docs = {"doc_id": [], "text": []}  # every passage of the batch; first sightings kept below

        def add_doc(docid: str, text: str) -> None:
            docs["doc_id"].append(docid)
            docs["text"].append(text)

        for q, pos, neg, qid in zip(queries, positives, negatives, ids):
            if not isinstance(q, str):
                raise NvdataError(f"source {entry.name!r}, row {row}: field {qcol!r} must be text, got {q!r}")
            if not pos:
                raise NvdataError(f"source {entry.name!r}, row {row}: field {pcol!r} has no positive passage")
            for p in pos:
                docid, text = _passage(p, entry, row, pcol)
                add_doc(docid, text)
                pairs["row_index"].append(pair_no)
                pairs["query_id"].append(str(qid) if qid is not None else f"q{row}")
                pairs["query"].append(q)
                pairs["positive_id"].append(docid)
                pairs["positive"].append(text)
                pair_no += 1
            for p in neg or ():
                add_doc(*_passage(p, entry, row, ncol))
            row += 1
        new = seen.keep_new([id_key(d) for d in docs["doc_id"]])
        docs = {k: [v for v, keep in zip(vals, new) if keep] for k, vals in docs.items()}
        yield pa.table(pairs, schema=RAW_RETRIEVAL_PAIRS), pa.table(docs, schema=RAW_RETRIEVAL_CORPUS)


def explode_cluster_sets(entry: SourceEntry, batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``clusters`` layout -> flat tables with the same two column names, one text per row."""
    tcol, ccol = entry.columns["text"], entry.columns["categories"]
    row = 0
    for b in batches:
        for col in (tcol, ccol):
            if col not in b.column_names:
                raise NvdataError(f"source {entry.name!r}: column {col!r} is missing; the data has {b.column_names}")
        texts, labels = [], []
        for sents, labs in zip(b.column(tcol).to_pylist(), b.column(ccol).to_pylist()):
            if not isinstance(sents, list) or not isinstance(labs, list) or len(sents) != len(labs):
                raise NvdataError(
                    f"source {entry.name!r}, cluster set {row}: {tcol!r} and {ccol!r} must be lists "
                    "of the same length")
            texts.extend(sents)
            labels.extend(None if lab is None else str(lab) for lab in labs)
            row += 1
        yield pa.table({tcol: pa.array(texts, pa.string()), ccol: pa.array(labels, pa.string())})
