"""Decontamination: tokens and hashes, config, test-set resolution, the three methods, plants
in the sample mirror, the negative policy, the report and the audit.

The MTEB half of the sample mirror comes from ``samplegen_mteb``; the training half here is a
small stand-in written from its own vocabulary (so clean rows share nothing with the test
sets by construction), with contamination planted by ``plant_contamination``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash

from nvdata.decontam import (
    DecontamConfig,
    DecontamCounts,
    audit_build,
    build_test_index,
    decontaminate_table,
    scan_rows,
    write_report,
)
from nvdata.decontam.report import clip
from nvdata.decontam.testsets import resolve_test_sets
from nvdata.decontam.text import WindowHasher, minhash_permutations, minhash_signatures, tokenize
from nvdata.errors import NvdataError
from nvdata.mirror import write_hub_repo
from nvdata.registry import load_registry
from nvdata.samplegen_mteb import EXPECTED_METHOD, _texts, _test_specs, mteb_sample_repos, plant_contamination
from nvdata.schema import ROW
from nvdata.text import normalize_text


# -- tokens, window hashes, MinHash -----------------------------------------------------------
def test_tokens_equal_normalize_text_on_ascii_and_unicode():
    rng = random.Random(0)
    alphabet = "abcXYZ09 _-,.!?\t\n\x1c\x00'\"é"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(1500)]
    texts += [None, "", "Ünïcödé ﬁne ＦＵＬＬ width", "STRASSE Straße", "a\u00a0b\u2003c"]
    tb = tokenize(texts)
    for i, t in enumerate(texts):
        assert tb.normalized(i) == normalize_text(t or ""), repr(t)


def test_every_window_is_hashed_once_and_equal_windows_hash_equal():
    texts = ["one two three four five", "a b", "", "x y z w", "solo", "Two, THREE four!"]
    tb = tokenize(texts)
    hasher = WindowHasher()
    s = hasher.prefix(tb)
    starts, keys = hasher.windows(tb, s, 3)
    got = [(int(tb.parent[p]), tb.tokens(int(tb.parent[p]), int(p - tb.offsets[tb.parent[p]]), 3)) for p in starts]
    want = [(i, normalize_text(t).split()[j : j + 3]) for i, t in enumerate(texts) for j in range(len(t.split()) - 2)]
    assert got == want
    by_window = {}
    for (_, w), k in zip(want, keys.tolist(), strict=True):
        by_window.setdefault(tuple(w), set()).add(k)
    assert by_window[("two", "three", "four")] == {keys.tolist()[1]} == {keys.tolist()[-1]}
    assert len(set(keys.tolist())) == len(by_window)
    # the same window hashes the same in another batch, at another position
    other = tokenize(["zero " * 7 + "two three four"])
    s2 = hasher.prefix(other)
    assert hasher.windows(other, s2, 3)[1].tolist()[-1] == keys.tolist()[1]
    idx, whole = hasher.whole(tb, s)
    assert list(idx) == [0, 1, 3, 4, 5] and whole[1] != whole[3]


def test_minhash_signatures_equal_datasketch():
    rng = np.random.default_rng(1)
    shingles = rng.integers(0, 2**63, 40, dtype=np.uint64)
    perm = minhash_permutations(64, seed=3)
    sig = minhash_signatures(shingles, np.array([0, 10, 11]), perm, chunk_rows=4)
    for row, (lo, hi) in enumerate([(0, 10), (10, 11), (11, 40)]):
        m = MinHash(num_perm=64, seed=3, scheme="affine64", hashfunc=lambda x: x)
        m.update_batch([int(x) for x in shingles[lo:hi]])
        assert np.array_equal(m.hashvalues, sig[row])


# -- config -------------------------------------------------------------------------------------
def test_index_tables_built_bucket_by_bucket_equal_the_in_memory_sort(tmp_path):
    # The index build spills keys to disk by their top bits and sorts one bucket at a time, so
    # it never holds every n-gram of the test sets; the result must equal one global sort.
    from nvdata.decontam.index import _BucketSpill, first_item_per_task, write_key_bloom, write_table
    from nvdata.decontam.text import bloom_test

    rng = np.random.default_rng(0)
    item_task = rng.integers(0, 3, 5000).astype(np.uint16)
    spill, plain = _BucketSpill(tmp_path / "spill", "ngram"), _BucketSpill(tmp_path / "spill", "shingles")
    all_k, all_i, start = [], [], 0
    for _ in range(7):  # items arrive in increasing order, keys repeat across and within adds
        n = int(rng.integers(0, 900))
        keys = rng.choice(np.r_[rng.integers(0, 2**64, 300, dtype=np.uint64), np.arange(40, dtype=np.uint64)], n)
        items = np.sort(rng.integers(start, start + 700, n)).astype(np.uint32)
        start += 700
        spill.add(keys, items)
        plain.add(keys)
        all_k.append(keys)
        all_i.append(items)
    want_k, want_i = first_item_per_task(np.concatenate(all_k), np.concatenate(all_i), item_task)
    n = write_table(spill, item_task, tmp_path, "ngram", bloom=True)
    assert n == len(want_k)
    assert np.array_equal(np.load(tmp_path / "ngram_keys.npy"), want_k)
    assert np.array_equal(np.load(tmp_path / "ngram_items.npy"), want_i)
    assert bloom_test(np.load(tmp_path / "ngram_bloom.npy"), want_k).all()
    assert write_key_bloom(plain, tmp_path / "shingle_bloom.npy") == len(np.unique(np.concatenate(all_k)))
    assert bloom_test(np.load(tmp_path / "shingle_bloom.npy"), np.concatenate(all_k)).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ngram_bloom.npy", "ngram_items.npy", "ngram_keys.npy",
                                                          "shingle_bloom.npy", "spill"]


def test_config_defaults_roundtrip_and_errors_name_the_key():
    cfg = DecontamConfig()
    assert (cfg.ngram_n, cfg.min_ngram_words, cfg.minhash_threshold, cfg.shingle_size) == (13, 8, 0.8, 5)
    assert cfg.benchmarks == ("MTEB(eng, v1)",) and cfg.negative_policy == "drop_row"
    assert DecontamConfig.from_dict(cfg.to_dict(), "r") == cfg
    assert "negative_policy" not in cfg.index_options()
    with pytest.raises(NvdataError, match=r"recipe\.decontam\.ngram_size: unknown key"):
        DecontamConfig.from_dict({"ngram_size": 13}, "recipe.decontam")
    with pytest.raises(NvdataError, match=r"decontam\.negative_policy"):
        DecontamConfig.from_dict({"negative_policy": "keep"}, "decontam")
    with pytest.raises(NvdataError, match=r"decontam\.ngram_n: expected int"):
        DecontamConfig.from_dict({"ngram_n": "13"}, "decontam")
    with pytest.raises(NvdataError, match=r"decontam\.add_tasks: expected a list"):
        DecontamConfig.from_dict({"add_tasks": "NQ"}, "decontam")
    with pytest.raises(NvdataError, match=r"decontam\.min_ngram_words"):
        DecontamConfig.from_dict({"min_ngram_words": 20}, "decontam")
    with pytest.raises(NvdataError, match=r"decontam\.methods"):
        DecontamConfig.from_dict({"methods": ["exact", "fuzzy"]}, "decontam")


# -- test-set resolution ---------------------------------------------------------------------------
def test_benchmark_resolves_to_english_eval_splits_with_cqadupstack_subtasks():
    specs = {s.task: s for s in _test_specs()}
    assert len(specs) == 67 and "CQADupstackRetrieval" not in specs
    cqa = [s for s in specs.values() if s.parent == "CQADupstackRetrieval"]
    assert len(cqa) == 12 and all(s.kind == "retrieval" for s in cqa)
    assert specs["STS17"].subsets == ("en-en",) and specs["STS22"].subsets == ("en",)
    assert specs["MTOPDomainClassification"].subsets == ("en",)
    assert set(specs["AmazonReviewsClassification"].splits) == {"validation", "test"}
    assert specs["MSMARCO"].splits == ("dev",)
    assert specs["SprintDuplicateQuestions"].columns == ("sentence1", "sentence2")
    assert "machine_summaries" in specs["SummEval"].columns


def test_recipe_adds_and_drops_tasks():
    cfg = DecontamConfig(benchmarks=(), add_tasks=("NQ", "STS17", "CQADupstackRetrieval"), drop_tasks=("CQADupstackTexRetrieval",))
    specs = {s.task: s for s in resolve_test_sets(cfg)}
    assert "NQ" in specs and "CQADupstackTexRetrieval" not in specs and "CQADupstackUnixRetrieval" in specs
    assert all(p.split("-") == ["en", "en"] for p in specs["STS17"].subsets)
    with pytest.raises(NvdataError, match="drop_tasks"):
        resolve_test_sets(DecontamConfig(drop_tasks=("NoSuchTask",)))
    with pytest.raises(NvdataError, match="add_tasks"):
        resolve_test_sets(DecontamConfig(add_tasks=("NoSuchTask",)))
    with pytest.raises(NvdataError, match="benchmarks"):
        resolve_test_sets(DecontamConfig(benchmarks=("MTEB(klingon)",)))


# -- the sample mirror: MTEB half from samplegen_mteb, training stand-in, plants -------------------
_TRAIN_WORDS = {
    "N": "teapot|basil|kayak|trellis|saucepan|marathon|sourdough|compost|canoe|skillet|tulip|racket|oven mitt|rowing club|herb garden|pickle jar",
    "V": "rinse|prune|paddle|knead|season|repot|sharpen|varnish|preheat|water",
    "A": "crispy|leafy|sturdy|tangy|soggy|rusty|fragrant|speedy|muddy|golden",
    "W": "on Sunday|after practice|before dinner|in spring|at dawn|during the heatwave|every other week",
}
_TRAIN_TEMPLATES = [
    "how do you {V} a {A} {N} {W}", "my {N} got {A} {W}, should i {V} it",
    "{V} the {N} gently and keep it {A} {W}.", "The {A} {N} is easier to {V} {W} than a {N}.",
    "Grandma always said to {V} the {N} {W} so it stays {A}.",
]


def _train_text(rng: random.Random, sentences: int = 1) -> str:
    def one() -> str:
        t = rng.choice(_TRAIN_TEMPLATES)
        for k, words in _TRAIN_WORDS.items():
            while "{" + k + "}" in t:
                t = t.replace("{" + k + "}", rng.choice(words.split("|")), 1)
        return t + f" ({rng.randint(1, 10**6)})"

    return " ".join(one() for _ in range(sentences))


def training_repos(seed: int = 0, rows: int = 30) -> dict:
    """Hub-layout training repos for every registry source, from a kitchen/garden vocabulary."""
    rng = random.Random(seed)
    repos: dict = {}
    for name, e in load_registry().items():
        repo = repos.setdefault(e.hf_id, {})
        if e.layout == "beir":
            docs = [{"_id": f"d{i}", "title": "", "text": _train_text(rng, 3)} for i in range(rows)]
            queries = [{"_id": f"q{i}", "text": _train_text(rng)} for i in range(rows)]
            qrels = [{"query-id": f"q{i}", "corpus-id": f"d{i}", "score": 1} for i in range(rows)]
            repo["corpus"] = {"corpus": pa.Table.from_pylist(docs)}
            repo["queries"] = {"queries": pa.Table.from_pylist(queries)}
            repo["default"] = {e.split: pa.Table.from_pylist(qrels)}
            continue
        config = e.config or "default"
        cols = dict(e.columns)
        table = repo.get(config, {}).get(e.split)
        data = {} if table is None else table.to_pydict()
        for canon, col in cols.items():
            if col in data:
                continue
            if canon in ("label",):
                data[col] = [rng.randrange(5) for _ in range(rows)]
            elif canon == "score":
                data[col] = [round(rng.uniform(0, 5), 2) for _ in range(rows)]
            elif canon == "categories":
                data[col] = [rng.choice(["cs.CL", "q-bio.GN", "math.PR"]) for _ in range(rows)]
            elif canon == "label_text":
                data[col] = [rng.choice(["sunny", "rainy"]) for _ in range(rows)]
            else:
                data[col] = [_train_text(rng, rng.choice([1, 1, 3])) for _ in range(rows)]
        repo.setdefault(config, {})[e.split] = pa.table(data)
    return repos


def raw_tables(repos: dict) -> list[tuple[str, pa.Table, list[str], str]]:
    """A minimal stand-in for download: (source, raw table, text fields, id column)."""
    out = []
    for name, e in load_registry().items():
        repo = repos[e.hf_id]
        if e.layout == "beir":
            corpus = next(iter(repo["corpus"].values())).to_pylist()
            queries = {r["_id"]: r["text"] for r in next(iter(repo["queries"].values())).to_pylist()}
            docs = {r["_id"]: r["text"] for r in corpus}
            positive = [r for r in repo["default"][e.split].to_pylist() if r["score"] > 0]
            pairs = [  # numbered among the positive qrels, as download does
                {"row_index": i, "query": queries[r["query-id"]], "positive": docs[r["corpus-id"]]}
                for i, r in enumerate(positive)
            ]
            out.append((name, pa.Table.from_pylist(pairs), ["query", "positive"], "row_index"))
            out.append((f"{name}/corpus", pa.table({"doc_id": list(docs), "text": list(docs.values())}), ["text"], "doc_id"))
            continue
        t = repo[e.config or "default"][e.split]
        cols = {"row_index": list(range(t.num_rows))}
        fields = [c for c in ("query", "positive", "text", "sentence1", "sentence2") if c in e.columns]
        for canon in fields:
            cols[canon] = t.column(e.columns[canon]).to_pylist()
        out.append((name, pa.table(cols), fields, "row_index"))
    return out


def _plant_row_key(p: dict) -> tuple[str, str]:
    if p.get("pairs_row_index") is not None:
        return p["source"], str(p["pairs_row_index"])
    if p.get("config") == "corpus":
        return f"{p['source']}/corpus", p["corpus_id"]
    return p["source"], str(p["row_index"])


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("decontam")
    tests = mteb_sample_repos(seed=0)
    training, plants = plant_contamination(training_repos(), tests, seed=0)
    # decoy: a German-subset test text copied into training must not count (English subsets only)
    de = tests["mteb/MTOPDomainClassification"]["de"]["test"].column("text")[0].as_py()
    bank = training["mteb/banking77"]["default"]["train"]
    training["mteb/banking77"]["default"]["train"] = pa.concat_tables(
        [bank, pa.Table.from_pylist([{"text": de, "label": 0, "label_text": "x"}], schema=bank.schema)]
    )
    mirror = root / "mirror"
    for repo_id in set(tests) | set(training):
        merged: dict = {}
        for half in (training.get(repo_id, {}), tests.get(repo_id, {})):
            for config, splits in half.items():
                for split, table in splits.items():
                    merged.setdefault(config, {})
                    prev = merged[config].get(split)
                    merged[config][split] = table if prev is None else pa.concat_tables([prev, table], promote_options="default")
        write_hub_repo(mirror / repo_id, merged)
    cfg = DecontamConfig()
    index = build_test_index(cfg, mirror=mirror, cache_dir=root / "cache")
    return {"root": root, "mirror": mirror, "tests": tests, "training": training, "plants": plants, "cfg": cfg, "index": index, "decoy": de}


def test_sample_mirror_covers_every_test_set_in_its_layout(sample):
    tests, index = sample["tests"], sample["index"]
    specs = _test_specs()
    assert {s.path for s in specs} <= set(tests)
    summary = index.summary()["test_sets"]
    assert all(summary[s.task]["texts"] > 0 for s in specs) and len(summary) == 67
    msmarco = tests["mteb/msmarco"]
    assert set(msmarco) == {"corpus", "queries", "default"} and set(msmarco["default"]) == {"dev"}
    assert all(i.startswith("t-") for i in msmarco["corpus"]["corpus"].column("_id").to_pylist())
    assert set(tests["mteb/SciDocsRR"]) == {"corpus", "queries", "qrels", "top_ranked"}
    assert tests["mteb/sprintduplicatequestions-pairclassification"]["default"]["test"].num_rows == 1
    # only judged-relevant documents are test texts: the score-0 and unjudged ones are not
    nq = {t["item_id"] for t in _texts(tests, next(s for s in specs if s.task == "NQ"))}
    all_docs = set(tests["mteb/nq"]["corpus"]["corpus"].column("_id").to_pylist())
    assert len(all_docs - nq) == 4
    size = sum(p.stat().st_size for p in sample["mirror"].rglob("*") if p.is_file() and "mteb/" in str(p.relative_to(sample["mirror"])))
    assert size < 2_000_000


def test_index_is_cached_and_keyed_by_options(sample):
    cfg, root = sample["cfg"], sample["root"]
    again = build_test_index(cfg, mirror=sample["mirror"], cache_dir=root / "cache")
    assert again.path == sample["index"].path
    other = build_test_index(DecontamConfig(benchmarks=(), add_tasks=("NQ",), ngram_n=10), mirror=sample["mirror"], cache_dir=root / "cache")
    assert other.path != again.path and other.summary()["options"]["ngram_n"] == 10
    drop_neg = DecontamConfig(negative_policy="drop_negative")
    assert build_test_index(drop_neg, mirror=sample["mirror"], cache_dir=root / "cache").path == again.path


def test_every_plant_is_caught_by_its_method_and_clean_rows_are_kept(sample):
    plants, cfg, index = sample["plants"], sample["cfg"], sample["index"]
    assert {p["kind"] for p in plants} == set(EXPECTED_METHOD) and len(plants) >= 16
    planted = {_plant_row_key(p) for p in plants}
    hits, counts = [], DecontamCounts()
    clean_rows = kept_clean = 0
    for source, table, fields, id_col in raw_tables(sample["training"]):
        clean, h = decontaminate_table(table, fields, source=source, index=index, cfg=cfg, id_column=id_col, counts=counts)
        hits += h
        ids = {str(x) for x in table.column(id_col).to_pylist()}
        kept = {str(x) for x in clean.column(id_col).to_pylist()}
        clean_ids = {i for i in ids if (source, i) not in planted}
        clean_rows += len(clean_ids)
        kept_clean += len(clean_ids & kept)
        assert not ({i for i in ids if (source, i) in planted} & kept), f"{source}: a planted row survived"
    by_row: dict = {}
    for h in hits:
        by_row.setdefault((h["source"], h["row_id"]), []).append(h)
    for p in plants:
        found = by_row.get(_plant_row_key(p), [])
        methods = {h["method"] for h in found if h["test_set"] == p["test_task"]}
        assert p["expected_method"] in methods, (p["kind"], p["test_task"], p["text"], found)
        assert any(h["test_item_id"] == p["test_item_id"] and h["split"] == p["test_split"] for h in found)
    false_positives = clean_rows - kept_clean
    assert clean_rows > 900 and false_positives == 0, f"false-positive rate {false_positives}/{clean_rows}"
    assert not [h for h in hits if h["test_set"] == "MTOPDomainClassification"]  # the German decoy
    # the report names each hit, counted per source and per test set
    short = write_report(hits, counts, sample["root"] / "reports", index=index, cfg=cfg)
    assert short["dropped_decontamination"] == len(planted) and short["test_sets"] == 67 and short["by_method"]["near_dup"] >= 4
    json.dumps(short)  # goes into the manifest as is
    doc = json.loads((sample["root"] / "reports" / "decontamination.json").read_text())
    mpath = sample["root"] / "reports" / "decontamination.md"
    assert doc["totals"]["dropped_decontamination"] == len(planted) and len(doc["hits"]) == len(hits)
    assert doc["sources"]["banking77"]["raw_rows"] == 32 and doc["sources"]["banking77"]["dropped_decontamination"] == 1
    assert doc["test_sets"]["STS22"]["rows_matched_by_method"]["near_dup"] == 1
    assert doc["test_sets"]["NQ"]["texts_indexed"] > 0
    md = mpath.read_text()
    for p in plants:  # each plant under its test set, beside the test text it copies
        assert f"### {p['test_task']} (" in md and f"{p['test_item_id']}:" in md
        assert clip(p["test_text"]) in md.replace("\\|", "|")


def test_each_method_alone_and_its_boundaries(sample):
    tests, index, cfg = sample["tests"], sample["index"], sample["cfg"]
    specs = {s.task: s for s in _test_specs()}
    doc = max(_texts(tests, specs["FiQA2018"]), key=lambda t: len(t["text"].split()))
    words = normalize_text(doc["text"]).split()
    sts = next(t for t in _texts(tests, specs["STS13"]) if 9 <= len(normalize_text(t["text"]).split()) <= 12)
    short = next(t for task in ("STS13", "STS14", "STS15") for t in _texts(tests, specs[task]) if 4 <= len(normalize_text(t["text"]).split()) < 8)
    mid = normalize_text(sts["text"])
    rows = {
        "exact": "  " + doc["text"].upper().replace(" ", " \t ") + " !!",
        "ngram13": "Kayak notes first. " + " ".join(words[5:18]) + " and then the canoe.",
        "ngram12": "Kayak notes first. " + " ".join(words[5:17]) + " and then the canoe.",
        "short_whole": "Before dinner I read: " + mid + ", said nobody.",
        "short_partial": "Before dinner I read: " + " ".join(mid.split()[:-1]) + " and more words here to pad it.",
        "tiny_inside": "so " + normalize_text(short["text"]) + " tomorrow at dawn please",
        "tiny_exact": short["text"].upper(),
        "near_dup": " ".join(words[:-1] + ["kayak"]) if len(words) > 90 else " ".join(words[:-1]),
    }
    table = pa.table({"row_index": list(rows), "text": list(rows.values())})
    clean, hits = decontaminate_table(table, ["text"], source="t", index=index, cfg=cfg, id_column="row_index")
    got: dict = {}
    for h in hits:
        got.setdefault(h["row_id"], set()).add(h["method"])
    assert "exact" in got["exact"] and "exact" in got["tiny_exact"]
    assert got["ngram13"] == {"ngram"} and "ngram12" not in got
    assert got["short_whole"] == {"ngram"} and "short_partial" not in got and "tiny_inside" not in got
    assert "near_dup" in got["near_dup"]
    ng = next(h for h in hits if h["row_id"] == "ngram13")
    assert ng["evidence"] == {"ngram": " ".join(words[5:18]), "n": 13} and ng["test_set"] == "FiQA2018"
    nd = next(h for h in hits if h["row_id"] == "near_dup" and h["method"] == "near_dup")
    assert nd["evidence"]["jaccard"] >= 0.8 and nd["test_item_id"] == doc["item_id"]
    assert set(clean.column("row_index").to_pylist()) == {"ngram12", "short_partial", "tiny_inside"}
    # tokenizing in small chunks finds the same matches
    from nvdata.decontam.match import Matcher

    texts = table.column("text")
    key = lambda ms: sorted((m.text, m.method, m.item) for m in ms)  # noqa: E731
    assert key(Matcher(index, cfg, max_chunk_bytes=40).find_texts(texts)) == key(Matcher(index, cfg).find_texts(texts))
    # methods can be switched off one by one
    only_exact = DecontamConfig(methods=("exact",))
    _, h2 = decontaminate_table(table, ["text"], source="t", index=build_test_index(only_exact, mirror=sample["mirror"], cache_dir=sample["root"] / "cache"), cfg=only_exact, id_column="row_index")
    assert {h["method"] for h in h2} == {"exact"}


def _rows_table(negatives: list[list[str]], queries: list[str]) -> pa.Table:
    n = len(queries)
    return pa.Table.from_pylist(
        [
            {"id": f"r{i}", "source": "nq", "task_type": "retrieval", "instruction": "Given a question",
             "query": queries[i], "positive": "The kayak club meets at dawn.", "negatives": negatives[i],
             "negative_scores": [0.5 - 0.1 * j for j in range(len(negatives[i]))], "positive_score": 0.9,
             "negative_method": "dense", "in_batch_negatives": True, "document_instruction": None}
            for i in range(n)
        ],
        schema=ROW,
    )


def test_contaminated_negative_drops_row_or_only_itself(sample):
    index, tests = sample["index"], sample["tests"]
    test_q = tests["mteb/nq"]["queries"]["queries"].column("text")[0].as_py()
    negs = [["rinse the teapot", test_q, "prune the basil"], ["sharpen the skillet"]]
    table = _rows_table(negs, ["how do i repot a tulip", "when to paddle a canoe"])
    kept, hits = scan_rows(table, index=index, cfg=DecontamConfig())
    assert kept.column("id").to_pylist() == ["r1"] and hits[0]["field"] == "negatives[1]" and hits[0]["action"] == "drop_row"
    cfg = DecontamConfig(negative_policy="drop_negative")
    kept, hits = scan_rows(table, index=index, cfg=cfg)
    assert kept.column("id").to_pylist() == ["r0", "r1"]
    assert kept.column("negatives")[0].as_py() == ["rinse the teapot", "prune the basil"]
    assert kept.column("negative_scores")[0].as_py() == pytest.approx([0.5, 0.3])
    assert {(h["row_id"], h["field"], h["action"], h["test_set"]) for h in hits} == {("r0", "negatives[1]", "drop_negative", "NQ")}
    assert "exact" in {h["method"] for h in hits}
    assert kept.schema == ROW


def _write_build(out: Path, table: pa.Table) -> None:
    (out / "shards").mkdir(parents=True)
    pq.write_table(table, out / "shards" / "part-00000.parquet")
    sha = hashlib.sha256((out / "shards" / "part-00000.parquet").read_bytes()).hexdigest()
    manifest = {"shards": [{"file": "shards/part-00000.parquet", "rows": table.num_rows, "sha256": sha}]}
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_audit_checks_checksums_and_rescans_shards(sample, tmp_path):
    cfg, mirror, cache = sample["cfg"], sample["mirror"], sample["root"] / "cache"
    clean = _rows_table([["rinse the teapot"], ["prune the basil"]], ["how do i repot a tulip", "when to paddle a canoe"])
    _write_build(tmp_path / "ok", clean)
    result = audit_build(tmp_path / "ok", mirror=mirror, cache_dir=cache, cfg=cfg)
    assert result["ok"] and result["rows_checked"] == 2 and not result["hits"]

    test_doc = sample["tests"]["mteb/fiqa"]["corpus"]["corpus"].column("text")[0].as_py()
    dirty = _rows_table([["rinse the teapot", test_doc], ["prune the basil"]], ["how do i repot a tulip", "when to paddle a canoe"])
    _write_build(tmp_path / "dirty", dirty)
    result = audit_build(tmp_path / "dirty", mirror=mirror, cache_dir=cache, cfg=cfg)
    assert not result["ok"] and {h["row_id"] for h in result["hits"]} == {"r0"}

    tampered = tmp_path / "ok" / "shards" / "part-00000.parquet"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    (tmp_path / "ok" / "shards" / "part-00001.parquet").write_bytes(b"")
    result = audit_build(tmp_path / "ok", mirror=mirror, cache_dir=cache, cfg=cfg)
    problems = {(p["file"], p["problem"]) for p in result["file_problems"]}
    assert ("shards/part-00000.parquet", "sha256 mismatch") in problems
    assert ("shards/part-00001.parquet", "not in manifest") in problems and not result["ok"]
