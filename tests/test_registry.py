import pytest
import yaml

from nvdata.errors import NvdataError
from nvdata.registry import load_registry

NAMES = {
    "retrieval": "msmarco hotpotqa nq paq stackexchange nli squad arguana bioasq fiqa fever "
                 "hover scifact nfcorpus miracl mrtydi",
    "classification": "amazon_reviews amazon_counterfactual banking77 emotion imdb mtop_intent "
                      "toxic_conversations tweet_sentiment "
                      "amazon_polarity mtop_domain massive_intent massive_scenario",
    "clustering": "arxiv_s2s arxiv_p2p biorxiv_s2s biorxiv_p2p medrxiv_s2s medrxiv_p2p twentynewsgroups "
                  "reddit_clustering stackexchange_clustering reddit_p2p stackexchange_p2p",
    "sts": "sts12 sts22 stsbenchmark",
}
# NV-Embed-v2's additions (arXiv 2405.17428 v3, section 4.1)
V2_NAMES = ("hover scifact nfcorpus miracl mrtydi amazon_polarity mtop_domain massive_intent "
            "massive_scenario reddit_clustering stackexchange_clustering reddit_p2p stackexchange_p2p").split()


def test_every_source_of_the_mix_is_registered_with_its_task_type(registry):
    for task_type, names in NAMES.items():
        for name in names.split():
            assert registry[name].task_type == task_type, name
    assert len(registry) == sum(len(v.split()) for v in NAMES.values())


def test_fixed_ids(registry):
    assert registry["stsbenchmark"].hf_id == "mteb/stsbenchmark-sts"
    assert registry["stsbenchmark"].split == "train"
    assert registry["banking77"].hf_id == "mteb/banking77"
    assert registry["nq"].hf_id == "sentence-transformers/natural-questions"
    assert registry["nq"].columns == {"query": "query", "positive": "answer"}


def test_gated_source_is_marked_with_a_reason(registry):
    assert registry["bioasq"].available is False
    assert "licence" in registry["bioasq"].unavailable_reason.lower()


def test_v2_sources_without_a_public_training_copy_stay_registered_with_the_reason(registry):
    assert {n for n in V2_NAMES if not registry[n].available} == {"hover", "stackexchange_p2p"}
    assert "supporting_facts" in registry["hover"].unavailable_reason
    assert "only the test split" in registry["stackexchange_p2p"].unavailable_reason


def test_v2_siblings_of_mteb_test_sets_are_in_the_decontamination_test_sets(registry):
    """Every v2 source whose Hub repo is an MTEB(eng, v1) test set (or built from one) is
    decontaminated against that test set: the test set must be among those indexed."""
    from nvdata.decontam import DecontamConfig
    from nvdata.decontam.testsets import resolve_test_sets

    tasks = {s.task: s for s in resolve_test_sets(DecontamConfig())}
    siblings = {"scifact": "SciFact", "nfcorpus": "NFCorpus", "amazon_polarity": "AmazonPolarityClassification",
                "mtop_domain": "MTOPDomainClassification", "massive_intent": "MassiveIntentClassification",
                "massive_scenario": "MassiveScenarioClassification", "reddit_clustering": "RedditClustering",
                "reddit_p2p": "RedditClusteringP2P", "stackexchange_clustering": "StackExchangeClustering",
                "stackexchange_p2p": "StackExchangeClusteringP2P"}
    for name, task in siblings.items():
        assert task in tasks, task
        if registry[name].hf_id == tasks[task].path:  # same repo: train on another split
            assert registry[name].split not in tasks[task].splits, name


def test_sources_command_lists_the_v2_names():
    from typer.testing import CliRunner

    from nvdata.cli import app

    r = CliRunner().invoke(app, ["sources"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for name in V2_NAMES:
        assert name in r.output, name


def test_every_entry_has_licence_and_citation(registry):
    for e in registry.values():
        assert e.licence and e.citation, e.name


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["nq"].pop("hf_id"), "missing required key 'hf_id'"),
        (lambda s: s["nq"].update(task_type="ranking"), "nq'.task_type"),
        (lambda s: s["nq"].update(colums={}), "unknown key"),
        (lambda s: s["nq"]["columns"].pop("positive"), "missing mapping for ['positive']"),
        (lambda s: s["banking77"].update(layout="beir"), "only for retrieval"),
        (lambda s: s["miracl"].update(task_type="clustering"), "'passages' is only for retrieval"),
        (lambda s: s["stackexchange_clustering"].update(task_type="classification"), "only for clustering"),
    ],
)
def test_bad_registry_is_rejected_naming_source_and_key(tmp_path, mutate, message):
    from nvdata.registry import REGISTRY_FILE

    doc = yaml.safe_load(REGISTRY_FILE.read_text())
    mutate(doc["sources"])
    p = tmp_path / "reg.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(NvdataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_registry(p)


def test_passages_and_clusters_layouts_map_rows_and_refuse_bad_ones(registry):
    import pyarrow as pa

    from nvdata.layouts import explode_cluster_sets, map_passages

    passage = pa.struct([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])
    batch = pa.table({"query_id": ["7"], "query": ["who wrote it"],
                      "positive_passages": pa.array([[{"docid": "a", "title": "T", "text": "x"},
                                                      {"docid": "b", "title": "", "text": "y"}]], pa.list_(passage)),
                      "negative_passages": pa.array([[{"docid": "a", "title": "T", "text": "x"},
                                                      {"docid": "c", "title": None, "text": "z"}]], pa.list_(passage))})
    pairs, docs = next(map_passages(registry["miracl"], iter([batch])))
    assert pairs.column("positive").to_pylist() == ["T x", "y"] and pairs.column("query_id").to_pylist() == ["7", "7"]
    assert docs.column("doc_id").to_pylist() == ["a", "b", "c"]  # deduplicated by docid
    empty = batch.set_column(2, "positive_passages", pa.array([[]], pa.list_(passage)))
    with pytest.raises(NvdataError, match="row 0: field 'positive_passages' has no positive passage"):
        list(map_passages(registry["miracl"], iter([empty])))
    sets = pa.table({"sentences": [["a", "b"], ["c"]], "labels": [["x", "y"], ["x"]]})
    flat = next(explode_cluster_sets(registry["stackexchange_clustering"], iter([sets])))
    assert flat.column("sentences").to_pylist() == ["a", "b", "c"] and flat.column("labels").to_pylist() == ["x", "y", "x"]
    bad = pa.table({"sentences": [["a", "b"]], "labels": [["x"]]})
    with pytest.raises(NvdataError, match="cluster set 0"):
        list(explode_cluster_sets(registry["stackexchange_clustering"], iter([bad])))
