"""Dense hard-negative mining end to end with the real all-MiniLM-L6-v2, on tiny data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from nvdata import schema
from nvdata.errors import NvdataError
from nvdata.mine.dense import DenseConfig, mine_dense_negatives
from nvdata.mine.encode import default_encoder_path, encode_texts, load_encoder, uses_fast_tokenizer
from nvdata.text import content_id, text_hash

INSTRUCTION = "Given a question, retrieve passages that answer the question"

TOPICS = {
    "eiffel": [
        "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
        "The Statue of Liberty was a gift from France to the United States in 1886.",
        "Big Ben is the nickname of the great bell of the clock at Westminster in London.",
        "The Colosseum in Rome could hold tens of thousands of spectators.",
    ],
    "bees": [
        "Honey bees communicate the location of flowers with a waggle dance.",
        "Bumblebees can fly in cooler weather than most other bees.",
        "A queen bee can lay up to two thousand eggs in a single day.",
        "Wasps build paper nests from chewed wood fibres.",
    ],
    "volcano": [
        "Mount Vesuvius erupted in 79 AD and buried the city of Pompeii.",
        "Lava is molten rock that reaches the surface during an eruption.",
        "Iceland sits on the Mid-Atlantic Ridge and has many active volcanoes.",
        "Earthquakes are caused by the sudden release of energy along faults.",
    ],
    "chess": [
        "In chess, castling moves the king two squares towards a rook.",
        "A pawn that reaches the last rank is promoted, usually to a queen.",
        "The Sicilian Defence is a popular reply to the opening move e4.",
        "Checkers is played on the same 8x8 board as chess.",
    ],
    "bread": [
        "Sourdough bread rises with wild yeast and lactic acid bacteria.",
        "Kneading develops gluten, which gives bread its chewy structure.",
        "Baguettes are long thin loaves with a crisp crust.",
        "Pasta is made from durum wheat semolina and water.",
    ],
    "comets": [
        "Halley's Comet returns to the inner solar system about every 76 years.",
        "A comet's tail always points away from the Sun.",
        "Meteor showers occur when Earth passes through debris left by comets.",
        "Asteroids are rocky bodies mostly found between Mars and Jupiter.",
    ],
}
QUERIES = {
    "eiffel": "When was the Eiffel Tower in Paris completed?",
    "bees": "How do honey bees tell each other where flowers are?",
    "volcano": "Which eruption buried Pompeii?",
    "chess": "How does castling work in chess?",
    "bread": "What makes sourdough bread rise?",
    "comets": "How often does Halley's Comet come back?",
}
# A paraphrase of the Eiffel positive: not a copy (different normalized text), but so close in
# meaning that it is a likely false negative the positive-aware margin must drop.
NEAR_DUPLICATE = "The Eiffel Tower in Paris was finished in 1889 for the World Fair."
# A trivially different copy of the bees positive under another id: excluded by text hash.
TRIVIAL_COPY = "HONEY BEES communicate the location of flowers -- with a waggle-dance!"
SECOND_CHESS_POSITIVE = "When castling, the rook jumps over the king to the square next to it."


def _formatted(pairs: list[tuple[str, str, str]], source: str = "toy") -> pa.Table:
    """FORMATTED rows from (query_id, query, positive) triples, as instruct.format_source emits."""
    n = len(pairs)
    return pa.table(
        {
            "id": [content_id(source, q, p) for _, q, p in pairs],
            "source": [source] * n,
            "task_type": ["retrieval"] * n,
            "instruction": [INSTRUCTION] * n,
            "query": [q for _, q, _ in pairs],
            "positive": [p for _, _, p in pairs],
            "negatives": [[] for _ in pairs],
            "negative_scores": [[] for _ in pairs],
            "positive_score": [None] * n,
            "negative_method": ["none"] * n,
            "in_batch_negatives": [True] * n,
            "document_instruction": [None] * n,
            "query_id": [qid for qid, _, _ in pairs],
            "positive_id": [content_id(p) for _, _, p in pairs],
        },
        schema=schema.FORMATTED,
    )


def _corpus(texts: list[str]) -> pa.Table:
    return pa.table(
        {"doc_id": [content_id(t) for t in texts], "text": texts}, schema=schema.RAW_RETRIEVAL_CORPUS
    )


@pytest.fixture(scope="module")
def world():
    docs = [t for texts in TOPICS.values() for t in texts]
    docs += [NEAR_DUPLICATE, TRIVIAL_COPY, SECOND_CHESS_POSITIVE, QUERIES["volcano"]]
    pairs = [(content_id(q), q, TOPICS[t][0]) for t, q in QUERIES.items()]
    pairs.insert(3, (content_id(QUERIES["chess"]), QUERIES["chess"], SECOND_CHESS_POSITIVE))
    return _formatted(pairs), _corpus(docs)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(None, device="cpu")


def _mine(world, encoder, tmp_path, **options):
    rows, corpus = world
    cfg = DenseConfig.from_dict({"num_negatives": 3, "top_k": 12, **options}, "test.dense")
    return mine_dense_negatives(rows, corpus, cfg, encoder=encoder, device="cpu", cache_dir=tmp_path, seed=0)


def _row(table: pa.Table, query: str, positive: str | None = None) -> dict:
    for row in table.to_pylist():
        if row["query"] == query and (positive is None or row["positive"] == positive):
            return row
    raise AssertionError(f"no row for {query!r}")


def test_margin_drops_a_planted_near_duplicate_of_the_positive(world, encoder, tmp_path):
    unfiltered, _ = _mine(world, encoder, tmp_path, relative_margin=None)
    row = _row(unfiltered, QUERIES["eiffel"])
    assert row["negatives"][0] == NEAR_DUPLICATE  # without the filter it is the hardest negative
    assert row["negative_scores"][0] > 0.95 * row["positive_score"]

    mined, report = _mine(world, encoder, tmp_path)  # default relative_margin 0.05
    row = _row(mined, QUERIES["eiffel"])
    assert NEAR_DUPLICATE not in row["negatives"]
    assert all(s <= row["positive_score"] * 0.95 + 1e-6 for s in row["negative_scores"])
    assert report["removed"]["relative_margin"] >= 1


def test_positives_copies_and_the_query_never_come_back(world, encoder, tmp_path):
    mined, report = _mine(world, encoder, tmp_path, relative_margin=None, top_k=30, num_negatives=25)
    by_query: dict[str, set[str]] = {}
    for row in world[0].to_pylist():
        by_query.setdefault(row["query_id"], set()).add(text_hash(row["positive"]))
    for row in mined.to_pylist():
        hashes = {text_hash(t) for t in row["negatives"]}
        assert not hashes & by_query[row["query_id"]], row["query"]
        assert text_hash(row["query"]) not in hashes
        assert len(hashes) == len(row["negatives"])  # no text twice
    # The chess query has two positives (two rows): neither is a negative of either row.
    chess = [r for r in mined.to_pylist() if r["query"] == QUERIES["chess"]]
    assert len(chess) == 2 and chess[0]["negatives"] == chess[1]["negatives"]
    assert report["removed"]["positive_id"] == 7  # 6 queries, chess has 2 positives
    assert report["removed"]["positive_text"] == 1  # the bees positive's trivial copy
    assert report["removed"]["query_text"] + report["removed"]["query_id"] == 1  # volcano query doc


def test_output_rows_scores_and_report(world, encoder, tmp_path):
    rows, corpus = world
    mined, report = _mine(world, encoder, tmp_path)
    assert mined.schema == schema.FORMATTED
    assert mined.column("id").to_pylist() == rows.column("id").to_pylist()  # order kept
    assert set(mined.column("negative_method").to_pylist()) == {"dense"}
    for row in mined.to_pylist():
        assert len(row["negatives"]) == len(row["negative_scores"]) == 3
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
    # positive_score is the cosine similarity the encoder gives the pair.
    q = encoder.model.encode(rows.column("query").to_pylist(), normalize_embeddings=True)
    p = encoder.model.encode(rows.column("positive").to_pylist(), normalize_embeddings=True)
    got = mined.column("positive_score").to_numpy()
    np.testing.assert_allclose(got, (q * p).sum(1), atol=1e-5)
    assert report["rows_in"] == report["rows_out"] == rows.num_rows
    assert report["queries"] == 6 and report["shortfall"]["rows"] == 0
    assert report["scores"]["positive"]["count"] == rows.num_rows
    assert report["negatives"]["total"] == 3 * rows.num_rows


def test_shortfall_is_kept_or_dropped_never_padded(world, encoder, tmp_path):
    kept, report = _mine(world, encoder, tmp_path, min_score=0.3, num_negatives=4)
    counts = [len(n) for n in kept.column("negatives").to_pylist()]
    assert kept.num_rows == world[0].num_rows and min(counts) < 4
    assert all(s >= 0.3 for scores in kept.column("negative_scores").to_pylist() for s in scores)
    short = sum(c < 4 for c in counts)
    assert report["shortfall"] == {
        "rows": short, "kept": short, "dropped": 0, "without_negatives": counts.count(0)
    }
    dropped, report = _mine(world, encoder, tmp_path, min_score=0.3, num_negatives=4, on_shortfall="drop")
    assert dropped.num_rows == world[0].num_rows - short
    assert report["shortfall"]["dropped"] == short and report["rows_out"] == dropped.num_rows
    assert all(len(n) == 4 for n in dropped.column("negatives").to_pylist())


def test_deterministic_and_streaming_chunks_change_nothing(world, encoder, tmp_path):
    a, _ = _mine(world, encoder, tmp_path / "a")
    b, _ = _mine(world, encoder, tmp_path / "b")
    c, _ = _mine(world, encoder, tmp_path / "c", chunk_size=5, search_batch_size=2)
    assert a.equals(b)
    assert a.column("negatives").equals(c.column("negatives"))
    np.testing.assert_allclose(
        a.column("negative_scores").combine_chunks().flatten().to_numpy(),
        c.column("negative_scores").combine_chunks().flatten().to_numpy(),
        atol=1e-6,
    )
    r1, _ = _mine(world, encoder, tmp_path / "a", sampling="random")
    r2, _ = _mine(world, encoder, tmp_path / "a", sampling="random")
    assert r1.equals(r2)


def test_faiss_and_torch_backends_mine_the_same_negatives(world, encoder, tmp_path):
    f, rf = _mine(world, encoder, tmp_path, backend="faiss")
    t, rt = _mine(world, encoder, tmp_path, backend="torch")
    assert (rf["search"]["backend"], rt["search"]["backend"]) == ("faiss", "torch")
    assert f.column("negatives").equals(t.column("negatives"))


def test_rerun_hits_the_embedding_cache(world, encoder, tmp_path):
    first, report = _mine(world, encoder, tmp_path)
    assert report["encode"]["misses"] > 0 and report["encode"]["hits"] == 0
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")}
    assert files
    again, report = _mine(world, encoder, tmp_path)
    assert report["encode"]["texts_encoded"] == 0 and report["encode"]["misses"] == 0
    assert report["encode"]["hits"] == len(files)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")} == files
    assert again.equals(first)
    # A different query prompt is a different embedding: only the queries are encoded again.
    _, report = _mine(world, encoder, tmp_path, query_prompt="instruction")
    assert report["encode"]["texts_encoded"] == report["queries"]


def test_encoder_path_and_default_load(world, tmp_path):
    rows, corpus = world
    cfg = DenseConfig(num_negatives=2, top_k=10)
    bad = tmp_path / "no-such-model"
    with pytest.raises(NvdataError, match="no-such-model"):
        mine_dense_negatives(rows, corpus, cfg, encoder=str(bad), device="cpu", cache_dir=tmp_path, seed=0)
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(NvdataError, match="empty-dir"):
        load_encoder(tmp_path / "empty-dir")
    mined, report = mine_dense_negatives(
        rows, corpus, cfg, encoder=str(default_encoder_path()), device="cpu", cache_dir=tmp_path, seed=0
    )
    assert report["encoder"]["dtype"] == "float32" and mined.num_rows == rows.num_rows


def test_fast_tokenization_matches_sentence_transformers(encoder):
    texts = ["a", "Ünïcödé and punctuation!", "word " * 400, QUERIES["bees"]]
    for prompt in (None, "query: "):
        assert uses_fast_tokenizer(encoder, prompt)
        ours = encode_texts(encoder, texts, prompt=prompt, batch_size=2, num_workers=2)
        theirs = encoder.model.encode(texts, prompt=prompt, normalize_embeddings=True)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_positive_missing_from_corpus_is_still_scored(encoder, tmp_path):
    rows = _formatted([("q1", QUERIES["bread"], TOPICS["bread"][0])])
    corpus = _corpus(TOPICS["bread"][1:] + TOPICS["chess"])
    cfg = DenseConfig(num_negatives=2, top_k=5)
    mined, report = mine_dense_negatives(rows, corpus, cfg, encoder=encoder, device="cpu", cache_dir=tmp_path, seed=0)
    assert report["positives_not_in_corpus"] == 1
    assert 0.3 < mined.column("positive_score")[0].as_py() <= 1.0


def test_config_validation_names_the_key():
    with pytest.raises(NvdataError, match=r"recipe\.dense\.num_negativs: unknown"):
        DenseConfig.from_dict({"num_negativs": 3}, "recipe.dense")
    with pytest.raises(NvdataError, match=r"recipe\.dense\.sampling"):
        DenseConfig.from_dict({"sampling": "bottom"}, "recipe.dense")
    with pytest.raises(NvdataError, match=r"recipe\.dense\.num_negatives"):
        DenseConfig.from_dict({"num_negatives": 8, "range_min": 5, "range_max": 10}, "recipe.dense")
    with pytest.raises(NvdataError, match=r"recipe\.dense\.relative_margin"):
        DenseConfig.from_dict({"relative_margin": "5%"}, "recipe.dense")
    with pytest.raises(NvdataError, match=r"dense\.top_k"):
        DenseConfig(top_k=0)
    cfg = DenseConfig.from_dict({"relative_margin": None, "backend": "torch"}, "recipe.dense")
    assert DenseConfig.from_dict(cfg.to_dict(), "x") == cfg
    assert DenseConfig().relative_margin == 0.05 and DenseConfig().sampling == "top"


def test_fast_ascii_hash_equals_text_hash():
    import random

    from nvdata.mine.dense import hash_code

    def reference(text: str) -> int:
        code = int(text_hash(text)[:16], 16)
        code = code - (1 << 64) if code >= (1 << 63) else code
        return code or 1

    rng = random.Random(0)
    alphabet = [chr(i) for i in range(128)]
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(5000)]
    samples += ["Hello,  World!", " a_b ", "\x1c\x1dx\x1f", "Ünïcödé  Text", "ﬁne print", TRIVIAL_COPY]
    for text in samples:
        assert hash_code(text) == reference(text), repr(text)
    assert hash_code(TRIVIAL_COPY) == hash_code(TOPICS["bees"][0])


def test_bf16_encoder_with_tokenizer_threads_and_torch_search_agrees_with_fp32(world, encoder, tmp_path):
    # The GPU configuration (bf16, tokenizer workers, torch search) minus the device itself,
    # so its dtype and threading paths run on every CI machine.
    half = load_encoder(None, device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.identity != encoder.identity  # separate cache entries
    texts = [t for ts in TOPICS.values() for t in ts]
    emb = encode_texts(half, texts, batch_size=4, num_workers=2)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(emb, encode_texts(encoder, texts), atol=3e-2)
    fp32_rows, _ = _mine(world, encoder, tmp_path / "fp32")
    bf16_rows, report = _mine(world, half, tmp_path / "bf16", backend="torch", num_workers=2)
    assert report["search"]["backend"] == "torch" and report["encode"]["workers"] == 2
    same = sum(
        len(set(a) & set(b))
        for a, b in zip(fp32_rows.column("negatives").to_pylist(), bf16_rows.column("negatives").to_pylist())
    )
    assert same >= 0.9 * 3 * fp32_rows.num_rows
    near = _row(bf16_rows, QUERIES["eiffel"])
    assert NEAR_DUPLICATE not in near["negatives"]  # the margin filter still holds in bf16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_mining_agrees_with_cpu(world, encoder, tmp_path):
    gpu = load_encoder(None, device="cuda")  # bf16, tokenizer workers, pinned async copies
    assert gpu.dtype == torch.bfloat16
    texts = [t for ts in TOPICS.values() for t in ts]
    ours = encode_texts(gpu, texts, batch_size=4, num_workers=4)
    np.testing.assert_allclose(ours, encode_texts(encoder, texts), atol=3e-2)
    cpu_rows, _ = _mine(world, encoder, tmp_path / "cpu")
    gpu_rows, report = _mine(world, gpu, tmp_path / "gpu", backend="torch")
    assert report["search"]["backend"] == "torch" and report["encode"]["workers"] > 0
    same = sum(
        len(set(a) & set(b))
        for a, b in zip(cpu_rows.column("negatives").to_pylist(), gpu_rows.column("negatives").to_pylist())
    )
    assert same >= 0.9 * 3 * cpu_rows.num_rows


def test_query_blocks_run_apart_in_any_order_give_the_same_rows(world, encoder, tmp_path, monkeypatch):
    """The miner's phases (group, prepare, one search per query block, finish) are plain
    functions over a work folder: blocks searched in reverse order, each as a fresh process
    would (no text-hash memo carried over), merge to exactly what the one-process loop writes.
    A distributed executor (tests/test_ray_mine.py) runs the same blocks on several actors."""
    import pyarrow.parquet as pq

    from nvdata.mine import dense
    from nvdata.mine.encode import EmbeddingCache

    rows, corpus = world
    pq.write_table(rows, tmp_path / "rows.parquet")
    pq.write_table(corpus, tmp_path / "corpus.parquet")
    monkeypatch.setattr(dense, "_QUERY_BLOCK", 2)
    cfg = DenseConfig.from_dict({"num_negatives": 3, "top_k": 12, "search_batch_size": 2, "chunk_size": 5,
                                 "sampling": "random"}, "test.dense")
    args = (tmp_path / "rows.parquet", tmp_path / "corpus.parquet")
    report = dense.mine_dense_files(*args, tmp_path / "loop.parquet", cfg, encoder=encoder, device="cpu",
                                    cache_dir=tmp_path / "emb", seed=0)
    assert report["search"]["query_blocks"] == -(-report["queries"] // 2) > 2
    assert report["search"]["processes"] == 1

    work = tmp_path / "work"
    dense.group_queries(args[0], work, batch_rows=3)
    with EmbeddingCache(tmp_path / "emb", encoder, batch_size=cfg.batch_size) as cache:
        plan = dense.prepare(*args, work, cfg, enc=encoder, cache=cache, seed=0, batch_rows=3)
        assert cache.stats.to_dict()["misses"] == 0  # the loop's query and corpus chunks, found again
    with pytest.raises(NvdataError, match="query block 0 was never searched"):
        dense.finish(args[0], tmp_path / "never.parquet", work, cfg)
    for s in reversed(plan["blocks"]):
        dense.search_block(work, s, cfg, device="cpu")
    apart = dense.finish(args[0], tmp_path / "apart.parquet", work, cfg, batch_rows=3)
    assert pq.read_table(tmp_path / "apart.parquet").equals(pq.read_table(tmp_path / "loop.parquet"))
    for key in ("rows_out", "removed", "candidates", "negatives", "shortfall", "scores", "score_histograms"):
        assert apart[key] == report[key], key
