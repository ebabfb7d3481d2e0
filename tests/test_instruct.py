"""Instructions (data files, lookups) and formatting of each task type into FORMATTED rows."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

from nvdata.errors import NvdataError
from nvdata.instruct import (
    ORIGINS,
    FormatConfig,
    StreamingFormatter,
    format_source,
    instruction_for_source,
    instruction_for_task,
    instruction_rows,
    load_instructions,
)
from nvdata.paths import data_dir
from nvdata.schema import FORMATTED, instructed_query
from nvdata.text import content_id

# Registry source -> the MTEB task it is the training split of (same instruction in both files).
SAME_DATASET = {
    "msmarco": "MSMARCO", "hotpotqa": "HotpotQA", "nq": "NQ", "arguana": "ArguAna",
    "fiqa": "FiQA2018", "fever": "FEVER",
    "amazon_reviews": "AmazonReviewsClassification",
    "amazon_counterfactual": "AmazonCounterfactualClassification",
    "banking77": "Banking77Classification", "emotion": "EmotionClassification",
    "imdb": "ImdbClassification", "mtop_intent": "MTOPIntentClassification",
    "toxic_conversations": "ToxicConversationsClassification",
    "tweet_sentiment": "TweetSentimentExtractionClassification",
    "arxiv_s2s": "ArxivClusteringS2S", "arxiv_p2p": "ArxivClusteringP2P",
    "biorxiv_s2s": "BiorxivClusteringS2S", "biorxiv_p2p": "BiorxivClusteringP2P",
    "medrxiv_s2s": "MedrxivClusteringS2S", "medrxiv_p2p": "MedrxivClusteringP2P",
    "twentynewsgroups": "TwentyNewsgroupsClustering",
    "sts12": "STS12", "sts22": "STS22", "stsbenchmark": "STSBenchmark",
}


@pytest.fixture(scope="module")
def ins():
    return load_instructions()


# -- instruction data ----------------------------------------------------------------------------


def test_every_registry_source_has_exactly_one_instruction(registry, ins):
    assert set(ins.sources) == set(registry)  # none missing, none for an unknown source
    for name in registry:
        assert instruction_for_source(name, ins) == ins.sources[name].instruction


def test_every_mteb_eng_v1_task_has_exactly_one_instruction(ins):
    import mteb

    tasks = [t.metadata.name for t in mteb.get_benchmark("MTEB(eng, v1)").tasks]
    assert len(tasks) == 56 == len(set(tasks))
    assert set(ins.tasks) == set(tasks)
    assert ins.benchmark == "MTEB(eng, v1)"
    assert instruction_for_task("MSMARCO", ins) == (
        "Given a web search query, retrieve relevant passages that answer the query")


def test_training_and_evaluation_agree_on_the_same_dataset(ins):
    for source, task in SAME_DATASET.items():
        assert ins.sources[source].instruction == ins.tasks[task].instruction, source
        assert ins.sources[source].document_instruction == ins.tasks[task].document_instruction


def test_provenance_is_declared(registry, ins):
    for entry in [*ins.sources.values(), *ins.tasks.values()]:
        assert entry.origin in ORIGINS
        assert entry.origin == "nvdata" or entry.reference
        assert entry.instruction == entry.instruction.strip() and "\n" not in entry.instruction
    # Only STS puts the instruction on documents in training (paper section 4.2).
    for name, entry in registry.items():
        assert ins.sources[name].document_instruction == (entry.task_type == "sts"), name
    assert ins.tasks["QuoraRetrieval"].document_instruction  # instructions.json has a corpus prompt
    assert ins.tasks["STS17"].instruction == "Retrieve semantically similar text."


def _copy_instructions(tmp_path):
    dst = tmp_path / "instructions"
    shutil.copytree(data_dir("instructions"), dst)
    return dst


def test_duplicate_key_is_an_error(tmp_path):
    folder = _copy_instructions(tmp_path)
    path = folder / "training.yaml"
    path.write_text(path.read_text() + "  msmarco:\n    instruction: x\n    origin: nvdata\n")
    with pytest.raises(NvdataError, match="duplicate key 'msmarco'"):
        load_instructions(folder)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("origin: nv-embed\n    reference: NV-Embed-v2 instructions.json, MSMARCO",
         "origin: paper-ish\n    reference: x", r"msmarco\.origin"),
        ("origin: nv-embed\n    reference: NV-Embed-v2 instructions.json, MSMARCO",
         "origin: nv-embed", r"msmarco\.reference"),
        ("origin: nv-embed\n    reference: NV-Embed-v2 instructions.json, MSMARCO",
         "origin: nv-embed\n    reference: x\n    color: blue", r"msmarco: unknown key"),
    ],
)
def test_bad_entries_name_the_key(tmp_path, old, new, match):
    folder = _copy_instructions(tmp_path)
    path = folder / "training.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(NvdataError, match=match):
        load_instructions(folder)


def test_instruction_rows_for_the_cli(ins):
    rows = instruction_rows(instructions=ins)
    assert len(rows) == len(ins.sources) + len(ins.tasks)
    assert set(rows[0]) == {"set", "name", "instruction", "document_instruction", "origin", "reference"}
    (row,) = instruction_rows("sts22", ins)
    assert row["set"] == "training" and row["document_instruction"] is True
    assert [r["name"] for r in instruction_rows("touche2020", ins)] == ["Touche2020"]  # case-insensitive
    assert [r["set"] for r in instruction_rows("scifact", ins)] == ["training"]  # an exact name wins
    with pytest.raises(NvdataError, match="did you mean msmarco"):
        instruction_rows("msmarc", ins)
    with pytest.raises(NvdataError, match="no instruction for source"):
        instruction_for_source("nope", ins)


def test_query_template():
    assert instructed_query("Retrieve semantically similar text.", "a cat") == (
        "Instruct: Retrieve semantically similar text.\nQuery: a cat")


# -- FormatConfig ----------------------------------------------------------------------------------


def test_format_config_defaults_roundtrip_and_hash():
    cfg = FormatConfig.from_dict({}, "format")
    assert cfg == FormatConfig()
    assert (cfg.classification_mode, cfg.num_negatives, cfg.sts_min_score) == ("label", 1, 4.0)
    d = FormatConfig.from_dict({"classification_mode": "example", "example_sources": ["emotion"],
                                "sts_min_score": 3}, "format").to_dict()
    assert json.loads(json.dumps(d)) == d
    again = FormatConfig.from_dict(d, "format")
    assert again.example_sources == ("emotion",) and again.sts_min_score == 3.0
    hash(again)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"negatives": 2}, r"recipe\.format\.negatives: unknown key"),
        ({"classification_mode": "labels"}, r"recipe\.format\.classification_mode"),
        ({"num_negatives": 0}, r"recipe\.format\.num_negatives"),
        ({"num_negatives": True}, r"recipe\.format\.num_negatives"),
        ({"sts_min_score": "4"}, r"recipe\.format\.sts_min_score"),
        ({"example_sources": "emotion"}, r"recipe\.format\.example_sources"),
        ({"example_min_labels": 1}, r"recipe\.format\.example_min_labels"),
    ],
)
def test_format_config_errors_name_the_key(d, match):
    with pytest.raises(NvdataError, match=match):
        FormatConfig.from_dict(d, "recipe.format")


# -- retrieval -------------------------------------------------------------------------------------


def _pairs(rows):
    q, p = zip(*rows)
    return pa.table({
        "row_index": list(range(len(rows))),
        "query_id": [content_id(x) for x in q], "query": list(q),
        "positive_id": [content_id(x) for x in p], "positive": list(p),
    })


def test_retrieval_keeps_every_positive_and_drops_blanks_and_duplicates(registry):
    raw = _pairs([("q1", "p1"), ("q1", "p2"), ("q2", "p1"), ("q1", "p1"), ("  ", "p3"), ("q3", "\t\n")])
    rows, rep = format_source(registry["nq"], raw, FormatConfig(), seed=1)
    assert rows.schema == FORMATTED
    assert rows.select(["query", "positive"]).to_pylist() == [
        {"query": "q1", "positive": "p1"}, {"query": "q1", "positive": "p2"}, {"query": "q2", "positive": "p1"}]
    instr = instruction_for_source("nq")
    assert rows.column("id").to_pylist() == [content_id("nq", instr, q, p)
                                             for q, p in [("q1", "p1"), ("q1", "p2"), ("q2", "p1")]]
    assert rows.column("query_id").to_pylist() == [content_id("q1"), content_id("q1"), content_id("q2")]
    assert rows.column("negatives").to_pylist() == [[], [], []]
    assert rows.column("negative_scores").to_pylist() == [[], [], []]
    assert set(rows.column("negative_method").to_pylist()) == {"none"}
    assert rows.column("document_instruction").null_count == 3
    assert not any(rows.column("in_batch_negatives").to_pylist())
    assert (rep["rows_in"], rep["rows_out"], rep["duplicates_merged"]) == (6, 3, 1)
    assert rep["dropped"] == {"empty_text": 2}


def test_missing_column_names_source_and_column(registry):
    raw = _pairs([("q", "p")]).drop(["positive"])
    with pytest.raises(NvdataError, match=r"'msmarco'.*positive"):
        format_source(registry["msmarco"], raw, FormatConfig(), seed=1)


def test_empty_table_gives_empty_rows(registry):
    rows, rep = format_source(registry["msmarco"], _pairs([("q", "p")]).slice(0, 0), FormatConfig(), 1)
    assert rows.num_rows == 0 and rows.schema == FORMATTED and rep["rows_out"] == 0


def test_streaming_matches_whole_table(registry):
    raw = _pairs([(f"q{i % 7}", f"p{i % 11}") for i in range(60)])
    whole, rep = format_source(registry["squad"], raw, FormatConfig(), seed=3)
    fmt = StreamingFormatter(registry["squad"], FormatConfig())
    parts = [fmt.feed(b) for b in raw.to_batches(max_chunksize=8)]
    assert pa.concat_tables(parts).equals(whole)
    assert fmt.report == rep
    with pytest.raises(NvdataError, match="format_source"):
        StreamingFormatter(registry["banking77"], FormatConfig())


# -- sts -------------------------------------------------------------------------------------------


def _sts(triples, score_type=None):
    s1, s2, sc = zip(*triples)
    return pa.table({"row_index": list(range(len(triples))), "sentence1": list(s1),
                     "sentence2": list(s2), "score": pa.array(list(sc), type=score_type)})


def test_sts_two_rows_per_pair_at_or_above_threshold(registry):
    raw = _sts([("a", "b", 4.0), ("c", "d", 3.99), ("e", "f", 5.0), ("g", " ", 4.5)])
    rows, rep = format_source(registry["sts12"], raw, FormatConfig(), seed=0)
    assert rows.select(["query", "positive"]).to_pylist() == [
        {"query": "a", "positive": "b"}, {"query": "b", "positive": "a"},
        {"query": "e", "positive": "f"}, {"query": "f", "positive": "e"}]
    assert rows.column("query_id").to_pylist() == [content_id(t) for t in "abef"]
    assert rows.column("positive_id").to_pylist() == [content_id(t) for t in "bafe"]
    instr = instruction_for_source("sts12")
    assert rows.column("document_instruction").to_pylist() == [instr] * 4
    assert set(rows.column("negative_method").to_pylist()) == {"none"}
    assert rep["dropped"] == {"empty_text": 1, "below_min_score": 1}
    lower, _ = format_source(registry["sts12"], raw, FormatConfig(sts_min_score=3.5), seed=0)
    assert lower.num_rows == 6


def test_sts_identical_texts_are_one_row(registry):
    rows, rep = format_source(registry["sts22"], _sts([("same", "same", 5.0)]), FormatConfig(), 0)
    assert rows.num_rows == 1 and rep["duplicates_merged"] == 1


def test_sts_numeric_strings_are_read(registry):
    rows, _ = format_source(registry["stsbenchmark"], _sts([("a", "b", "4.2"), ("c", "d", "1")]),
                            FormatConfig(), 0)
    assert rows.num_rows == 2


@pytest.mark.parametrize(
    ("score", "score_type"),
    [("high", None), (float("nan"), pa.float64()), (None, pa.float64()), ("nan", None)],
)
def test_sts_bad_score_names_source_and_row(registry, score, score_type):
    raw = _sts([("a", "b", 5.0 if score_type else "5"), ("c", "d", score)], score_type)
    raw = raw.set_column(0, "row_index", pa.array([10, 11]))
    with pytest.raises(NvdataError, match=r"'sts12'.*row_index 11"):
        format_source(registry["sts12"], raw, FormatConfig(), 0)


# -- classification --------------------------------------------------------------------------------


def _cls(labels, texts=None, label_texts=None):
    n = len(labels)
    return pa.table({
        "row_index": list(range(n)),
        "text": texts or [f"text {i}" for i in range(n)],
        "label": [str(x) for x in labels],
        "label_text": label_texts or [f"name{x}" for x in labels],
    })


def test_classification_label_mode(registry):
    raw = _cls([0, 1, 2, 0, 1, 2, 3, 3])
    cfg = FormatConfig(num_negatives=2)
    rows, rep = format_source(registry["emotion"], raw, cfg, seed=5)
    assert rows.num_rows == 8 and rep["negative_method"] == "label" and rep["num_labels"] == 4
    for r in rows.to_pylist():
        assert r["negative_method"] == "label"
        assert len(r["negatives"]) == 2 == len(set(r["negatives"]))
        assert r["negative_scores"] == []  # drawn, not scored
        assert r["positive"] != "" and r["positive"] not in r["negatives"]
        assert set(r["negatives"]) <= {"name0", "name1", "name2", "name3"}
    by_query = {r["query"]: r["positive"] for r in rows.to_pylist()}
    assert by_query["text 6"] == "name3" and by_query["text 1"] == "name1"
    assert rows.column("positive_id").to_pylist()[0] == content_id("name0")


def test_classification_is_seeded_and_deterministic(registry):
    raw = _cls([i % 6 for i in range(60)])
    a, _ = format_source(registry["banking77"], raw, FormatConfig(num_negatives=3), seed=11)
    b, _ = format_source(registry["banking77"], raw, FormatConfig(num_negatives=3), seed=11)
    c, _ = format_source(registry["banking77"], raw, FormatConfig(num_negatives=3), seed=12)
    assert a.equals(b)
    assert a.column("negatives").to_pylist() != c.column("negatives").to_pylist()


def test_classification_one_label_drops_rows_and_counts(registry):
    rows, rep = format_source(registry["imdb"], _cls([1, 1, 1]), FormatConfig(), seed=0)
    assert rows.num_rows == 0 and rows.schema == FORMATTED
    assert rep["dropped"]["no_negative"] == 3


def test_classification_blank_text_and_duplicates(registry):
    raw = _cls([0, 1, 0, 1], texts=["dup", " ", "dup", "other"])
    rows, rep = format_source(registry["toxic_conversations"], raw, FormatConfig(), seed=0)
    assert rows.column("query").to_pylist() == ["dup", "other"]
    assert rep["dropped"]["empty_text"] == 1 and rep["duplicates_merged"] == 1


def test_classification_example_mode(registry):
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 3]
    raw = _cls(labels)
    cfg = FormatConfig(classification_mode="example", num_negatives=2)
    rows, rep = format_source(registry["mtop_intent"], raw, cfg, seed=2)
    label_of = {f"text {i}": x for i, x in enumerate(labels)}
    assert rep["negative_method"] == "example"
    assert rep["dropped"]["no_positive"] == 1  # label 3 has one example: no other to pair with
    for r in rows.to_pylist():
        assert r["negative_method"] == "example"
        assert r["positive"] != r["query"] and label_of[r["positive"]] == label_of[r["query"]]
        assert r["negatives"] and all(label_of[n] != label_of[r["query"]] for n in r["negatives"])
        assert len({label_of[n] for n in r["negatives"]}) == len(r["negatives"])  # distinct classes


def test_example_mode_never_pairs_a_text_with_itself(registry):
    texts = ["same words"] * 3 + ["other a", "other b", "c1", "c2"]
    raw = _cls([0, 0, 0, 0, 1, 2, 2], texts=texts)
    rows, rep = format_source(registry["emotion"], raw, FormatConfig(classification_mode="example"), seed=0)
    for r in rows.to_pylist():
        assert r["positive"] != r["query"]
    # Label 1 has one example; "same words" rows can always pair with "other a".
    assert rep["dropped"]["no_positive"] == 1


def test_example_mode_keeps_binary_and_unlisted_sources_label_based(registry):
    binary = _cls([0, 1] * 5)
    cfg = FormatConfig(classification_mode="example")
    _, rep = format_source(registry["amazon_counterfactual"], binary, cfg, seed=0)
    assert rep["negative_method"] == "label"  # 2 labels < example_min_labels (3)
    only_emotion = FormatConfig(classification_mode="example", example_sources=("emotion",))
    multi = _cls([0, 1, 2] * 4)
    _, rep = format_source(registry["banking77"], multi, only_emotion, seed=0)
    assert rep["negative_method"] == "label"
    _, rep = format_source(registry["emotion"], multi, only_emotion, seed=0)
    assert rep["negative_method"] == "example"


# -- clustering ------------------------------------------------------------------------------------


def _clu(cats):
    return pa.table({"row_index": list(range(len(cats))), "text": [f"paper {i}" for i in range(len(cats))],
                     "categories": pa.array(cats, type=pa.list_(pa.string()))})


CATS = [["cs.LG", "stat.ML"], ["cs.LG"], ["math.AG"], ["math.AG", "cs.LG"], ["q-bio.NC"],
        ["q-bio.NC"], ["stat.ML"], [], [" "]]


def test_clustering_label_mode(registry):
    rows, rep = format_source(registry["arxiv_s2s"], _clu(CATS), FormatConfig(num_negatives=3), seed=4)
    cats = {f"paper {i}": set(c) for i, c in enumerate(CATS)}
    assert rep["dropped"]["no_label"] == 2 and rows.num_rows == 7
    for r in rows.to_pylist():
        assert r["positive"] in cats[r["query"]]
        assert r["negatives"] and not set(r["negatives"]) & cats[r["query"]]
        assert r["negative_method"] == "label"


def test_clustering_example_mode_negatives_share_no_category(registry):
    cfg = FormatConfig(clustering_mode="example", num_negatives=2)
    cats = {f"paper {i}": set(c) for i, c in enumerate(CATS)}
    for seed in range(5):
        rows, rep = format_source(registry["arxiv_p2p"], _clu(CATS), cfg, seed=seed)
        assert rep["negative_method"] == "example"
        for r in rows.to_pylist():
            assert r["positive"] != r["query"] and cats[r["positive"]] & cats[r["query"]]
            for n in r["negatives"]:
                assert not cats[n] & cats[r["query"]]
