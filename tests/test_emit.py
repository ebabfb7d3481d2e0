"""emit + export: sharding, determinism, atomic publish, sentence-transformers columns."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nvdata import emit
from nvdata.errors import NvdataError
from nvdata.export import export_build
from nvdata.schema import FORMATTED, ROW


def _rows(source, n, negs=2, doc_instruction=None):
    return pa.table({
        "id": [f"{source}-{i}" for i in range(n)],
        "source": [source] * n,
        "task_type": ["sts" if doc_instruction else "retrieval"] * n,
        "instruction": ["Retrieve things"] * n,
        "query": [f"q {source} {i}" for i in range(n)],
        "positive": [f"p {source} {i}" for i in range(n)],
        "negatives": [[f"n{i}-{k}" for k in range(negs if i % 5 else negs - 1)] for i in range(n)],
        "negative_scores": [[0.5] * (negs if i % 5 else negs - 1) for i in range(n)],
        "positive_score": [0.9] * n,
        "negative_method": ["dense"] * n,
        "in_batch_negatives": [False] * n,
        "document_instruction": [doc_instruction] * n,
        "query_id": [f"q{i}" for i in range(n)],
        "positive_id": [f"p{i}" for i in range(n)],
    }, schema=FORMATTED)


@pytest.fixture
def row_files(tmp_path):
    files = []
    for name, n in (("a", 120), ("b", 45), ("c", 7)):
        p = tmp_path / f"{name}.parquet"
        pq.write_table(_rows(name, n, doc_instruction="Retrieve similar text" if name == "c" else None), p)
        files.append(p)
    return files


def test_shards_hold_every_row_once_shuffled_across_sources_and_deterministic(row_files, tmp_path):
    a = emit.write_shards(row_files, tmp_path / "o1" / "shards", seed=3, shard_rows=50,
                          row_group_rows=16, in_batch_negatives=True)
    b = emit.write_shards(row_files, tmp_path / "o2" / "shards", seed=3, shard_rows=50,
                          row_group_rows=16, in_batch_negatives=True)
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]  # byte-identical
    assert len(a) == 4 and sum(s["rows"] for s in a) == 172
    t = pa.concat_tables([pq.read_table(tmp_path / "o1" / s["file"]) for s in a])
    assert t.schema.equals(ROW)
    assert sorted(t.column("id").to_pylist()) == sorted(
        sum((pq.read_table(f).column("id").to_pylist() for f in row_files), []))
    assert all(t.column("in_batch_negatives").to_pylist())
    first = pq.read_table(tmp_path / "o1" / a[0]["file"]).column("source").to_pylist()
    assert len(set(first)) > 1  # mixed, not source after source
    c = emit.write_shards(row_files, tmp_path / "o3" / "shards", seed=4, shard_rows=50,
                          row_group_rows=16, in_batch_negatives=True)
    assert [s["sha256"] for s in c] != [s["sha256"] for s in a]


def test_atomic_output_keeps_the_previous_build_when_a_new_one_fails(tmp_path):
    out = tmp_path / "out"
    with emit.atomic_output(out) as tmp:
        (tmp / "data.txt").write_text("good")
        emit.write_json(tmp / "manifest.json", {"ok": 1})
    with pytest.raises(RuntimeError):
        with emit.atomic_output(out) as tmp:
            (tmp / "data.txt").write_text("half")
            raise RuntimeError("crash mid-build")
    assert (out / "data.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left


def test_output_without_manifest_is_never_published(tmp_path):
    with pytest.raises(NvdataError, match="without a manifest"):
        with emit.atomic_output(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
    assert not (tmp_path / "out").exists()


def _build(tmp_path, row_files):
    out = tmp_path / "build"
    with emit.atomic_output(out) as tmp:
        shards = emit.write_shards(row_files, tmp / "shards", seed=1, shard_rows=100,
                                   row_group_rows=32, in_batch_negatives=False)
        emit.write_json(tmp / "manifest.json", {"shards": shards})
    return out


def test_export_sentence_transformers_columns_with_instruction_on_the_anchor(row_files, tmp_path):
    build = _build(tmp_path, row_files)
    res = export_build(build, tmp_path / "st")
    # one dataset per negative count: every row keeps all its negatives (1 in 5 rows has one)
    assert res["splits"] == {"negatives_1": 35, "negatives_2": 137} and res["negatives"] == 35 + 2 * 137
    r = []
    for split, n in (("negatives_1", 1), ("negatives_2", 2)):
        t = pq.read_table(tmp_path / "st" / split)
        assert t.column_names == ["anchor", "positive", *(f"negative_{i + 1}" for i in range(n))]
        r += t.to_pylist()
    assert len(r) == 172
    assert all(x["anchor"].startswith("Instruct: Retrieve things\nQuery: q ") for x in r)
    sts_pos = [x["positive"] for x in r if x["positive"].startswith("Instruct:")]
    assert len(sts_pos) == 7  # source c carries a document instruction
    res2 = export_build(build, tmp_path / "st2", num_negatives=2)
    assert res2["rows"] == 137 and res2["left_out"] == {"a": 24, "b": 9, "c": 2}


def test_export_loads_in_sentence_transformers_trainer_format(row_files, tmp_path):
    import datasets

    build = _build(tmp_path, row_files)
    export_build(build, tmp_path / "st")
    ds = datasets.load_dataset(str(tmp_path / "st"), "negatives_2", split="train")
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(ds) == 137


def test_export_jsonl_and_bad_inputs(row_files, tmp_path):
    build = _build(tmp_path, row_files)
    res = export_build(build, tmp_path / "j", fmt="jsonl")
    lines = [json.loads(line) for p in (tmp_path / "j").glob("*.jsonl") for line in p.open()]
    assert res["rows"] == len(lines) == 172 and set(lines[0]) == set(ROW.names)
    with pytest.raises(NvdataError, match="--format"):
        export_build(build, tmp_path / "x", fmt="csv")
    with pytest.raises(NvdataError, match="not a finished nvdata build"):
        export_build(tmp_path / "nothing", tmp_path / "x")


# -- the named counts (nvdata.counts) ------------------------------------------------------------


def test_named_counts_come_from_the_stage_reports_with_corpus_documents_apart():
    from nvdata import counts

    decontam = {"pairs": {"checked": 55, "kept": 54, "dropped": 1, "texts": 110},
                "corpus": {"checked": 118, "kept": 102, "dropped": 16, "texts": 118}}
    fmt = {"rows_in": 54, "rows_out": 50, "dropped": {"empty_text": 2, "below_min_score": 0}, "duplicates": 2, "capped": 0}
    dense = {"method": "dense", "shortfall": {"dropped": 3}}
    c = counts.source_counts("msmarco", decontamination=decontam, format_report=fmt, mine_report=dense,
                             rows=47, negatives_per_row=7)
    assert c["raw_rows"] == 55 and c["corpus_documents"] == 118 and c["texts_checked"] == 228
    assert c["dropped_decontamination"] == 1 and c["documents_dropped_decontamination"] == 16
    assert c["dropped_format"] == 2 and c["dropped_format_by_reason"] == {"empty_text": 2}
    assert c["duplicates_merged"] == 2 and c["dropped_shortfall"] == 3 and c["rows"] == 47
    # the format report's `duplicates_merged` (when a stage names it so) wins; absent means 0
    assert counts.format_counts({"duplicates_merged": 5, "duplicates": 9})["duplicates_merged"] == 5
    assert counts.format_counts({})["duplicates_merged"] == 0
    bm25 = {"method": "bm25", "sources": {"sts12": {"dropped": 4}}}
    assert counts.shortfall_dropped("sts12", bm25) == 4 and counts.shortfall_dropped("x", {"method": "label"}) == 0
    # a stage that did not record texts says so ("-"), it does not say 0
    no_texts = counts.decontamination_counts({"sts": {"checked": 3, "kept": 3, "dropped": 0}})
    assert no_texts["texts_checked"] is None and counts.cell("texts_checked", None) == "-"


def test_named_counts_total_row_and_table_are_one_rendering():
    from nvdata import counts

    per = {"a": {c.key: 1 for c in counts.COLUMNS} | {"rows": 10, "negatives_per_row": 7.0},
           "b": {c.key: 2 for c in counts.COLUMNS} | {"rows": 30, "negatives_per_row": 1.0}}
    header, body = counts.table(per)
    assert header[0] == "source" and header[1:] == [c.label for c in counts.COLUMNS]
    assert body[-1][0] == "total" and body[-1][header.index("rows out")] == "40"
    assert body[-1][header.index("negatives/row")] == "2.50"  # weighted by rows out
    md = counts.markdown_table(per)
    assert "| a | 1 |" in md and "| total | 3 |" in md and "*rows out*: training rows in the shards." in md


def test_negatives_per_row_histogram_streams_batches(tmp_path):
    from nvdata import counts

    h = counts.NegativesPerRow()
    h.add(pa.array([["x", "y"], [], ["z"]]))
    h.add(pa.chunked_array([pa.array([["a"] * 7, ["b"]])]))
    assert h.to_dict() == {"0": 1, "1": 2, "2": 1, "7": 1}
    pq.write_table(pa.table({"negatives": pa.array([["x"], ["y", "z"]])}), tmp_path / "r.parquet")
    assert counts.negatives_per_row_of(tmp_path / "r.parquet", batch_rows=1) == {"1": 1, "2": 1}


def test_the_default_dense_miner_is_named_by_its_hub_id():
    from nvdata.card import encoder_name
    from nvdata.mine.encode import default_encoder_path

    assert encoder_name(None) == "sentence-transformers/all-MiniLM-L6-v2 (bundled)"
    assert encoder_name(str(default_encoder_path())).endswith("(the bundled sentence-transformers/all-MiniLM-L6-v2)")
    assert encoder_name("intfloat/e5-mistral-7b-instruct") == "intfloat/e5-mistral-7b-instruct"
