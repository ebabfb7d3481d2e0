"""Export: every mined negative reachable by default; --num-negatives reports what it leaves out."""

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import load_dataset
from typer.testing import CliRunner

from nvdata.cli import app
from nvdata.export import export_build

runner = CliRunner()


def _build_negatives(build):
    shards = [build / s["file"] for s in json.loads((build / "manifest.json").read_text())["shards"]]
    t = pq.read_table(shards)
    return t.num_rows, pc.sum(pc.list_value_length(t.column("negatives"))).as_py()


def test_the_default_export_holds_every_negative_of_the_build(tiny_build, tmp_path):
    _, build, _ = tiny_build
    rows, negatives = _build_negatives(build)
    res = export_build(build, tmp_path / "st")
    assert len(res["splits"]) > 1  # rows with 3 (dense) and 1 (label, bm25) negatives
    exported_rows = exported_negatives = 0
    ns = {}
    exec(res["snippet"], ns)  # the snippet we print loads the DatasetDict
    for name, ds in ns["ds"].items():
        neg_cols = [c for c in ds.column_names if c.startswith("negative_")]
        assert name == f"negatives_{len(neg_cols)}"
        exported_rows += len(ds)
        exported_negatives += sum(1 for c in neg_cols for v in ds[c] if v)
    assert (exported_rows, exported_negatives) == (rows, negatives)
    assert (res["rows"], res["negatives"]) == (rows, negatives)


def test_num_negatives_keeps_rows_with_enough_and_counts_the_rest_per_source(tiny_build, tmp_path):
    _, build, _ = tiny_build
    res = export_build(build, tmp_path / "st", num_negatives=2)
    assert res["left_out"] == {"banking77": 12, "sts12": 12}
    ds = load_dataset(str(tmp_path / "st"), "train", split="train")
    assert len(ds) == res["rows"] == 6 and ds.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    r = runner.invoke(app, ["export", str(build), "--to", str(tmp_path / "st2"), "--num-negatives", "2"])
    assert r.exit_code == 0 and "left out 12 row(s) of banking77" in r.output


def test_an_empty_export_is_an_error_and_writes_nothing(tiny_build, tmp_path):
    _, build, _ = tiny_build
    r = runner.invoke(app, ["export", str(build), "--to", str(tmp_path / "x"), "--num-negatives", "20"])
    assert r.exit_code == 2 and "no row has 20 negatives" in r.output and "fiqa" in r.output
    assert not (tmp_path / "x").exists()


def test_jsonl_export_keeps_rows_as_they_are(tiny_build, tmp_path):
    _, build, _ = tiny_build
    rows, negatives = _build_negatives(build)
    res = export_build(build, tmp_path / "j", fmt="jsonl")
    lines = [json.loads(line) for p in sorted((tmp_path / "j").glob("*.jsonl")) for line in p.open()]
    assert len(lines) == rows and sum(len(r["negatives"]) for r in lines) == negatives == res["negatives"]
