"""One text identity across stages (issue 14): the dense miner's query groups and the trainer's
in-batch masks use the rule of ``nvdata.text.normalize_text``, like decontamination and dedup."""

from __future__ import annotations

import pyarrow as pa
import pytest

from nvdata import schema
from nvdata.text import content_id

RINGS = [  # two spellings of one question, each with its own positive (issue 14, item 3)
    ("Which planets have rings?", "Uranus has narrow dark rings."),
    ("which planets have rings", "Saturn's rings are mostly ice."),
]
OTHER_DOCS = [
    "Jupiter's faint rings were found by Voyager 1 in 1979.",
    "Mars has two small moons, Phobos and Deimos.",
    "Venus is the hottest planet in the solar system.",
    "Bread rises because yeast makes carbon dioxide.",
    "Chess castling moves the king two squares.",
]


def _retrieval_rows(pairs, source="toy", in_batch=True) -> pa.Table:
    n = len(pairs)
    return pa.table({
        "id": [content_id(source, q, p) for q, p in pairs], "source": [source] * n,
        "task_type": ["retrieval"] * n, "instruction": ["Given a question, retrieve passages that answer it"] * n,
        "query": [q for q, _ in pairs], "positive": [p for _, p in pairs], "negatives": [[] for _ in pairs],
        "negative_scores": [[] for _ in pairs], "positive_score": [None] * n, "negative_method": ["none"] * n,
        "in_batch_negatives": [in_batch] * n, "document_instruction": [None] * n,
        "query_id": [content_id(q) for q, _ in pairs], "positive_id": [content_id(p) for _, p in pairs],
    }, schema=schema.FORMATTED)


def test_dense_miner_groups_positives_by_normalized_query(tmp_path):
    from nvdata.mine.dense import DenseConfig, mine_dense_negatives
    from nvdata.mine.encode import load_encoder

    rows = _retrieval_rows(RINGS)
    docs = [p for _, p in RINGS] + OTHER_DOCS
    ids = [content_id(t) for t in docs]
    # the second spelling's own document (duplicate-question sets index queries as documents)
    own = "Which planets have rings? Asked on the astronomy forum."
    docs, ids = [*docs, own], [*ids, content_id(RINGS[1][0])]
    corpus = pa.table({"doc_id": ids, "text": docs}, schema=schema.RAW_RETRIEVAL_CORPUS)
    # no margin: nothing but the query identity keeps the other spelling's positive out
    cfg = DenseConfig.from_dict({"num_negatives": 3, "top_k": 6, "relative_margin": None}, "test.dense")
    mined, report = mine_dense_negatives(rows, corpus, cfg, encoder=load_encoder(None, device="cpu"),
                                         device="cpu", cache_dir=tmp_path, seed=0)
    positives = {p for _, p in RINGS} | {own}
    for row in mined.to_pylist():
        assert not positives & set(row["negatives"]), row
        assert len(row["negatives"]) == 3
    assert report["queries"] == 1 and report["removed"]["positive_id"] == 2 and report["removed"]["query_id"] == 1
