"""Recipes: built-ins load, every key validated, errors name the key."""

import pytest
import yaml

from nvdata.errors import NvdataError
from nvdata.recipe import builtin_recipes, load_recipe


def test_builtin_recipes_load_and_match_the_paper_stages(registry):
    assert {"stage1", "stage2", "stage2-v2"} <= set(builtin_recipes())
    s1, s2, v2 = load_recipe("stage1"), load_recipe("stage2"), load_recipe("stage2-v2")
    assert s1.stage == 1 and s1.in_batch_negatives
    assert {registry[s.name].task_type for s in s1.sources} == {"retrieval"}
    assert s2.stage == 2 and not s2.in_batch_negatives
    assert {registry[s.name].task_type for s in s2.sources} == {"retrieval", "classification", "clustering", "sts"}
    assert {s.name for s in v2.sources} == set(registry)  # v2: the whole registry, v1 + v2 additions
    assert len(s2.sources) == 29 and {s.name for s in s2.sources} < set(registry)
    assert v2.sts_method == s2.sts_method == "bm25"  # the seeds' rule stays the default
    assert not v2.test_similarity.enabled and v2.test_similarity.threshold is None
    assert s2.format.to_dict()["classification_mode"] == "label"
    assert v2.format.to_dict()["classification_mode"] == "example"
    assert s1.config_hash() != s2.config_hash()
    from nvdata.train import TrainConfig

    # stage 2 blends tasks in each batch (the paper, section 2.2); stage 1 keeps sources apart
    assert TrainConfig.from_dict(s1.train).batch_mode == "source"
    assert TrainConfig.from_dict(s2.train).batch_mode == TrainConfig.from_dict(v2.train).batch_mode == "mixed"


def _write(tmp_path, doc):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


BASE = {"name": "t", "stage": 2, "sources": ["banking77", "sts12"]}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"sorces": ["nq"]}, "sorces"),
        ({"sources": ["banking77", "no_such_source"]}, "sources.no_such_source"),
        ({"sources": {"banking77": {"max_rows": 0}}}, "sources.banking77.max_rows"),
        ({"sources": {"banking77": {"cap": 3}}}, "sources.banking77.cap"),
        ({"sources": {"banking77": {"limit": -1}}}, "sources.banking77.limit"),
        ({"stage": 3}, "stage"),
        ({"seed": "x"}, "seed"),
        ({"in_batch_negatives": "yes"}, "in_batch_negatives"),
        ({"mining": {"dense": {"num_negatives": "many"}}}, "mining.dense.num_negatives"),
        ({"mining": {"dense": {"bogus": 1}}}, "mining.dense.bogus"),
        ({"mining": {"bm25": {"k1": "x"}}}, "mining.bm25.k1"),
        ({"mining": {"dense": {"encoder": 3}}}, "mining.dense.encoder"),
        ({"mining": {"dense": {"encoder": " "}}}, "mining.dense.encoder"),
        ({"mining": {"sparse": {}}}, "mining.sparse"),
        ({"format": {"classification_mode": "vibes"}}, "format.classification_mode"),
        ({"decontamination": {"ngram_n": "x"}}, "decontamination.ngram_n"),
        ({"output": {"shard_rows": 0}}, "output.shard_rows"),
        ({"output": {"dirr": "x"}}, "output.dirr"),
        ({"mining": {"sts": {"method": "sparse"}}}, "mining.sts.method"),
        ({"mining": {"sts": {"methd": "dense"}}}, "mining.sts.methd"),
        # the paper's test-similarity filter: on without a threshold is an error (section 4.2 has none)
        ({"test_similarity_filter": {"enabled": True, "sources": {"banking77": "Banking77Classification"}}},
         "test_similarity_filter.threshold"),
        ({"test_similarity_filter": {"threshold": 5, "sources": {"emotion": "EmotionClassification"}}},
         "test_similarity_filter.sources.emotion"),
        ({"test_similarity_filter": {"enabled": True, "threshold": -1, "sources": {"banking77": "x"}}},
         "test_similarity_filter.threshold"),
        ({"test_similarity_filter": {"enabled": True, "threshold": 5}}, "test_similarity_filter.sources"),
        ({"sources": {"nq": {"custom": {"path": "x.jsonl"}}}}, "sources.nq.custom"),
    ],
)
def test_bad_recipe_values_name_the_key(tmp_path, change, key):
    doc = dict(BASE, **change)
    with pytest.raises(NvdataError, match=key.replace(".", r"\.")):
        load_recipe(_write(tmp_path, doc))


def test_missing_and_unreadable_recipes(tmp_path):
    with pytest.raises(NvdataError, match="neither a built-in"):
        load_recipe("stage9")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(NvdataError, match="cannot read recipe"):
        load_recipe(p)
    with pytest.raises(NvdataError, match="sources"):
        load_recipe(_write(tmp_path, {"name": "t", "stage": 1}))


def test_sts_method_and_filter_keys_reach_the_resolved_recipe(tmp_path):
    doc = dict(BASE, mining={"sts": {"method": "dense"}},
               test_similarity_filter={"threshold": 12.5, "sources": {"banking77": "Banking77Classification"}})
    r = load_recipe(_write(tmp_path, doc))
    assert r.sts_method == "dense"
    assert r.test_similarity.enabled and r.test_similarity.threshold == 12.5
    d = r.to_dict()
    assert d["mining"]["sts"] == {"method": "dense"}
    assert d["test_similarity_filter"]["sources"] == {"banking77": "Banking77Classification"}
    assert r.config_hash() != load_recipe(_write(tmp_path, BASE)).config_hash()
