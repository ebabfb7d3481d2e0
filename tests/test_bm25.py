"""BM25 STS miner: parity with rank_bm25 (scores and chosen negatives) and the NV-Embed rule.

The reference here is written independently of nvdata.mine: rank_bm25.BM25Okapi over a pool
built with plain Python, ranked by a stable argsort of -score, walked with the rule's skips.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from rank_bm25 import BM25Okapi

from nvdata import schema
from nvdata.errors import NvdataError
from nvdata.mine.bm25 import BM25Config, build_sts_pool, mine_bm25_negatives, walk_ranking
from nvdata.mine.okapi import OkapiIndex, Tokenizer, ranked_prefixes, stable_ranking
from nvdata.text import normalize_text

TOK = Tokenizer()

# -- data ---------------------------------------------------------------------------------
SUBJECTS = ["A man", "A woman", "The man", "Two men", "A boy", "A girl", "The dog", "A cat",
            "A chef", "Some people", "The president", "Police officers", "The company", "A player"]
VERBS = ["is playing", "is slicing", "is riding", "is eating", "plays", "said", "announced",
         "is walking along", "is jumping over", "is cutting", "reported", "is looking at"]
OBJECTS = ["a guitar", "an onion", "a horse", "the piano", "a tomato", "the fence", "a bike",
           "the new budget", "a plan", "the street", "a flute", "the river", "some bread"]
TAILS = ["", "", "", " in the park", " on Monday", " at night", " with a friend",
         " near the river", " after the game", " for the first time", " outside"]


def sts_pairs(n_pairs: int, seed: int) -> list[tuple[str, str, float]]:
    """STS-like (sentence1, sentence2, gold) triples: a sentence and a perturbed copy, the gold
    score falling with the perturbation; some sentences recur, some differ only in case."""
    rng = np.random.default_rng(seed)

    def sentence() -> list[str]:
        return [SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))],
                OBJECTS[rng.integers(len(OBJECTS))], TAILS[rng.integers(len(TAILS))]]

    seen: list[str] = []
    out = []
    for _ in range(n_pairs):
        if seen and rng.random() < 0.08:
            s1 = seen[rng.integers(len(seen))]
            parts = None
        else:
            parts = sentence()
            s1 = f"{parts[0]} {parts[1]} {parts[2]}{parts[3]}."
        level = int(rng.integers(0, 5))
        other = sentence()
        if parts is None or level == 4:
            s2, gold = f"{other[0]} {other[1]} {other[2]}{other[3]}.", rng.uniform(0, 1.2)
        else:
            mixed = list(parts)
            for slot in rng.choice(4, size=level, replace=False):
                mixed[slot] = other[slot]
            s2 = f"{mixed[0]} {mixed[1]} {mixed[2]}{mixed[3]}"
            s2 = s2.lower() if rng.random() < 0.1 else s2 + "."
            gold = float(np.clip(5 - 1.2 * level + rng.normal(0, 0.3), 0, 5))
        out.append((s1, s2, round(float(gold), 2)))
        seen.append(s1)
    return out


def raw_sts(pairs) -> pa.Table:
    return pa.table(
        {
            "row_index": list(range(len(pairs))),
            "sentence1": [p[0] for p in pairs],
            "sentence2": [p[1] for p in pairs],
            "score": [float(p[2]) for p in pairs],
        },
        schema=schema.RAW_STS,
    )


def formatted_rows(source: str, pairs, min_gold: float = 4.0) -> list[dict]:
    return [
        {
            "id": f"{source}-{i}",
            "source": source,
            "task_type": "sts",
            "instruction": "Retrieve semantically similar text.",
            "query": s1,
            "positive": s2,
            "negatives": [],
            "negative_scores": [],
            "positive_score": None,
            "negative_method": "none",
            "in_batch_negatives": False,
            "document_instruction": "Retrieve semantically similar text.",
            "query_id": f"q{i}",
            "positive_id": f"p{i}",
        }
        for i, (s1, s2, gold) in enumerate(pairs)
        if gold >= min_gold
    ]


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema.FORMATTED)


# -- the independent reference ------------------------------------------------------------
def reference_pool(tables: list[pa.Table]) -> list[str]:
    texts, seen = [], set()
    for t in tables:
        for r in sorted(t.to_pylist(), key=lambda r: r["row_index"]):
            for s in (r["sentence1"], r["sentence2"]):
                if normalize_text(s) not in seen:
                    seen.add(normalize_text(s))
                    texts.append(s)
    return texts


def reference_mine(rows: list[dict], pools: dict[str, pa.Table], cfg: BM25Config):
    """rank_bm25 + stable argsort + the rule, one query at a time."""
    tok = Tokenizer(cfg.token_pattern, cfg.lowercase)
    all_pairs = [
        (normalize_text(r["sentence1"]), normalize_text(r["sentence2"]), r["score"])
        for name in sorted(pools)
        for r in pools[name].to_pylist()
    ]
    engines = {}
    out = []
    for row in rows:
        name = "all" if cfg.pool == "all" else row["source"]
        if name not in engines:
            tables = [pools[n] for n in sorted(pools)] if name == "all" else [pools[name]]
            texts = reference_pool(tables)
            engines[name] = (texts, BM25Okapi([tok(t) for t in texts], k1=cfg.k1, b=cfg.b, epsilon=cfg.epsilon))
        texts, bm = engines[name]
        scores = bm.get_scores(tok(row["query"]))
        q, p = normalize_text(row["query"]), normalize_text(row["positive"])
        gold = set()
        for a, b, score in all_pairs:
            if score > cfg.max_gold_score and q in (a, b):
                gold.add(b if a == q else a)
        picked, skipped = [], {"rank": 0, "self_or_positive": 0, "gold_above_max": 0}
        for rank, d in enumerate(np.argsort(-scores, kind="stable"), 1):
            key = normalize_text(texts[d])
            if rank < cfg.min_rank:
                skipped["rank"] += 1
            elif key in (q, p):
                skipped["self_or_positive"] += 1
            elif key in gold:
                skipped["gold_above_max"] += 1
            else:
                picked.append(int(d))
                if len(picked) == cfg.num_negatives:
                    break
        p_index = [i for i, t in enumerate(texts) if normalize_text(t) == p]
        out.append(
            {
                "negatives": [texts[d] for d in picked],
                "scores": scores[picked],
                "positive_score": scores[p_index[0]] if p_index and texts[p_index[0]] == row["positive"] else None,
                "skipped": skipped,
            }
        )
    return out


def assert_matches_reference(mined: pa.Table, rows: list[dict], pools, cfg, report) -> None:
    ref = reference_mine(rows, pools, cfg)
    got = mined.to_pylist()
    assert len(got) == len(ref)
    skipped = {"rank": 0, "self_or_positive": 0, "gold_above_max": 0}
    for g, r in zip(got, ref):
        assert g["negatives"] == r["negatives"], g["query"]
        np.testing.assert_allclose(g["negative_scores"], r["scores"].astype(np.float32), rtol=1e-6)
        if r["positive_score"] is not None:
            assert g["positive_score"] == pytest.approx(r["positive_score"], rel=1e-6)
        assert g["negative_method"] == ("bm25" if r["negatives"] else "none")
        for rule in skipped:
            skipped[rule] += r["skipped"][rule]
    assert report["totals"]["skipped"] == skipped


# -- the engine ---------------------------------------------------------------------------
def tie_heavy_corpus(seed: int) -> list[str]:
    """Very common terms (negative idf: the epsilon path), permuted copies of one bag of words
    (exact ties), texts with no token at all, equal-df rare terms (ties across terms)."""
    rng = np.random.default_rng(seed)
    rare = [f"r{i}" for i in range(12)]
    docs = []
    for i in range(400):
        kind = i % 5
        if kind == 0:
            words = ["the", "a", "is"] + list(rng.choice(rare, size=2))
            rng.shuffle(words)
        elif kind == 1:
            words = list(rng.permutation(["the", "man", "is", "a", "guitar"]))
        elif kind == 2:
            words = ["a", "the"] * int(rng.integers(1, 3)) + [rare[i % len(rare)]]
        elif kind == 3:
            words = ["is"] + ["the"] * int(rng.integers(0, 2)) + [rare[(i // 5) % len(rare)]]
        else:
            docs.append(["...", "!!", "", "?"][i % 4])
            continue
        docs.append(" ".join(words) + ("." if rng.random() < 0.5 else ""))
    return docs


def most_common_idf_negative_corpus() -> list[str]:
    """Most terms in > half the documents, so the mean idf and epsilon's floor are negative."""
    base = ["alpha beta gamma delta", "alpha beta gamma", "alpha beta delta", "beta gamma delta",
            "alpha gamma delta", "alpha beta gamma delta", "beta", "", "alpha beta omega"]
    return base * 3


@pytest.mark.parametrize("corpus_name", ["realistic", "ties", "negative_mean_idf"])
@pytest.mark.parametrize("params", [{}, {"k1": 0.9, "b": 0.4, "epsilon": 0.5}, {"b": 1.0}])
def test_scores_and_ranking_equal_rank_bm25(corpus_name, params):
    if corpus_name == "realistic":
        texts = reference_pool([raw_sts(sts_pairs(300, seed=1))])
        queries = texts[::7] + ["a man plays the guitar the guitar", "unknownword", ""]
    elif corpus_name == "ties":
        texts = tie_heavy_corpus(seed=2)
        queries = texts[:40] + ["the the a r1 r1 r3 zzz", "is", "a man is the guitar"]
    else:
        texts = most_common_idf_negative_corpus()
        queries = ["alpha", "beta gamma", "omega alpha", "zeta beta beta", "nothing"]
    if params.get("b") == 1.0:  # rank_bm25 gives empty documents 0/0 = nan at b == 1
        texts = [t for t in texts if TOK(t)]
    docs = [TOK(t) for t in texts]
    ref = BM25Okapi(docs, **params)
    index = OkapiIndex(docs, **params)

    assert list(index.vocab) == list(ref.idf)  # same terms, same first-occurrence order
    assert index.average_idf == ref.average_idf and index.avgdl == ref.avgdl
    np.testing.assert_array_equal(index.idf, [ref.idf[t] for t in index.vocab])
    if corpus_name != "realistic":
        assert index.n_negative_idf > 0  # the epsilon floor is exercised
    if corpus_name == "negative_mean_idf":
        assert index.average_idf < 0

    term_ids = [index.term_ids(TOK(q)) for q in queries]
    scores = index.score_batch(term_ids)
    prefixes = ranked_prefixes(scores, 3)
    # The weights matrix is BM25 itself: query term counts times weights gives the scores
    # (summed in another order, so equal to rounding only).
    counts = sp.csr_array(
        (np.ones(sum(map(len, term_ids))), np.concatenate([[]] + term_ids).astype(np.int64),
         np.cumsum([0] + [len(t) for t in term_ids])),
        shape=(len(queries), index.n_terms),
    )
    np.testing.assert_allclose((counts @ index.weights).toarray(), scores, rtol=1e-12, atol=1e-12)
    for q, row, prefix in zip(queries, scores, prefixes):
        expected = ref.get_scores(TOK(q))
        np.testing.assert_allclose(row, expected, rtol=1e-12, atol=0)
        # Equal bit for bit, which is what makes tie-breaking identical.
        assert np.array_equal(row, expected), q
        order = np.argsort(-expected, kind="stable")
        np.testing.assert_array_equal(stable_ranking(row), order)
        np.testing.assert_array_equal(prefix, order[: len(prefix)])
        for d in order[:5]:
            assert index.score_text(TOK(q), docs[d]) == expected[d]


def test_ties_are_real_and_break_by_pool_order():
    texts = tie_heavy_corpus(seed=3)
    docs = [TOK(t) for t in texts]
    index = OkapiIndex(docs)
    row = index.score_batch([index.term_ids(TOK("a man is the guitar"))])[0]
    top = row.max()
    tied = np.flatnonzero(row == top)
    assert len(tied) > 10  # the permuted copies score exactly alike
    np.testing.assert_array_equal(stable_ranking(row)[: len(tied)], tied)  # ascending pool index


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 700, 5000])
@pytest.mark.parametrize("k", [1, 3, 8, 40])
def test_ranked_prefixes_is_a_prefix_of_the_stable_ranking(n, k):
    rng = np.random.default_rng(n * 100 + k)
    scores = rng.choice([-0.5, 0.0, 0.0, 1.25, 2.5, 7.0], size=(6, n)) + np.where(
        rng.random((6, n)) < 0.01, rng.random((6, n)), 0
    )
    scores[1] = 0.0  # every score tied
    scores[2, -1] = 99.0  # the best in the last, partial block
    for row, prefix in zip(scores, ranked_prefixes(scores, k)):
        assert len(prefix) >= min(k, n)
        np.testing.assert_array_equal(prefix, stable_ranking(row)[: len(prefix)])


def test_tokenizer_is_documented_one():
    assert TOK("The Man's naïve café, 2 DOGS_run!") == ["the", "man", "s", "naïve", "café", "2", "dogs_run"]
    assert Tokenizer(lowercase=False)("Running Dogs") == ["Running", "Dogs"]  # no stemming
    assert Tokenizer(r"[a-z]+")("ab1cd") == ["ab", "cd"]
    with pytest.raises(ValueError):
        Tokenizer(r"(\w)+")


# -- the rule -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_sources():
    pairs_a, pairs_b = sts_pairs(400, seed=10), sts_pairs(250, seed=11)
    pairs_b += pairs_a[:20]  # sentences shared across sources, as STSB shares STS12's
    pools = {"stsbenchmark": raw_sts(pairs_b), "sts12": raw_sts(pairs_a)}
    rows = formatted_rows("sts12", pairs_a) + formatted_rows("stsbenchmark", pairs_b)
    return rows, pools


@pytest.mark.parametrize(
    "options",
    [{}, {"num_negatives": 3}, {"pool": "all", "num_negatives": 2}, {"min_rank": 1, "max_gold_score": 1.0},
     {"min_rank": 4, "query_batch_size": 5}],
)
def test_negatives_identical_to_rank_bm25_reference(two_sources, options):
    rows, pools = two_sources
    cfg = BM25Config.from_dict(options)
    mined, report = mine_bm25_negatives(table(rows), pools, cfg)
    assert mined.schema == schema.FORMATTED
    assert mined.column("id").to_pylist() == [r["id"] for r in rows]
    assert_matches_reference(mined, rows, pools, cfg, report)
    json.dumps(report)
    assert report["totals"]["mined"] == len(rows)
    assert report["totals"]["skipped"]["rank"] == len(rows) * (cfg.min_rank - 1)
    if cfg.max_gold_score == 1.0:
        assert report["totals"]["skipped"]["gold_above_max"] > 0
    src = report["sources"]["sts12"]
    assert src["scores"]["negative"]["min"] <= src["scores"]["negative"]["max"]
    assert set(report["pools"]) == ({"all"} if cfg.pool == "all" else {"sts12", "stsbenchmark"})


def test_each_rule_on_a_hand_built_pool():
    pool = raw_sts(
        [
            ("A man plays a guitar.", "A man plays a guitar now.", 4.8),  # the row
            ("a man plays a guitar", "A man plays a guitar loudly.", 3.0),  # gold 3.0 > 2.5
            ("A man plays a flute.", "A man plays a guitar.", 2.5),  # exactly 2.5: allowed
            ("A woman plays a guitar.", "A dog barks.", 0.2),
        ]
    )
    row = formatted_rows("sts12", [("A man plays a guitar.", "A man plays a guitar now.", 4.8)])
    mined, report = mine_bm25_negatives(table(row), {"sts12": pool}, BM25Config(num_negatives=2))
    # Ranking: q+ (rank 1), d+ and "...loudly" (tied: pool order), then the flute and the woman
    # (tied: "man" and "guitar" have one df). Normalization makes "a man plays a guitar" the
    # same text as q+ (one pool entry), so its gold 3.0 partner "...loudly" is skipped.
    assert mined.column("negatives").to_pylist() == [["A man plays a flute.", "A woman plays a guitar."]]
    skipped = report["totals"]["skipped"]
    assert skipped["rank"] == 1 and skipped["gold_above_max"] == 1 and skipped["self_or_positive"] == 1
    assert report["pools"]["sts12"]["texts"] == 6
    scores = mined.column("negative_scores").to_pylist()[0]
    assert scores[0] >= scores[1] > 0
    assert mined.column("positive_score").type == pa.float32()
    assert mined.column("positive_score")[0].as_py() > scores[0]


def test_fallback_to_full_ranking_when_the_prefix_runs_out():
    # q+ has gold 3.0 with 30 near-copies that outrank everything: the rule must read past
    # the candidates ranked_prefixes returns, in a pool too big to be sorted up front.
    pairs = sts_pairs(700, seed=5)
    q = "A juggler juggles seven burning torches tonight."
    # Lengths differ so the copies do not tie (a tie is returned whole), and they are spread
    # over the pool (a block holding one is read whole).
    for i in range(1, 31):
        pairs.insert(i * 22, (q, f"A juggler juggles seven burning torches tonight{' again' * i}.", 3.0))
    pairs.append((q, "A juggler juggles seven torches.", 4.6))
    pools = {"sts12": raw_sts(pairs)}
    rows = formatted_rows("sts12", pairs)
    cfg = BM25Config()
    mined, report = mine_bm25_negatives(table(rows), pools, cfg)
    assert report["pools"]["sts12"]["texts"] > 64 * 8
    assert report["totals"]["full_sorts"] >= 1
    assert report["totals"]["skipped"]["gold_above_max"] >= 30
    assert_matches_reference(mined, rows, pools, cfg, report)


def test_tie_heavy_pool_gives_reference_negatives():
    texts = tie_heavy_corpus(seed=4)
    rng = np.random.default_rng(4)
    pairs = [(texts[i], texts[i + 1], float(rng.choice([0.5, 2.5, 3.0, 4.5]))) for i in range(0, len(texts) - 1, 2)]
    pools = {"sts22": raw_sts(pairs)}
    rows = [r for r in formatted_rows("sts22", pairs) if TOK(r["query"])]
    for options in ({}, {"num_negatives": 4, "epsilon": 0.6}):
        cfg = BM25Config.from_dict(options)
        mined, report = mine_bm25_negatives(table(rows), pools, cfg)
        assert report["pools"]["sts22"]["epsilon_idf_terms"] > 0
        assert_matches_reference(mined, rows, pools, cfg, report)


@pytest.mark.parametrize("on_shortfall", ["keep", "drop"])
def test_shortfall_keep_or_drop(on_shortfall):
    cats = [
        ("Cats sleep.", "Cats are sleeping.", 4.5),
        ("Cats sleep!", "Felines sleep.", 4.2),  # the same q+ once normalized
    ]
    dogs = [("Dogs bark loudly.", "A dog barks.", 4.4), ("A dog sleeps.", "Birds sing.", 0.3)]
    pools = {"sts12": raw_sts(cats), "sts22": raw_sts(dogs)}
    rows = formatted_rows("sts12", cats) + formatted_rows("sts22", dogs)
    mined, report = mine_bm25_negatives(table(rows), pools, BM25Config(on_shortfall=on_shortfall))
    # In sts12 every text is rank 1, q+, d+ or a gold > 2.5 partner of "cats sleep".
    cats_report = report["sources"]["sts12"]
    assert cats_report["shortfall"] == 2 and report["sources"]["sts22"]["shortfall"] == 0
    got = {r["id"]: r for r in mined.to_pylist()}
    assert got["sts22-0"]["negatives"] == ["A dog sleeps."]
    if on_shortfall == "drop":
        assert cats_report["dropped"] == 2 and list(got) == ["sts22-0"]
    else:
        assert cats_report["kept_without_negatives"] == 2 and list(got) == ["sts12-0", "sts12-1", "sts22-0"]
        assert got["sts12-0"]["negatives"] == [] and got["sts12-0"]["negative_method"] == "none"
        assert got["sts12-0"]["negative_scores"] == []


def test_rows_with_negatives_pass_through_and_bad_rows_are_refused():
    pairs = sts_pairs(60, seed=7)
    pools = {"sts12": raw_sts(pairs)}
    rows = formatted_rows("sts12", pairs)
    rows[0] = dict(rows[0], negatives=["given"], negative_scores=[0.5], negative_method="bm25", positive_score=1.0)
    mined, report = mine_bm25_negatives(table(rows), pools, BM25Config())
    assert mined.slice(0, 1).to_pylist() == table(rows[:1]).to_pylist()
    assert report["sources"]["sts12"]["already_had_negatives"] == 1
    assert report["sources"]["sts12"]["mined"] == len(rows) - 1

    with pytest.raises(NvdataError, match="task_type 'retrieval'"):
        mine_bm25_negatives(table([dict(rows[1], task_type="retrieval")]), pools, BM25Config())
    with pytest.raises(NvdataError, match="no pool"):
        mine_bm25_negatives(table([dict(rows[1], source="sts22")]), pools, BM25Config())
    with pytest.raises(NvdataError, match="RAW_STS"):
        mine_bm25_negatives(table(rows), {"sts12": pools["sts12"].drop(["score"])}, BM25Config())


def test_pool_is_deduplicated_on_normalized_text_in_row_index_order():
    t = pa.table(
        {"row_index": [1, 0], "sentence1": ["B b.", "A a"], "sentence2": ["a A!", "b b"], "score": [1.0, 2.0]},
        schema=schema.RAW_STS,
    )
    pool = build_sts_pool("x", [t])
    assert pool.texts == ["A a", "b b"]


def test_walk_ranking_counts_the_first_rule_that_fits():
    picked, skipped = walk_ranking(np.array([5, 1, 2, 3, 4]), 2, 2, {5, 1}, {1, 2})
    assert picked == [3, 4]
    assert skipped == {"rank": 1, "self_or_positive": 1, "gold_above_max": 1}


def test_config_from_dict_and_to_dict():
    cfg = BM25Config.from_dict({"k1": 2, "num_negatives": 3, "pool": "all"}, "recipe.mining.bm25")
    assert cfg.k1 == 2.0 and isinstance(cfg.k1, float)
    assert BM25Config.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())
    bad = [({"k": 1}, "recipe.x.k: unknown"), ({"b": 1.5}, "recipe.x.b"), ({"k1": 0}, "recipe.x.k1"),
           ({"pool": "global"}, "recipe.x.pool"), ({"num_negatives": 0}, "recipe.x.num_negatives"),
           ({"token_pattern": "(a)"}, "recipe.x.token_pattern"), ({"token_pattern": "["}, "recipe.x.token_pattern"),
           ({"lowercase": "yes"}, "recipe.x.lowercase"), ({"on_shortfall": "pad"}, "recipe.x.on_shortfall"),
           ({"min_rank": True}, "recipe.x.min_rank"), ({"epsilon": float("nan")}, "recipe.x.epsilon")]
    for d, message in bad:
        with pytest.raises(NvdataError, match=message.replace(".", r"\.")):
            BM25Config.from_dict(d, "recipe.x")
    with pytest.raises(NvdataError, match="BM25Config.query_batch_size"):
        BM25Config(query_batch_size=0)
