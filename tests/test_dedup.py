"""Row de-duplication (issue 14, item 5): one row per (normalized query, normalized positive)
within a source, for every task type, counted as ``duplicates_merged``."""

from __future__ import annotations

import pyarrow as pa

from nvdata.dedup import FirstSeen, row_key
from nvdata.instruct import FormatConfig, format_source
from nvdata.text import content_id


def test_row_key_is_the_normalized_pair():
    assert row_key("Which planets have rings?", "Saturn.") == row_key("which  planets have ri\u00adngs", "SATURN")
    assert row_key("a", "b c") != row_key("a b", "c")  # the two texts stay apart
    assert row_key("a", "b") != row_key("b", "a")
    d = FirstSeen()
    keys = [row_key(q, p) for q, p in [("q", "p"), ("Q!", "p"), ("q", "p2"), ("q ", " P")]]
    assert d.keep_new(keys).tolist() == [True, False, True, False]
    assert d.keep_new([row_key("q", "P."), row_key("x", "y")]).tolist() == [False, True]  # across calls
    assert (d.merged, d.count) == (3, 3)


def test_sts_repeats_in_another_casing_spacing_or_order_are_merged(registry):
    # the STS Benchmark train split's kinds of repeat: the same pair listed twice (another
    # year), in other casing or spacing, or with its sentences swapped
    a, b = "A man is playing a flute.", "A man plays the flute."
    c, d = "A woman is slicing an onion.", "Someone is cutting an onion."
    raw = pa.table({
        "row_index": list(range(6)),
        "sentence1": [a, c, a, "a man  is playing a FLUTE", b, "Two dogs run."],
        "sentence2": [b, d, b, "A man plays the flute", a, "Two dogs are running."],
        "score": [4.8, 4.2, 4.8, 4.6, 4.4, 4.0],
    })
    rows, rep = format_source(registry["stsbenchmark"], raw, FormatConfig(), seed=0)
    assert rows.select(["query", "positive"]).to_pylist() == [
        {"query": a, "positive": b}, {"query": b, "positive": a},
        {"query": c, "positive": d}, {"query": d, "positive": c},
        {"query": "Two dogs run.", "positive": "Two dogs are running."},
        {"query": "Two dogs are running.", "positive": "Two dogs run."}]
    assert rep["duplicates_merged"] == 6 and rep["rows_out"] == 6  # 3 repeated pairs, 2 rows each


def test_retrieval_rows_of_one_question_and_answer_in_other_spelling_are_merged(registry):
    q, p = "Which planets have rings?", "Uranus has narrow dark rings."
    pairs = [(q, p), ("which planets have rings", "uranus has narrow dark rings"),
             ("which planets have rings", "Saturn's rings are mostly ice."), (q + "\u200b", p)]
    raw = pa.table({"row_index": list(range(4)), "query_id": [content_id(x) for x, _ in pairs],
                    "query": [x for x, _ in pairs], "positive_id": [content_id(y) for _, y in pairs],
                    "positive": [y for _, y in pairs]})
    rows, rep = format_source(registry["nq"], raw, FormatConfig(), seed=0)
    assert rows.column("positive").to_pylist() == [p, "Saturn's rings are mostly ice."]
    assert rep["duplicates_merged"] == 2


def test_classification_and_clustering_repeats_are_merged(registry):
    cls = pa.table({"row_index": [0, 1, 2, 3], "text": ["I love it!", "i love it", "I hate it", "I LOVE IT"],
                    "label": ["1", "1", "0", "0"], "label_text": ["pos", "pos", "neg", "neg"]})
    rows, rep = format_source(registry["imdb"], cls, FormatConfig(), seed=0)
    # same text and same label: merged; same text under another label is another row
    assert rows.select(["query", "positive"]).to_pylist() == [
        {"query": "I love it!", "positive": "pos"}, {"query": "I hate it", "positive": "neg"},
        {"query": "I LOVE IT", "positive": "neg"}]
    assert rep["duplicates_merged"] == 1
    clu = pa.table({"row_index": [0, 1, 2, 3], "text": ["Graph neural nets.", "graph neural nets", "Prime gaps.", "Knots."],
                    "categories": [["cs.LG"], ["cs.LG"], ["math.NT"], ["math.GT"]]})
    rows, rep = format_source(registry["arxiv_s2s"], clu, FormatConfig(), seed=0)
    assert rows.column("query").to_pylist() == ["Graph neural nets.", "Prime gaps.", "Knots."]
    assert rep["duplicates_merged"] == 1
