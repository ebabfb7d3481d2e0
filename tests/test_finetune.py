"""finetune_miner: a short real fine-tune whose output directory the dense miner loads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from nvdata import schema
from nvdata.errors import NvdataError
from nvdata.finetune import MANIFEST, finetune_miner
from nvdata.mine.dense import DenseConfig, mine_dense_negatives
from nvdata.mine.encode import encode_texts, load_encoder, model_fingerprint
from nvdata.text import content_id


def _pairs(n: int) -> pa.Table:
    queries = [f"what is item number {i} about" for i in range(n)]
    positives = [f"item {i} describes topic {i % 5} in a few words" for i in range(n)]
    return pa.table(
        {
            "row_index": list(range(n)),
            "query_id": [content_id(q) for q in queries],
            "query": queries,
            "positive_id": [content_id(p) for p in positives],
            "positive": positives,
        },
        schema=schema.RAW_RETRIEVAL_PAIRS,
    )


@pytest.mark.slow
def test_finetuned_miner_is_a_model_dir_the_miner_loads(tmp_path):
    pairs = _pairs(24)
    out = finetune_miner(pairs, tmp_path / "miner", epochs=1, batch_size=8, learning_rate=1e-4, device="cpu")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["pairs"] == 24 and manifest["loss"] == "MultipleNegativesRankingLoss"

    tuned, base = load_encoder(out, device="cpu"), load_encoder(None, device="cpu")
    assert tuned.identity != base.identity
    assert model_fingerprint(out) != model_fingerprint(None)  # what a stage cache key should use
    texts = pairs.column("query").to_pylist()[:4]
    assert not np.allclose(encode_texts(tuned, texts), encode_texts(base, texts), atol=1e-4)

    corpus = pa.table(
        {"doc_id": pairs.column("positive_id"), "text": pairs.column("positive")}, schema=schema.RAW_RETRIEVAL_CORPUS
    )
    rows = pa.table(
        {
            "id": pairs.column("query_id"),
            "source": ["toy"] * 24,
            "task_type": ["retrieval"] * 24,
            "instruction": ["Retrieve the item"] * 24,
            "query": pairs.column("query"),
            "positive": pairs.column("positive"),
            "negatives": [[]] * 24,
            "negative_scores": [[]] * 24,
            "positive_score": [None] * 24,
            "negative_method": ["none"] * 24,
            "in_batch_negatives": [True] * 24,
            "document_instruction": [None] * 24,
            "query_id": pairs.column("query_id"),
            "positive_id": pairs.column("positive_id"),
        },
        schema=schema.FORMATTED,
    )
    cfg = DenseConfig(num_negatives=2, top_k=8, relative_margin=None)
    mined, report = mine_dense_negatives(rows, corpus, cfg, encoder=str(out), device="cpu", cache_dir=tmp_path / "c", seed=0)
    assert report["encoder"]["identity"] == tuned.identity
    assert all(len(n) == 2 for n in mined.column("negatives").to_pylist())


def test_finetune_rejects_bad_input(tmp_path):
    with pytest.raises(NvdataError, match="lacks column 'positive'"):
        finetune_miner(pa.table({"query": ["q"]}), tmp_path / "m")
    with pytest.raises(NvdataError, match="finetune_miner.batch_size"):
        finetune_miner(_pairs(4), tmp_path / "m", batch_size=1)
    with pytest.raises(NvdataError, match="no pairs"):
        finetune_miner(_pairs(0), tmp_path / "m")
