"""A recipe's own sources (sources.<name>.custom): validated by key, built like registry sources."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from nvdata.errors import NvdataError
from nvdata.recipe import load_recipe

FAQ_INSTRUCTION = "Given a customer question, retrieve the FAQ answer that resolves it"


def _faq_rows(n=30):
    topics = ["invoice", "password", "delivery", "refund", "warranty", "subscription"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append({"question": f"how do I handle my {t} issue number {i}",
                     "answer": f"For {t} problems, open settings, choose {t} and follow step {i}."})
    return rows


def _nq_test_query():
    """A real test text of the bundled mirror's NQ test set: what a careless team might paste."""
    from nvdata.decontam import DecontamConfig
    from nvdata.decontam.testsets import iter_test_texts, resolve_test_sets
    from nvdata.paths import sample_mirror_dir

    spec = next(s for s in resolve_test_sets(DecontamConfig()) if s.task == "NQ")
    return next(t.text for t in iter_test_texts(spec, sample_mirror_dir()) if t.field == "query")


def _recipe(tmp_path, sources, **extra):
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": "custom", "stage": 2, "sources": sources, **extra}))
    return p


@pytest.fixture(scope="module")
def custom_build(tmp_path_factory):
    from nvdata.build import run_build

    root = tmp_path_factory.mktemp("custom")
    planted = _nq_test_query()
    rows = _faq_rows() + [{"question": planted, "answer": "Our answer to a question copied from a test set."}]
    (root / "data").mkdir()
    with open(root / "data" / "faq.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    recipe = load_recipe(_recipe(root, {
        "support_faq": {"custom": {"path": "data/faq.jsonl", "task_type": "retrieval",
                                   "columns": {"query": "question", "positive": "answer"},
                                   "instruction": FAQ_INSTRUCTION}},
        # a Hub id works too (here the bundled mirror's copy of a repo, as --mirror would)
        "bank_intents": {"custom": {"hf_id": "mteb/banking77", "task_type": "classification",
                                    "columns": {"text": "text", "label": "label", "label_text": "label_text"},
                                    "instruction": "Classify the banking request"}},
    }, mining={"dense": {"num_negatives": 3}}))
    res = run_build(recipe, out=root / "out", sample=True, cache=root / "cache")
    return root, res, planted


@pytest.mark.slow
def test_a_custom_local_source_builds_end_to_end_and_is_decontaminated(custom_build):
    root, res, planted = custom_build
    m = res.manifest
    assert set(m["sources"]) == {"support_faq", "bank_intents"}
    faq = pq.read_table(root / "out" / "shards").filter(pa.compute.equal(pa.compute.field("source"), "support_faq"))
    assert faq.num_rows == 30  # 31 rows in, the planted test query dropped
    assert planted not in faq.column("query").to_pylist()
    assert set(faq.column("instruction").to_pylist()) == {FAQ_INSTRUCTION}
    assert set(faq.column("negative_method").to_pylist()) == {"dense"}
    report = json.loads((root / "out" / "reports" / "decontamination.json").read_text())
    hits = [h for h in report["hits"] if h["source"] == "support_faq"]
    assert hits and {h["test_set"] for h in hits} == {"NQ"} and hits[0]["field"] == "query"
    assert m["sources"]["support_faq"]["dropped_decontamination"] == 1
    # the declaration (with the file's sha256) is in the resolved recipe: an edited file re-keys
    decl = m["recipe"]["sources"]["support_faq"]["custom"]
    assert decl["data_files"].endswith("faq.jsonl") and len(decl["revision"]) == 64
    assert decl["instruction"] == FAQ_INSTRUCTION
    assert "support_faq" in (root / "out" / "README.md").read_text()
    bank = pq.read_table(root / "out" / "shards").filter(pa.compute.equal(pa.compute.field("source"), "bank_intents"))
    assert bank.num_rows > 0 and set(bank.column("negative_method").to_pylist()) == {"label"}


def test_csv_and_parquet_files_are_read_and_checked(tmp_path):
    import csv

    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utterance", "intent"])
        w.writerow(["book a table for two", "restaurant"])
    pq.write_table(pa.table({"s1": ["a b"], "s2": ["a c"], "gold": [4.5]}), tmp_path / "sts.parquet")
    r = load_recipe(_recipe(tmp_path, {
        "intents": {"custom": {"path": "labels.csv", "task_type": "classification",
                               "columns": {"text": "utterance", "label": "intent", "label_text": "intent"},
                               "instruction": "Classify the intent"}},
        "pairs": {"custom": {"path": str(tmp_path / "sts.parquet"), "task_type": "sts",
                             "columns": {"sentence1": "s1", "sentence2": "s2", "score": "gold"},
                             "instruction": "Retrieve semantically similar text."}},
    }))
    assert r.custom["intents"].file_format == "csv" and r.custom["pairs"].file_format == "parquet"
    assert r.custom_instructions["pairs"].document_instruction  # STS: documents carry it too
    assert {e.name for e in r.entries()} == {"intents", "pairs"}


@pytest.mark.parametrize(
    "decl, key",
    [
        ({"task_type": "ranking"}, "sources.mine.custom.task_type"),
        ({"columns": {"query": "question", "positive": "reply"}}, "sources.mine.custom.columns.positive"),
        ({"columns": {"query": "question"}}, "sources.mine.custom.columns"),
        ({"path": "missing.jsonl"}, "sources.mine.custom.path"),
        ({"path": "empty.jsonl"}, "sources.mine.custom.path"),
        ({"path": "notes.txt"}, "sources.mine.custom.path"),
        ({"instruction": ""}, "sources.mine.custom.instruction"),
        ({"hf_id": "org/name"}, "sources.mine.custom"),
        ({"colour": "red"}, "sources.mine.custom.colour"),
    ],
)
def test_bad_declarations_name_the_key(tmp_path, decl, key):
    (tmp_path / "faq.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "notes.txt").write_text("hello")
    base = {"path": "faq.jsonl", "task_type": "retrieval", "columns": {"query": "question", "positive": "answer"},
            "instruction": "Retrieve the answer"}
    with pytest.raises(NvdataError, match=key.replace(".", r"\.")):
        load_recipe(_recipe(tmp_path, {"mine": {"custom": {**base, **decl}}}))


def test_cli_build_with_a_bad_declaration_exits_2_naming_the_key(tmp_path):
    from typer.testing import CliRunner

    from nvdata.cli import app

    (tmp_path / "empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    p = _recipe(tmp_path, {"mine": {"custom": {"path": "empty.parquet", "task_type": "retrieval",
                                               "columns": {"query": "question", "positive": "answer"},
                                               "instruction": "Retrieve the answer"}}})
    r = CliRunner().invoke(app, ["build", "--recipe", str(p), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "sources.mine.custom.path" in r.output and "empty" in r.output
    assert not (tmp_path / "out").exists()


def test_download_with_a_recipe_fetches_its_custom_sources_into_the_cache(tmp_path):
    from typer.testing import CliRunner

    from nvdata.cli import app

    (tmp_path / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _faq_rows(5)))
    p = _recipe(tmp_path, {"faq": {"custom": {"path": "faq.jsonl", "task_type": "retrieval",
                                              "columns": {"query": "question", "positive": "answer"},
                                              "instruction": "Retrieve the answer"}}})
    args = ["download", "--recipe", str(p), "--cache", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "faq: 5 rows" in r.output, r.output
    assert "(cached)" in CliRunner().invoke(app, args).output
    (tmp_path / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _faq_rows(6)))  # edited file
    r = CliRunner().invoke(app, args)
    assert "faq: 6 rows" in r.output and "(cached)" not in r.output
