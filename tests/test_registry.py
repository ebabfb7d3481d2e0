import pytest
import yaml

from nvdata.errors import NvdataError
from nvdata.registry import load_registry

NAMES = {
    "retrieval": "msmarco hotpotqa nq paq stackexchange nli squad arguana bioasq fiqa fever",
    "classification": "amazon_reviews amazon_counterfactual banking77 emotion imdb mtop_intent "
                      "toxic_conversations tweet_sentiment",
    "clustering": "arxiv_s2s arxiv_p2p biorxiv_s2s biorxiv_p2p medrxiv_s2s medrxiv_p2p twentynewsgroups",
    "sts": "sts12 sts22 stsbenchmark",
}


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
