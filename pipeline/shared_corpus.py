"""Training on the train qrels of a repo whose test qrels are an MTEB test set (shared corpus).

SciFact and NFCorpus train on ``mteb/scifact`` / ``mteb/nfcorpus``: the very repos MTEB
evaluates on, with one corpus for every split. There the test *queries* and the documents the
test qrels judge relevant are test content by identity, whatever their text. Decontamination
by text (exact / 13-gram / MinHash) catches them when their text is long enough to match; this
step removes them by id as well, so a short or retitled test document cannot slip through:

* a pair whose query id is a test query, or whose positive is a test-relevant document;
* a corpus document that is test-relevant (it would otherwise be mined as a negative).

Each removal is a decontamination hit with ``method: "shared_corpus"`` and the reason in its
evidence ("relevant to test query Q of SciFact (test qrels)"), so the report names every
dropped document and why. It runs after the text-based stage, on what that stage kept.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from nvdata import emit
from nvdata.registry import SourceEntry

METHOD = "shared_corpus"


def shared_test_ids(entry: SourceEntry, cfg, mirror: Path | None,
                    hf_cache: Path | None = None) -> dict[str, dict[str, dict]]:
    """{"query": {id: where}, "document": {id: where}} of the MTEB retrieval test sets stored in
    the same repo as ``entry`` (``where``: test_set, subset, split, test query of a document).
    ``hf_cache``: the ``datasets`` cache for mirror reads (keep it inside the build's cache:
    ``datasets`` may reuse a stale copy of an edited local folder from its default cache)."""
    from nvdata.decontam.testsets import _Loader, resolve_test_sets

    out: dict[str, dict[str, dict]] = {"query": {}, "document": {}}
    if entry.task_type != "retrieval" or entry.layout != "beir" or entry.data_files is not None:
        return out
    for spec in resolve_test_sets(cfg):
        if spec.path != entry.hf_id or spec.kind != "retrieval":
            continue
        loader = _Loader(spec, mirror, hf_cache)
        configs = loader.configs()
        for subset in spec.subsets:
            prefix = "" if subset == "default" else f"{subset}-"
            qrels_cfg = f"{prefix}qrels" if prefix else ("default" if "default" in configs else "qrels")
            for split in spec.splits:
                for b in loader.batches(qrels_cfg, split):
                    q = b["query-id"].cast(pa.string()).to_pylist()
                    d = b["corpus-id"].cast(pa.string()).to_pylist()
                    s = b["score"].cast(pa.float64()).to_pylist()
                    where = {"test_set": spec.task, "subset": subset, "split": split}
                    for qi, di, si in zip(q, d, s):
                        out["query"].setdefault(qi, where)
                        if si is not None and si > 0:
                            out["document"].setdefault(di, {**where, "query": qi})
    return out


def _hit(source: str, table: str, row_id, field: str, item: str, where: dict, reason: str) -> dict:
    return {"source": source, "table": table, "row_id": row_id, "field": field, "action": "drop_row",
            "method": METHOD, "test_set": where["test_set"], "subset": where["subset"], "split": where["split"],
            "test_item_id": item, "test_field": "query" if field == "query_id" else "text",
            "evidence": {"reason": reason}}


def drop_test_pairs(pairs: pa.Table, ids: dict, source: str) -> tuple[pa.Table, list[dict]]:
    """Pairs whose query is a test query or whose positive is test-relevant go; (kept, hits)."""
    qids, dids = ids["query"], ids["document"]
    keep, hits = [], []
    for r, q, p in zip(pairs.column("row_index").to_pylist(), pairs.column("query_id").to_pylist(),
                       pairs.column("positive_id").to_pylist()):
        if q in qids:
            w = qids[q]
            hits.append(_hit(source, "pairs", r, "query_id", q, w,
                             f"query {q} is a test query of {w['test_set']} ({w['split']} qrels)"))
        elif p in dids:
            w = dids[p]
            hits.append(_hit(source, "pairs", r, "positive_id", p, w, f"positive {p} is relevant to test query "
                             f"{w['query']} of {w['test_set']} ({w['split']} qrels)"))
        keep.append(q not in qids and p not in dids)
    return pairs.filter(pa.array(keep, pa.bool_())), hits


def drop_test_documents(corpus: pa.Table, ids: dict, source: str) -> tuple[pa.Table, list[dict]]:
    """Corpus documents the test qrels judge relevant go; (kept, hits)."""
    dids = ids["document"]
    doc_ids = corpus.column("doc_id").to_pylist()
    bad = [d in dids for d in doc_ids]
    hits = [_hit(source, "corpus", d, "doc_id", d, dids[d], f"document {d} is relevant to test query "
                 f"{dids[d]['query']} of {dids[d]['test_set']} ({dids[d]['split']} qrels): shared corpus")
            for d, is_bad in zip(doc_ids, bad) if is_bad]
    return corpus.filter(pc.invert(pa.array(bad, pa.bool_()))), hits


def drop_test_content(pairs: pa.Table, corpus: pa.Table, ids: dict, source: str) -> tuple[pa.Table, pa.Table, list[dict]]:
    """Remove test queries / test-relevant documents by id; (pairs, corpus, hits)."""
    pairs, pair_hits = drop_test_pairs(pairs, ids, source)
    corpus, doc_hits = drop_test_documents(corpus, ids, source)
    return pairs, corpus, pair_hits + doc_hits


def shared_corpus_stage(entry: SourceEntry, clean_dir: Path, dkey: str, recipe, cache: Path,
                        mirror: Path | None) -> tuple[Path, str]:
    """After text decontamination: the same folder layout minus the test content by id
    (hits and counts updated), streamed in record batches. Sources that share no repo with a
    test set pass through."""
    import json

    from nvdata.engine import key_of, stage_folder
    from nvdata.schema import RAW_RETRIEVAL_CORPUS, RAW_RETRIEVAL_PAIRS
    from nvdata.stages.io import batch_rows, iter_batches, table_parts, write_batches

    ids = shared_test_ids(entry, recipe.decontamination, mirror, Path(cache) / "shared_corpus" / "hf")
    if not ids["query"] and not ids["document"]:
        return clean_dir, dkey
    key = key_of(dkey, METHOD, sorted(ids["query"]), sorted(ids["document"]))
    with stage_folder(cache, "shared_corpus", entry.name, key) as (final, tmp):
        if tmp is not None:
            hits: list[dict] = []
            counts = json.loads((clean_dir / "counts.json").read_text())
            for table, schema, drop in (("pairs", RAW_RETRIEVAL_PAIRS, drop_test_pairs),
                                        ("corpus", RAW_RETRIEVAL_CORPUS, drop_test_documents)):
                def kept(table=table, drop=drop):
                    for b in iter_batches(table_parts(clean_dir, table), batch_rows=batch_rows()):
                        t, h = drop(pa.Table.from_batches([b]), ids, entry.name)
                        hits.extend(h)
                        yield t
                rows = write_batches(tmp / f"{table}.parquet", schema, kept())
                counts[table]["dropped"] += counts[table]["kept"] - rows
                counts[table]["kept"] = rows
            emit.write_json(tmp / "hits.json", json.loads((clean_dir / "hits.json").read_text()) + hits)
            emit.write_json(tmp / "counts.json", counts)
    return final, key
