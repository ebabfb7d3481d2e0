"""Shared BEIR corpus (SciFact, NFCorpus): test queries and test-relevant documents go by id."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from nvdata.decontam import DecontamConfig
from nvdata.paths import sample_mirror_dir
from nvdata.shared_corpus import drop_test_content, shared_test_ids


def test_shared_ids_are_the_test_qrels_of_the_same_repo(registry):
    ids = shared_test_ids(registry["scifact"], DecontamConfig(), sample_mirror_dir())
    qrels = pq.read_table(sample_mirror_dir() / "mteb/scifact/data/default/test-00000-of-00001.parquet").to_pylist()
    assert set(ids["query"]) == {r["query-id"] for r in qrels}
    assert set(ids["document"]) == {r["corpus-id"] for r in qrels if r["score"] > 0}
    assert ids["document"][qrels[0]["corpus-id"]]["test_set"] == "SciFact"
    # a source that shares no repo with a test set has none
    assert shared_test_ids(registry["msmarco"], DecontamConfig(drop_tasks=("MSMARCO",)), sample_mirror_dir()) \
        == {"query": {}, "document": {}}


def test_drop_test_content_removes_by_id_and_says_why():
    pairs = pa.table({"row_index": [0, 1, 2], "query_id": ["q1", "t-q", "q2"], "query": ["a", "b", "c"],
                      "positive_id": ["d1", "d1", "t-d"], "positive": ["x", "x", "y"]})
    corpus = pa.table({"doc_id": ["d1", "t-d", "d2"], "text": ["x", "y", "z"]})
    where = {"test_set": "SciFact", "subset": "default", "split": "test"}
    ids = {"query": {"t-q": where}, "document": {"t-d": {**where, "query": "t-q"}}}
    p, c, hits = drop_test_content(pairs, corpus, ids, "scifact")
    assert p.column("row_index").to_pylist() == [0] and c.column("doc_id").to_pylist() == ["d1", "d2"]
    assert [(h["table"], h["row_id"], h["method"]) for h in hits] == [
        ("pairs", 1, "shared_corpus"), ("pairs", 2, "shared_corpus"), ("corpus", "t-d", "shared_corpus")]
    assert "relevant to test query t-q of SciFact (test qrels): shared corpus" in hits[2]["evidence"]["reason"]


def test_a_short_test_document_text_matching_misses_is_dropped_by_id(tmp_path, registry):
    """A two-word test-relevant document: too short for n-grams, and a training corpus document
    is `title text`, so exact matching misses it too. The id rule must catch it."""
    from nvdata.build import run_decontaminate_sources
    from nvdata.recipe import load_recipe

    mirror = tmp_path / "mirror"
    shutil.copytree(sample_mirror_dir(), mirror)
    repo = mirror / "mteb/scifact/data"
    corpus = pq.read_table(repo / "corpus/corpus-00000-of-00001.parquet")
    short = pa.Table.from_pylist([{"_id": "t-short", "title": "Glacier melt", "text": "Ice thins."}], schema=corpus.schema)
    pq.write_table(pa.concat_tables([corpus, short]), repo / "corpus/corpus-00000-of-00001.parquet")
    qrels = pq.read_table(repo / "default/test-00000-of-00001.parquet")
    extra = pa.Table.from_pylist([{"query-id": "t-q0000", "corpus-id": "t-short", "score": 1}], schema=qrels.schema)
    pq.write_table(pa.concat_tables([qrels, extra]), repo / "default/test-00000-of-00001.parquet")
    summary = run_decontaminate_sources(load_recipe("stage2-v2"), names=["scifact"], mirror=mirror,
                                        cache=tmp_path / "cache", report_dir=tmp_path / "reports")
    doc = json.loads((tmp_path / "reports" / "decontamination.json").read_text())
    by_id = [h for h in doc["hits"] if h["method"] == "shared_corpus"]
    assert [(h["table"], h["row_id"]) for h in by_id] == [("corpus", "t-short")]
    assert "shared corpus" in by_id[0]["evidence"]["reason"]
    assert "shared corpus" in (tmp_path / "reports" / "decontamination.md").read_text()
    assert summary["by_method"]["shared_corpus"] == 1
