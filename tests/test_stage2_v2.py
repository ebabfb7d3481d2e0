"""`nvdata build --recipe stage2-v2 --sample`: the NV-Embed-v2 mix end to end on the sample mirror.

One build (module-scoped, ~1-2 minutes on 2 CPU cores) serves every check: every obtainable
source of the mix is built, the unobtainable ones are reported with their reason, the v2
siblings of MTEB test sets are decontaminated against their own test sets (planted rows and
the test-relevant documents of a shared BEIR corpus), and --max-rows-per-source caps all.
"""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nvdata.cli import app
from nvdata.paths import sample_mirror_dir
from nvdata.recipe import load_recipe

pytestmark = pytest.mark.slow
V2_SIBLINGS = ("scifact", "nfcorpus", "amazon_polarity", "mtop_domain", "massive_intent",
               "massive_scenario", "reddit_clustering", "reddit_p2p", "stackexchange_clustering")


@pytest.fixture(scope="module")
def v2_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    r = CliRunner().invoke(app, ["build", "--recipe", "stage2-v2", "--sample", "--out", str(root / "out"),
                                 "--cache", str(root / "cache")])
    assert r.exit_code == 0, r.output
    return root / "out", json.loads((root / "out" / "manifest.json").read_text())


def test_every_obtainable_source_of_the_v2_mix_is_built(v2_build, registry):
    out, m = v2_build
    names = {s.name for s in load_recipe("stage2-v2").sources}
    assert set(m["skipped_sources"]) == {n for n in names if not registry[n].available} \
        == {"bioasq", "hover", "stackexchange_p2p"}
    assert set(m["sources"]) == {n for n in names if registry[n].available}
    for name, s in m["sources"].items():
        assert s["rows"] > 0 and s["negatives_per_row"] > 0, name
    shards = pq.read_table(out / "shards", columns=["source", "task_type", "negative_method"])
    methods = {(r["source"], r["negative_method"]) for r in shards.to_pylist()}
    for name in ("miracl", "mrtydi", "scifact", "nfcorpus"):
        assert (name, "dense") in methods, name
    for name in ("massive_intent", "massive_scenario", "mtop_domain", "reddit_clustering",
                 "stackexchange_clustering"):  # the paper's example-based negatives (section 5.2.4)
        assert (name, "example") in methods, name
    assert (("amazon_polarity", "label") in methods) and ("hover" not in m["sources"])


def test_v2_siblings_are_decontaminated_against_their_own_test_sets(v2_build):
    out, _ = v2_build
    plants = [p for p in json.loads((sample_mirror_dir() / "PLANTS.json").read_text())
              if p["source"] in V2_SIBLINGS]
    assert {p["source"] for p in plants} >= {"scifact", "nfcorpus", "massive_intent", "massive_scenario",
                                            "amazon_polarity", "reddit_clustering"}
    report = json.loads((out / "reports" / "decontamination.json").read_text())
    shards = pq.read_table(out / "shards")
    texts = set()
    for col in ("query", "positive"):
        texts |= set(shards.column(col).to_pylist())
    texts |= {t for ts in shards.column("negatives").to_pylist() for t in ts}
    for p in plants:
        hits = [h for h in report["hits"] if h["source"] == p["source"] and h["test_set"] == p["test_task"]]
        assert hits, p
        assert not any(p["text"] in t for t in texts), p


def test_test_relevant_documents_of_a_shared_corpus_are_dropped_and_reported(v2_build):
    """SciFact / NFCorpus train on the train qrels of the very repo MTEB tests on: the corpus is
    shared, so every document the test qrels judge relevant is test content and must go."""
    out, _ = v2_build
    report = json.loads((out / "reports" / "decontamination.json").read_text())
    shards = pq.read_table(out / "shards")
    published = set(shards.column("positive").to_pylist()) | {t for ts in shards.column("negatives").to_pylist() for t in ts}
    for name, task, repo in (("scifact", "SciFact", "mteb/scifact"), ("nfcorpus", "NFCorpus", "mteb/nfcorpus")):
        qrels = pq.read_table(sample_mirror_dir() / repo / "data" / "default" / "test-00000-of-00001.parquet")
        relevant = set(qrels.filter(pc.greater(qrels.column("score"), 0)).column("corpus-id").to_pylist())
        dropped = {h["test_item_id"] for h in report["hits"]
                   if h["source"] == name and h.get("table") == "corpus" and h["test_set"] == task}
        assert relevant <= dropped, (name, relevant - dropped)
        corpus = pq.read_table(sample_mirror_dir() / repo / "data" / "corpus" / "corpus-00000-of-00001.parquet")
        for doc in corpus.filter(pc.is_in(corpus.column("_id"), pa.array(sorted(relevant)))).to_pylist():
            assert not any(doc["text"] in t for t in published), (name, doc["_id"])
        assert report["sources"][name]["tables"]["corpus"]["dropped"] >= len(relevant)


def test_max_rows_per_source_caps_every_source(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: capped\nstage: 2\nsources:\n  banking77: {max_rows: 5}\n  emotion: {}\n  mtop_domain: {}\n")
    r = CliRunner().invoke(app, ["build", "--recipe", str(p), "--sample", "--out", str(tmp_path / "out"),
                                 "--cache", str(tmp_path / "cache"), "--max-rows-per-source", "12"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["max_rows_per_source"] == 12
    assert {n: s["rows"] for n, s in m["sources"].items()} == {"banking77": 5, "emotion": 12, "mtop_domain": 12}
    assert m["sources"]["emotion"]["format"]["capped"] > 0
    r = CliRunner().invoke(app, ["build", "--recipe", str(p), "--sample", "--out", str(tmp_path / "o2"),
                                 "--max-rows-per-source", "0"])
    assert r.exit_code == 2
