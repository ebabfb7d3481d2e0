"""Every stage streams: outputs do not depend on the batch size, and no stage reads a whole table.

A stage that streams in batches of B rows holds O(B) rows whatever the source size, so its
memory does not depend on the row count; these tests prove the batching is real (rows > B give
the same bytes as one batch) and that the stage files are never read whole.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nvdata import emit, schema
from nvdata.instruct import FormatConfig
from nvdata.mine import dense, keysort
from nvdata.mine.dense import DenseConfig, mine_dense_files
from nvdata.mine.encode import load_encoder
from nvdata.registry import load_registry
from nvdata.stages import format as fstage
from nvdata.stages.io import exact_batches, iter_batches
from nvdata.text import content_id

TOPICS = [
    ("eiffel", "When was the Eiffel Tower finished?", "The Eiffel Tower in Paris was completed in 1889."),
    ("bees", "How do bees talk about flowers?", "Honey bees point to flowers with a waggle dance."),
    ("lava", "What is lava?", "Lava is molten rock that reaches the surface in an eruption."),
    ("chess", "How does castling work?", "Castling moves the king two squares towards a rook."),
    ("bread", "Why does sourdough rise?", "Sourdough rises with wild yeast and lactic acid bacteria."),
    ("comet", "How often does Halley's comet return?", "Halley's Comet comes back about every 76 years."),
]
OTHER_DOCS = [
    "The Statue of Liberty was a gift from France.", "Bumblebees fly in cool weather.",
    "Vesuvius buried Pompeii in 79 AD.", "A promoted pawn usually becomes a queen.",
    "Kneading bread develops gluten.", "A comet's tail points away from the Sun.",
    "Big Ben is a bell in London.", "Wasps build paper nests.", "Iceland has many volcanoes.",
    "The Sicilian Defence answers e4.", "Baguettes have a crisp crust.", "Meteor showers come from comet dust.",
]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(None, device="cpu")


@pytest.fixture
def world(tmp_path):
    """Rows whose queries recur far apart (a query's rows straddle batches), a second positive,
    an exact duplicate row, and a positive missing from the corpus."""
    pairs = [(k, q, p) for k, q, p in TOPICS]
    pairs.insert(4, ("eiffel", TOPICS[0][1], "Gustave Eiffel's company built the tower for the 1889 fair."))
    pairs.append(("bees", TOPICS[1][1], "Bees dance to share where nectar is."))  # not in the corpus
    pairs.append(pairs[2])
    rows = pa.table(
        {
            "id": [content_id("toy", q, p) for _, q, p in pairs],
            "source": ["toy"] * len(pairs),
            "task_type": ["retrieval"] * len(pairs),
            "instruction": ["Retrieve the passage that answers the question"] * len(pairs),
            "query": [q for _, q, _ in pairs],
            "positive": [p for _, _, p in pairs],
            "negatives": [[] for _ in pairs],
            "negative_scores": [[] for _ in pairs],
            "positive_score": [None] * len(pairs),
            "negative_method": ["none"] * len(pairs),
            "in_batch_negatives": [True] * len(pairs),
            "document_instruction": [None] * len(pairs),
            "query_id": [content_id(k) for k, _, _ in pairs],
            "positive_id": [content_id(p) for _, _, p in pairs],
        },
        schema=schema.FORMATTED,
    )
    docs = [p for _, _, p in pairs[:-2]] + OTHER_DOCS + [TOPICS[3][1]]
    corpus = pa.table({"doc_id": [content_id(t) for t in docs], "text": docs}, schema=schema.RAW_RETRIEVAL_CORPUS)
    pq.write_table(rows, tmp_path / "rows.parquet")
    pq.write_table(corpus, tmp_path / "corpus.parquet", row_group_size=5)
    return tmp_path


def _mine(world, encoder, out, batch_rows, **options):
    cfg = DenseConfig.from_dict({"num_negatives": 3, "top_k": 8, "chunk_size": 7, **options}, "test.dense")
    report = mine_dense_files(world / "rows.parquet", world / "corpus.parquet", out, cfg, encoder=encoder,
                              device="cpu", cache_dir=world / "emb", seed=5, batch_rows=batch_rows,
                              work_dir=world / "work")
    return pq.read_table(out), report


@pytest.mark.parametrize("options", [{}, {"sampling": "random", "on_shortfall": "drop", "search_batch_size": 2}])
def test_dense_miner_in_small_batches_and_query_blocks_equals_one_batch(world, encoder, monkeypatch, options):
    whole, rep_whole = _mine(world, encoder, world / "a.parquet", batch_rows=10_000, **options)
    monkeypatch.setattr(dense, "_QUERY_BLOCK", 2)  # several search blocks, not one
    monkeypatch.setattr(keysort, "CHUNK", 3)  # key tables sorted and grouped 3 rows at a time
    monkeypatch.setattr(dense, "_HASH_BATCH", 2)  # candidate texts hashed 2 at a time
    small, rep_small = _mine(world, encoder, world / "b.parquet", batch_rows=3, **options)
    assert whole.num_rows >= 6
    assert whole.equals(small)
    for key in ("rows_out", "removed", "candidates", "negatives", "shortfall", "scores", "positives_not_in_corpus"):
        assert rep_whole[key] == rep_small[key], key
    assert rep_whole["positives_not_in_corpus"] == 1
    by_query = {}
    for r in whole.to_pylist():  # the two rows of one query never get each other's positive
        by_query.setdefault(r["query_id"], set()).add(r["positive"])
    for r in whole.to_pylist():
        assert not by_query[r["query_id"]] & set(r["negatives"])
    assert not list((world / "work").iterdir())  # side tables removed


def test_query_grouping_is_one_function(world, encoder, monkeypatch):
    """Grouping rows into queries goes through dense.query_group_key only: group every row into
    one query and no row gets any row's positive back."""
    monkeypatch.setattr(dense, "query_group_key", lambda b: pa.array(["all"] * b.num_rows))
    mined, report = _mine(world, encoder, world / "g.parquet", batch_rows=2)
    assert report["queries"] == 1
    positives = set(mined.column("positive").to_pylist())
    for negs in mined.column("negatives").to_pylist():
        assert not positives & set(negs)


def test_formatting_in_small_batches_keeps_duplicates_out_across_batches(tmp_path):
    entry = load_registry()["nq"]
    qs = [f"question {i % 5}" for i in range(40)]
    raw = pa.table({"row_index": list(range(40)), "query_id": [content_id(q) for q in qs], "query": qs,
                    "positive_id": [content_id(f"a {i % 7}") for i in range(40)],
                    "positive": [f"answer {i % 7}" for i in range(40)]})
    pq.write_table(raw, tmp_path / "pairs.parquet")
    outs = []
    for n, size in (("one", 1000), ("many", 3)):
        (tmp_path / n).mkdir()
        rep = fstage.format_rows(entry, tmp_path / "pairs.parquet", cfg=FormatConfig(), seed=1, max_rows=20,
                                 out=tmp_path / n, batch_rows=size)
        outs.append((pq.read_table(tmp_path / n / "rows.parquet"), rep))
    (one, rep_one), (many, rep_many) = outs
    assert one.equals(many) and rep_one == rep_many
    assert rep_one["duplicates_merged"] == 40 - 35 and rep_one["capped"] == 15 and one.num_rows == 20
    assert len(set(one.column("id").to_pylist())) == 20


def test_shards_do_not_depend_on_how_the_row_files_are_cut(tmp_path):
    """The seeded scatter draws per 10,000-row batch of each file, whatever its row groups."""
    n = 23_000
    t = pa.table({f.name: _column(f, n) for f in schema.ROW})
    pq.write_table(t, tmp_path / "one.parquet")
    pq.write_table(t, tmp_path / "many.parquet", row_group_size=3_001)
    kw = dict(seed=3, shard_rows=6_000, row_group_rows=1_000, in_batch_negatives=False)
    a = emit.write_shards([tmp_path / "one.parquet"], tmp_path / "a" / "shards", **kw)
    b = emit.write_shards([tmp_path / "many.parquet"], tmp_path / "b" / "shards", **kw)
    assert len(a) == 4 and a == b


def _column(field: pa.Field, n: int) -> pa.Array:
    if pa.types.is_list(field.type):
        return pa.array([[f"{field.name} {i}"] if pa.types.is_string(field.type.value_type) else [0.5] for i in range(n)],
                        field.type)
    if pa.types.is_string(field.type):
        return pa.array([f"{field.name} {i}" for i in range(n)])
    if pa.types.is_floating(field.type):
        return pa.array(np.arange(n, dtype=np.float32))
    return pa.array([False] * n)


def test_exact_batches_recut_any_layout():
    batches = [pa.record_batch({"x": list(range(a, b))}) for a, b in ((0, 3), (3, 4), (4, 11), (11, 11))]
    cut = [t.column("x").to_pylist() for t in exact_batches(batches, 4)]
    assert cut == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


@pytest.mark.slow
def test_stage1_sample_build_streams_and_small_batches_change_no_byte(tmp_path, monkeypatch):
    """Stages never read a stage table whole, batches never exceed the batch size, and a build
    in 5-row batches publishes the same shards as one in default batches."""
    from nvdata.build import run_build
    from nvdata.recipe import load_recipe

    recipe = load_recipe("stage1")
    first = run_build(recipe, out=tmp_path / "a", sample=True, cache=tmp_path / "cache-a")
    cache_b = tmp_path / "cache-b"
    cache_b.mkdir()
    for keep in ("raw", "test-index", "embeddings"):  # not the stages: they must run again
        shutil.copytree(tmp_path / "cache-a" / keep, cache_b / keep)

    staged = (cache_b / "raw").as_posix(), "/decontaminate/", "/format/", "/mine/"
    real_read_table, real_iter = pq.read_table, pq.ParquetFile.iter_batches
    biggest = []

    def read_table(source, *a, **k):
        assert not any(s in str(source) for s in staged), f"whole-table read of {source}"
        return real_read_table(source, *a, **k)

    def iter_batches_(self, batch_size=65536, *a, **k):
        for b in real_iter(self, batch_size, *a, **k):
            biggest.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq, "read_table", read_table)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches_)
    monkeypatch.setenv("NVDATA_BATCH_ROWS", "5")
    second = run_build(recipe, out=tmp_path / "b", sample=True, cache=cache_b)
    assert [s["sha256"] for s in second.manifest["shards"]] == [s["sha256"] for s in first.manifest["shards"]]
    dense_cfg = recipe.dense
    assert biggest and max(biggest) <= max(5, dense_cfg.chunk_size, 10_000)
    assert sum(1 for b in biggest if b == 5) > 20  # the stages really streamed in 5-row batches
    for name in json.loads((tmp_path / "b" / "manifest.json").read_text())["sources"]:
        assert list((cache_b / "mine").glob(f"{name}-*/rows.parquet"))


def test_take_chunked_equals_a_plain_take():
    """Rows taken chunk by chunk (the shuffle buckets' row groups, the miner's corpus texts) equal
    a plain take over the concatenation, for record batches and arrays alike."""
    from nvdata.stages.io import take_chunked

    rng = np.random.default_rng(3)
    schema = pa.schema([("i", pa.int64()), ("s", pa.string())])
    sizes = [5, 1, 17, 9, 0, 12]
    batches, start = [], 0
    for n in sizes:
        batches.append(pa.record_batch({"i": np.arange(start, start + n), "s": [f"r{j}" for j in range(start, start + n)]},
                                       schema=schema))
        start += n
    whole = pa.Table.from_batches(batches)
    texts = pa.chunked_array([b.column(1) for b in batches])
    for rows in (rng.permutation(start), rng.permutation(start)[:7], np.array([], dtype=np.int64), np.array([40, 3, 3])):
        assert take_chunked(batches, rows).equals(whole.take(pa.array(rows, pa.int64())).combine_chunks())
        assert take_chunked(texts, rows).equals(texts.take(pa.array(rows, pa.int64())).combine_chunks())
