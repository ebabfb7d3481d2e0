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
import pyarrow.parquet as pq

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


def drop_test_content(pairs: pa.Table, corpus: pa.Table, ids: dict, source: str) -> tuple[pa.Table, pa.Table, list[dict]]:
    """Remove test queries / test-relevant documents by id; (pairs, corpus, hits)."""
    hits: list[dict] = []
    qids, dids = ids["query"], ids["document"]
    if not qids and not dids:
        return pairs, corpus, hits

    def hit(table: str, row_id, field: str, item: str, where: dict, reason: str) -> dict:
        return {"source": source, "table": table, "row_id": row_id, "field": field, "action": "drop_row",
                "method": METHOD, "test_set": where["test_set"], "subset": where["subset"], "split": where["split"],
                "test_item_id": item, "test_field": "query" if field == "query_id" else "text",
                "evidence": {"reason": reason}}

    keep = []
    for r, q, p in zip(pairs.column("row_index").to_pylist(), pairs.column("query_id").to_pylist(),
                       pairs.column("positive_id").to_pylist()):
        if q in qids:
            w = qids[q]
            hits.append(hit("pairs", r, "query_id", q, w, f"query {q} is a test query of {w['test_set']} ({w['split']} qrels)"))
        elif p in dids:
            w = dids[p]
            hits.append(hit("pairs", r, "positive_id", p, w, f"positive {p} is relevant to test query {w['query']} "
                                                             f"of {w['test_set']} ({w['split']} qrels)"))
        keep.append(q not in qids and p not in dids)
    pairs = pairs.filter(pa.array(keep, pa.bool_()))
    doc_ids = corpus.column("doc_id").to_pylist()
    bad = [d in dids for d in doc_ids]
    for d, is_bad in zip(doc_ids, bad):
        if is_bad:
            w = dids[d]
            hits.append(hit("corpus", d, "doc_id", d, w, f"document {d} is relevant to test query {w['query']} "
                                                       f"of {w['test_set']} ({w['split']} qrels): shared corpus"))
    corpus = corpus.filter(pc.invert(pa.array(bad, pa.bool_())))
    return pairs, corpus, hits


def shared_corpus_stage(entry: SourceEntry, clean_dir: Path, dkey: str, recipe, cache: Path,
                        mirror: Path | None) -> tuple[Path, str]:
    """After text decontamination: the same folder layout minus the test content by id
    (hits and counts updated). Sources that share no repo with a test set pass through."""
    from nvdata.engine import key_of, stage_folder

    ids = shared_test_ids(entry, recipe.decontamination, mirror, Path(cache) / "shared_corpus" / "hf")
    if not ids["query"] and not ids["document"]:
        return clean_dir, dkey
    key = key_of(dkey, METHOD, sorted(ids["query"]), sorted(ids["document"]))
    with stage_folder(cache, "shared_corpus", entry.name, key) as (final, tmp):
        if tmp is not None:
            import json

            pairs, corpus, hits = drop_test_content(pq.read_table(clean_dir / "pairs.parquet"),
                                                    pq.read_table(clean_dir / "corpus.parquet"), ids, entry.name)
            pq.write_table(pairs, tmp / "pairs.parquet", compression="zstd")
            pq.write_table(corpus, tmp / "corpus.parquet", compression="zstd")
            counts = json.loads((clean_dir / "counts.json").read_text())
            for table, t in (("pairs", pairs), ("corpus", corpus)):
                c = counts[table]
                c["dropped"] += c["kept"] - t.num_rows
                c["kept"] = t.num_rows
            emit.write_json(tmp / "hits.json", json.loads((clean_dir / "hits.json").read_text()) + hits)
            emit.write_json(tmp / "counts.json", counts)
    return final, key
