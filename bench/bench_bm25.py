"""BM25 STS negatives: nvdata's engine vs rank_bm25 (the reference), in one run.

    python bench/bench_bm25.py                      # pools of 10k, 50k and 200k texts
    python bench/bench_bm25.py --sizes 50000 --sample 50
    python bench/bench_bm25.py --small              # 2k and 10k, a quick look

For each pool size it generates STS-like pairs (captions and news-style sentences, a Zipfian
tail of rare words and names, gold scores falling with how much of a sentence was changed),
mines every row with ``mine_bm25_negatives`` (end to end: pool, index, scoring, rule), then
runs rank_bm25 on a sample of the same rows (BM25Okapi over the same pool, ``get_scores``, a
stable argsort, the same walk) and extrapolates its per-query time to all rows. It prints
both times and their ratio, and checks on the sampled rows that the negatives are the same
and the scores agree. rank_bm25's build time is counted too (tokenizing the pool included).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pyarrow as pa
from rank_bm25 import BM25Okapi

from nvdata import schema
from nvdata.mine.bm25 import BM25Config, build_sts_pool, gold_partners, mine_bm25_negatives, walk_ranking
from nvdata.mine.okapi import OkapiIndex
from nvdata.text import normalize_text

SUBJECTS = ["a man", "a woman", "the man", "the woman", "two men", "two women", "a boy", "a girl",
            "a young child", "the dog", "a black dog", "a cat", "a person", "someone", "a group of people",
            "the players", "a chef", "officials", "police", "the company", "a student", "the team",
            "an old man", "a little girl", "the crowd", "a soldier", "the driver", "a musician"]
VERBS = ["is playing", "is riding", "is cutting", "is eating", "is slicing", "is holding", "plays",
         "rides", "cuts", "is walking on", "is running through", "is jumping over", "is standing near",
         "is sitting on", "is looking at", "is talking to", "is cleaning", "is painting", "is carrying",
         "is throwing", "is climbing", "is pushing", "is peeling", "is dancing with"]
OBJECTS = ["a guitar", "the piano", "a horse", "a bike", "an onion", "a potato", "the ball", "a flute",
           "some meat", "the street", "the grass", "a fence", "the water", "a car", "the beach", "a tree",
           "the stage", "a wall", "a rope", "the snow", "a box", "a banana", "the floor", "a kite"]
TAILS = ["", "", "", "", "in the park", "at night", "in the city", "with a friend", "near the river",
         "for the first time", "after the game", "in front of a crowd", "outside", "in the kitchen"]
NEWS_VERBS = ["said", "announced", "reported", "denied", "confirmed", "warned", "told reporters"]
NEWS_NOUNS = ["shares", "profits", "sales", "troops", "talks", "prices", "the deal", "the vote",
              "the bill", "the report", "the company", "the court", "the government", "the market"]
NEWS_TIMES = ["on monday", "on tuesday", "on wednesday", "on thursday", "on friday", "last week",
              "this year", "in march", "in 2003", "earlier this month", ""]
SYLLABLES = ["ka", "lo", "mi", "ren", "sa", "tor", "vi", "del", "ba", "nu", "pe", "quin", "ro",
             "sha", "tek", "ul", "wen", "xo", "ya", "zar", "an", "bel", "cor", "dun", "el", "fi"]


class StsLikeGenerator:
    """Deterministic STS-like sentences and pairs."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        n_rare = 40_000
        parts = self.rng.integers(0, len(SYLLABLES), size=(n_rare, 3))
        lengths = self.rng.integers(2, 4, size=n_rare)
        rare = {"".join(SYLLABLES[p] for p in row[:n]) for row, n in zip(parts, lengths)}
        self.rare = np.array(sorted(rare))

    def _pick(self, words):
        return words[self.rng.integers(len(words))]

    def _rare(self, k: int) -> list[str]:
        ranks = np.minimum(self.rng.zipf(1.25, size=k), len(self.rare)) - 1
        return self.rare[ranks].tolist()

    def slots(self) -> list[str]:
        if self.rng.random() < 0.6:  # image captions (STSB, STS12 MSRvid)
            return [self._pick(SUBJECTS), self._pick(VERBS), self._pick(OBJECTS), self._pick(TAILS),
                    " ".join(self._rare(int(self.rng.integers(0, 3))))]
        name = " ".join(w.capitalize() for w in self._rare(int(self.rng.integers(1, 3))))
        number = str(int(self.rng.integers(2, 5000)))
        return [name, self._pick(NEWS_VERBS), f"{number} {self._pick(NEWS_NOUNS)}", self._pick(NEWS_TIMES),
                " ".join(self._rare(int(self.rng.integers(2, 12))))]

    @staticmethod
    def render(slots: list[str]) -> str:
        text = " ".join(s for s in slots if s)
        return text[0].upper() + text[1:] + "."

    def pairs(self, n_texts: int) -> list[tuple[str, str, float]]:
        """Pairs until the pool (sentences deduplicated on normalized text) has n_texts."""
        seen: set[str] = set()
        out: list[tuple[str, str, float]] = []
        while len(seen) < n_texts:
            a = self.slots()
            changed = int(self.rng.integers(0, 6))
            if changed == 5:
                b, gold = self.slots(), self.rng.uniform(0, 1.0)
            elif changed == 0:  # a paraphrase: articles swapped, the rare tail dropped
                b = [a[0].replace("a ", "the ", 1) if a[0].startswith("a ") else "a " + a[0],
                     a[1], a[2], a[3], ""]
                gold = float(np.clip(4.7 + self.rng.normal(0, 0.3), 0, 5))
            else:
                other = self.slots()
                b = list(a)
                for slot in self.rng.choice(5, size=changed, replace=False):
                    b[slot] = other[slot]
                gold = float(np.clip(5 - 1.1 * changed + self.rng.normal(0, 0.4), 0, 5))
            s1, s2 = self.render(a), self.render(b)
            if s1 == s2:
                continue
            out.append((s1, s2, round(float(gold), 2)))
            seen.update((normalize_text(s1), normalize_text(s2)))
        return out


def tables(pairs, source: str) -> tuple[pa.Table, pa.Table]:
    raw = pa.table(
        {"row_index": np.arange(len(pairs)), "sentence1": [p[0] for p in pairs],
         "sentence2": [p[1] for p in pairs], "score": [p[2] for p in pairs]},
        schema=schema.RAW_STS,
    )
    keep = [i for i, p in enumerate(pairs) if p[2] >= 4.0]
    n = len(keep)
    rows = pa.table(
        {
            "id": [f"{source}-{i}" for i in keep],
            "source": [source] * n,
            "task_type": ["sts"] * n,
            "instruction": ["Retrieve semantically similar text."] * n,
            "query": [pairs[i][0] for i in keep],
            "positive": [pairs[i][1] for i in keep],
            "negatives": [[]] * n,
            "negative_scores": [[]] * n,
            "positive_score": [None] * n,
            "negative_method": ["none"] * n,
            "in_batch_negatives": [False] * n,
            "document_instruction": ["Retrieve semantically similar text."] * n,
            "query_id": [f"q{i}" for i in keep],
            "positive_id": [f"p{i}" for i in keep],
        },
        schema=schema.FORMATTED,
    )
    return raw, rows


def bench_size(n_texts: int, n_sample: int, seed: int) -> dict:
    source = "stsbenchmark"
    pairs = StsLikeGenerator(seed).pairs(n_texts)
    raw, rows = tables(pairs, source)
    cfg = BM25Config()
    tokenize = cfg.tokenizer()

    t0 = time.perf_counter()
    mined, report = mine_bm25_negatives(rows, {source: raw}, cfg)
    engine_s = time.perf_counter() - t0
    # The engine's index build alone (also inside engine_s), to split build from queries.
    pool = build_sts_pool(source, [raw])
    t0 = time.perf_counter()
    OkapiIndex([tokenize(t) for t in pool.texts], cfg.k1, cfg.b, cfg.epsilon)
    engine_build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = BM25Okapi([tokenize(t) for t in pool.texts], k1=cfg.k1, b=cfg.b, epsilon=cfg.epsilon)
    ref_build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    sample = np.sort(rng.choice(rows.num_rows, size=min(n_sample, rows.num_rows), replace=False))
    partners = gold_partners([raw], cfg.max_gold_score)
    queries, positives = rows.column("query").to_pylist(), rows.column("positive").to_pylist()
    got_neg, got_scores = mined.column("negatives").to_pylist(), mined.column("negative_scores").to_pylist()
    same = 0
    max_rel = 0.0
    ref_query_s = 0.0
    for i in sample.tolist():
        t0 = time.perf_counter()
        scores = ref.get_scores(tokenize(queries[i]))
        ranking = np.argsort(-scores, kind="stable")
        ref_query_s += time.perf_counter() - t0
        q, p = normalize_text(queries[i]), normalize_text(positives[i])
        skip_self = {pool.position[t] for t in (q, p) if t in pool.position}
        skip_gold = {pool.position[t] for t in partners.get(q, ()) if t in pool.position}
        picked, _ = walk_ranking(ranking, cfg.num_negatives, cfg.min_rank, skip_self, skip_gold)
        same += [pool.texts[d] for d in picked] == got_neg[i]
        if picked:
            want = scores[picked].astype(np.float32)  # the rows store float32
            diff = np.abs(np.asarray(got_scores[i], dtype=np.float32) - want) / np.maximum(np.abs(want), 1e-12)
            max_rel = max(max_rel, float(diff.max()))

    per_query_ref = ref_query_s / len(sample)
    ref_total = ref_build_s + per_query_ref * rows.num_rows
    engine_query_s = max(engine_s - engine_build_s, 1e-9)
    return {
        "pool": report["pools"][source]["texts"],
        "rows": rows.num_rows,
        "engine_s": engine_s,
        "engine_build_s": engine_build_s,
        "engine_ms_per_query": 1e3 * engine_query_s / rows.num_rows,
        "ref_build_s": ref_build_s,
        "ref_ms_per_query": 1e3 * per_query_ref,
        "ref_total_s": ref_total,
        "ratio_total": ref_total / engine_s,
        "ratio_query": per_query_ref * rows.num_rows / engine_query_s,
        "sampled": len(sample),
        "identical": same,
        "max_rel_score_diff": max_rel,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,200000", help="pool sizes, comma-separated")
    parser.add_argument("--sample", type=int, default=30, help="rows rank_bm25 runs per size")
    parser.add_argument("--small", action="store_true", help="sizes 2000,10000 and a 10-row sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [2000, 10000] if args.small else [int(s) for s in args.sizes.split(",") if s]
    sample = 10 if args.small else args.sample

    header = (f"{'pool':>7} {'rows':>6} | {'nvdata s':>8} {'build s':>7} {'ms/q':>6} | "
              f"{'rank_bm25 s':>11} {'build s':>7} {'ms/q':>7} | {'ratio':>6} {'q-ratio':>7} | same negatives")
    print(header)
    print("-" * len(header))
    ok = True
    for n in sizes:
        r = bench_size(n, sample, args.seed)
        ok &= r["identical"] == r["sampled"] and r["max_rel_score_diff"] <= 1e-6
        print(f"{r['pool']:>7} {r['rows']:>6} | {r['engine_s']:>8.2f} {r['engine_build_s']:>7.2f} "
              f"{r['engine_ms_per_query']:>6.3f} | {r['ref_total_s']:>11.1f} {r['ref_build_s']:>7.2f} "
              f"{r['ref_ms_per_query']:>7.1f} | {r['ratio_total']:>5.0f}x {r['ratio_query']:>6.0f}x | "
              f"{r['identical']}/{r['sampled']} (max rel score diff {r['max_rel_score_diff']:.1e})", flush=True)
    print("rank_bm25 s = its build + its per-query time (sampled rows) x all rows; "
          "ratio = that / nvdata's end-to-end time; q-ratio = query time only.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
