"""The MTEB-test-set half of the bundled sample mirror, and planted contamination.

``mteb_sample_repos`` writes, for every test set decontamination reads (resolved from mteb's
metadata exactly as ``nvdata.decontam.testsets`` resolves them), a few dozen rows in the layout
mteb's loaders read: BEIR corpus/queries/qrels for retrieval, corpus/queries/qrels/top_ranked
for reranking, text/label/label_text for classification, one cluster set per row for
clustering, sentence1/sentence2/score for STS, one row of sent1/sent2/labels lists for pair
classification, text plus summaries for SummEval. Every text is generated here from
templates and word lists with a seeded RNG; nothing is copied from the real test sets.
Retrieval ids start with ``t-`` so they never collide with the training half of a repo.

``plant_contamination`` appends contaminated rows to the training half (exact copies,
case/space/punctuation variants, a 13-gram inside a longer text, small-edit paraphrases) and
returns the list of plants, which the tests expect decontamination to catch one by one.
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from typing import Any

import pyarrow as pa

from nvdata.decontam.text import jaccard, shingle_set
from nvdata.text import normalize_text

Repos = dict[str, dict[str, dict[str, pa.Table]]]

# -- a small templated writer ---------------------------------------------------------------
_W = {
    "science": {
        "T": "protein folding|gene regulation|soil microbiomes|graph partitioning|dark matter halos|sleep spindles|coral bleaching|battery electrolytes|tumour hypoxia|gut flora|sea ice drift|antibiotic tolerance|cell migration|stellar winds|crop rotation|quantum error correction|synaptic pruning|wastewater surveillance|mosquito swarms|polymer fatigue",
        "M": "a randomised trial|a cohort of {D} patients|Monte Carlo sampling|a sparse transformer|single-cell sequencing|a zebrafish model|satellite imagery|a meta-analysis of {D} studies|mass spectrometry|a lattice model|field surveys in {P}|a Bayesian hierarchy",
        "O": "mortality|classification accuracy|inflammation markers|convergence speed|energy density|memory consolidation|biomass yield|viral load|signal latency|fracture toughness|species richness|readmission rates",
        "V": "improves|reduces|predicts|alters|stabilises|correlates with|accelerates|suppresses|amplifies|delays",
        "F": "nitrogen stress|early exposure|ambient temperature|dopamine signalling|dropout rate|salinity|shift work|iron intake|lattice strain|tidal mixing",
    },
    "general": {
        "T": "the {X} bridge|the river {X}|the {X} dynasty|lighthouse keeping|the {X} treaty|glass making|the {X} festival|tram networks|the {X} observatory|salt marshes|postal codes|the {X} expedition|paper mills|the {X} archive|ferry routes",
        "M": "a {D} census|local records|the city council|a travelling historian|the regional museum|an old almanac|a weather station|the harbour office",
        "O": "population|tourism|trade volume|flood risk|rainfall|ticket prices|migration|literacy",
        "V": "shaped|doubled|limited|followed|changed|outlasted|funded|recorded",
        "F": "the {X} railway|a long drought|the gold rush|the new canal|a royal charter|the {X} fire|heavy snowfall|a textile boom",
    },
    "finance": {
        "T": "index funds|mortgage points|a {X} brokerage account|capital gains|dividend reinvestment|an emergency fund|margin calls|bond ladders|tax-loss harvesting|stock options at {X}|a credit union loan|expense ratios",
        "M": "a fee-only adviser|my accountant|the {X} calculator|an annual statement|the prospectus|a spreadsheet I keep",
        "O": "my tax bill|the interest rate|net returns|cash flow|my credit score|the payout",
        "V": "lowers|raises|offsets|affects|hides|eats into",
        "F": "early withdrawal|inflation|a {D} percent fee|currency swings|rebalancing|a late payment",
    },
    "forum": {
        "T": "the {X} package manager|a dual boot setup|LaTeX tables|regex lookbehind|the {X} plugin|a cron job|SSH keys|font rendering|a merge conflict|Wi-Fi drivers|the {X} theme|kernel modules|pivot tables|vector layers in {X}|shader compilation",
        "M": "the terminal|the settings panel|a config file|the {X} forum|the docs|a fresh install",
        "O": "boot time|battery life|build output|query speed|the page layout|the error log",
        "V": "breaks|slows down|resets|duplicates|ignores|corrupts",
        "F": "the latest update|version {D}|a missing dependency|an old cache|a typo in the path|the firewall",
    },
    "reviews": {
        "T": "this {X} blender|the {X} headphones|a camping lantern|this thriller|the sequel|the {X} backpack|this board game|the director's cut|a {X} phone case|the soundtrack|this cookbook|the {X} desk lamp",
        "M": "the first week|two months of use|a long flight|the opening scene|the second act|daily commutes",
        "O": "the battery|the acting|the stitching|the plot|the price|the sound quality",
        "V": "disappointed|surprised|impressed|annoyed|delighted|bored",
        "F": "the packaging|the ending|customer service|the colours|the pacing|the manual",
    },
    "chat": {
        "T": "my card|a transfer to {X}|the exchange rate|my PIN|a refund from {X}|a pending payment|my top up|the {X} app|an alarm for {D} am|the weather in {P}|a playlist by {X}|my reminder",
        "M": "the app|an ATM in {P}|my phone|online banking|the assistant|the website",
        "O": "annoyed|thrilled|worried|grateful|furious|relieved",
        "V": "cancel|check|change|track|unlock|set",
        "F": "yesterday|this morning|since {D} days|after the update|at the airport|on holiday",
    },
}
_PLACES = "Norvale|Kestrel Bay|Ambrin|Oxley Fen|Tarsk|Velloport|Quill Harbour|Drumlin|Essenreach|Harrowgate Minor|Caldera Springs|Port Wren".split("|")
_SYL = "ka|lo|mi|dra|ven|tor|qua|zel|bri|mon|sha|vik|pel|ru|ox|an|del|fi|gor|nu".split("|")

_TEMPLATES = {
    "question": [
        "how does {F} affect {T}", "what is known about {T} in {P}", "why does {T} {V} {O}",
        "is it true that {F} {V} {O} for {T}", "which factors link {T} and {O}",
        "when did {T} first appear in {P}", "does {M} show that {F} {V} {O}",
        "what should i know about {T} before {F}",
    ],
    "sentence": [
        "Using {M}, the team found that {F} {V} {O} in {T}.",
        "{T} in {P} {V} {O} after {F}, according to {M}.",
        "Reports based on {M} suggest {F} {V} {O} across {T}.",
        "We looked at {T} and saw that {F} {V} {O} within {D} weeks.",
        "The link between {F} and {O} remains unclear for {T} near {P}.",
        "Early notes from {M} describe how {T} {V} {O} when {F} sets in.",
        "Nobody in {P} expected that {F} {V} {O} so quickly for {T}.",
        "A second look with {M} confirmed that {T} {V} {O} only slightly.",
    ],
    "short": [
        "{T} {V} {O} in {P}.", "{F} {V} {O} for {T}.", "In {P}, {F} {V} {O}.",
        "{T} {V} {O} again after {F} last year.", "Few expected {F} to matter for {T}.",
    ],
    "title": [
        "{T} and {O} under {F}", "{F} {V} {O}: evidence from {P}", "On {T} after {F}",
        "Why {F} {V} {O} in {T}", "{T}: notes from {P}", "Revisiting {T} with {M}",
    ],
    "chat": [
        "i need to {V} {T} {F} please", "can you {V} {T} for me, {X}", "why can't i {V} {T} {F}",
        "so {O} that i cannot {V} {T} {F}", "hey {X} please {V} {T} before {F}",
        "is there a way to {V} {T} using {M}", "{V} {T} {F} and tell me when it is done",
    ],
    "review": [
        "I was {V} by {T}; {O} was the weak point.", "Honestly {T} left me {V}, mostly because of {O}.",
        "After {M} with {T}, {F} is what stayed with me.", "{O} made {T} worth it, though {F} {V} me.",
        "Would not buy {T} again: {F} kept me {V}.", "{T} is fine but {O} and {F} need work.",
    ],
}


class _Writer:
    """Templated text in one domain, from a seeded RNG."""

    def __init__(self, rng: random.Random, domain: str) -> None:
        self.rng = rng
        self.words = {k: v.split("|") for k, v in _W[domain].items()}

    def name(self) -> str:
        return "".join(self.rng.choice(_SYL) for _ in range(self.rng.randint(2, 3))).capitalize()

    def fill(self, template: str) -> str:
        def slot(m: re.Match) -> str:
            k = m.group(1)
            if k == "X":
                return self.name()
            if k == "D":
                return str(self.rng.randint(2, 999))
            if k == "P":
                return self.rng.choice(_PLACES)
            return self.fill(self.rng.choice(self.words[k]))

        return re.sub(r"\{(\w)\}", slot, template)

    def of(self, kind: str) -> str:
        text = self.fill(self.rng.choice(_TEMPLATES[kind]))
        return text[0].upper() + text[1:] if kind in ("sentence", "short", "title", "review") else text

    def question(self) -> str:
        q = self.of("question")
        return q + "?" if self.rng.random() < 0.6 else q

    def passage(self, lo: int = 3, hi: int = 7) -> str:
        return " ".join(self.of("sentence") for _ in range(self.rng.randint(lo, hi)))


def _domain(task: str) -> str:
    for keys, domain in (
        (("Arxiv", "Biorxiv", "Medrxiv", "SCIDOCS", "SciFact", "NFCorpus", "TRECCOVID", "BIOSSES", "SciDocs"), "science"),
        (("FiQA",), "finance"),
        (("CQADupstack", "AskUbuntu", "StackOverflow", "StackExchange", "Sprint", "Quora", "Reddit", "TwentyNewsgroups", "Touche", "ArguAna"), "forum"),
        (("Amazon", "Imdb"), "reviews"),
        (("Banking", "MTOP", "Massive", "Emotion", "Tweet", "Toxic", "Twitter"), "chat"),
    ):
        if any(k in task for k in keys):
            return domain
    return "general"


# -- per-layout tables ------------------------------------------------------------------------
def _beir(w: _Writer, split: str, n_queries: int) -> dict[str, dict[str, pa.Table]]:
    docs, queries, qrels = [], [], []
    for q in range(n_queries):
        qid = f"t-q{q:04d}"
        queries.append({"_id": qid, "text": w.question()})
        for _ in range(w.rng.randint(1, 2)):
            did = f"t-d{len(docs):04d}"
            long = len(docs) % 4 == 0  # a few long documents for the paraphrase plants
            docs.append({"_id": did, "title": w.of("title") if w.rng.random() < 0.7 else "", "text": w.passage(8, 10) if long else w.passage()})
            qrels.append({"query-id": qid, "corpus-id": did, "score": 1})
    for _ in range(4):  # unjudged and judged-irrelevant documents: not test texts
        did = f"t-d{len(docs):04d}"
        docs.append({"_id": did, "title": "", "text": w.passage()})
    qrels.append({"query-id": "t-q0000", "corpus-id": docs[-1]["_id"], "score": 0})
    return {
        "corpus": {"corpus": pa.Table.from_pylist(docs)},
        "queries": {"queries": pa.Table.from_pylist(queries)},
        "default": {split: pa.Table.from_pylist(qrels, schema=pa.schema([("query-id", pa.string()), ("corpus-id", pa.string()), ("score", pa.int64())]))},
    }


def _reranking(w: _Writer, split: str, n_queries: int) -> dict[str, dict[str, pa.Table]]:
    docs, queries, qrels, ranked = [], [], [], []
    for q in range(n_queries):
        qid = f"t-q{q:04d}"
        queries.append({"id": qid, "text": w.question() if w.rng.random() < 0.5 else w.of("title")})
        cands = []
        for r in range(4):
            did = f"t-d{len(docs):04d}"
            docs.append({"id": did, "text": w.of("title") if r % 2 else w.of("sentence")})
            qrels.append({"query-id": qid, "corpus-id": did, "score": int(r == 0)})
            cands.append(did)
        ranked.append({"query-id": qid, "corpus-ids": cands})
    return {
        "corpus": {split: pa.Table.from_pylist(docs)},
        "queries": {split: pa.Table.from_pylist(queries)},
        "qrels": {split: pa.Table.from_pylist(qrels)},
        "top_ranked": {split: pa.Table.from_pylist(ranked)},
    }


def _classification(w: _Writer, task: str, n: int, lang: str = "en") -> pa.Table:
    labels = [w.name().lower() for _ in range(4)]
    rows = []
    for i in range(n):
        if lang != "en":
            text = f"bitte {w.name()} um {w.rng.randint(1, 12)} uhr in {w.rng.choice(_PLACES)} {w.name()} machen"
        elif "Imdb" in task or "Amazon" in task:
            text = " ".join(w.of("review") for _ in range(w.rng.randint(1, 5)))
        elif "Toxic" in task:
            text = " ".join(w.of("chat") + "." for _ in range(w.rng.randint(1, 3))) + (" " + w.passage(5, 6) if i % 6 == 0 else "")
        else:
            text = w.of("chat")
        label = w.rng.randrange(len(labels))
        rows.append({"text": text, "label": label, "label_text": labels[label]})
    return pa.Table.from_pylist(rows, schema=pa.schema([("text", pa.string()), ("label", pa.int64()), ("label_text", pa.string())]))


def _clustering(w: _Writer, task: str) -> pa.Table:
    p2p = "P2P" in task
    rows = []
    for _ in range(2):
        labels = [w.name().lower() for _ in range(3)]
        sents, labs = [], []
        for j in range(12):
            sents.append(w.passage(3, 6) if p2p else w.of("title"))
            labs.append(labels[j % 3])
        rows.append({"sentences": sents, "labels": labs})
    return pa.Table.from_pylist(rows, schema=pa.schema([("sentences", pa.list_(pa.string())), ("labels", pa.list_(pa.string()))]))


def _edit(w: _Writer, s: str) -> str:
    words = s.split()
    i = w.rng.randrange(len(words))
    words[i] = w.fill("{X}") if w.rng.random() < 0.5 else words[i].upper()
    return " ".join(words)


def _of_length(w: _Writer, lo: int, hi: int) -> str:
    for _ in range(200):
        s = w.of(w.rng.choice(["short", "sentence"]))
        if lo <= len(normalize_text(s).split()) <= hi:
            return s
    return s


def _pairs(w: _Writer, n: int) -> list[tuple[str, str, float]]:
    out = []
    for i in range(n):
        kind = "short" if w.rng.random() < 0.4 else "sentence"
        a = w.of(kind) if i >= 3 else _of_length(w, 11, 13)  # a few 11-13 word texts for the plants
        if w.rng.random() < 0.5:
            out.append((a, _edit(w, a), round(w.rng.uniform(3.0, 5.0), 2)))
        else:
            out.append((a, w.of(kind), round(w.rng.uniform(0.0, 2.5), 2)))
    return out


def _sts(w: _Writer, n: int) -> pa.Table:
    rows = [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in _pairs(w, n)]
    return pa.Table.from_pylist(rows, schema=pa.schema([("sentence1", pa.string()), ("sentence2", pa.string()), ("score", pa.float64())]))


def _pair_classification(w: _Writer, n: int) -> pa.Table:
    pairs = _pairs(w, n)
    return pa.table({
        "sent1": pa.array([[a for a, _, _ in pairs]]),
        "sent2": pa.array([[b for _, b, _ in pairs]]),
        "labels": pa.array([[int(s >= 3.0) for _, _, s in pairs]], pa.list_(pa.int64())),
    })


def _summarization(w: _Writer, n: int) -> pa.Table:
    rows = []
    for i in range(n):
        rows.append({
            "id": f"t-{i:03d}", "text": w.passage(5, 8),
            "human_summaries": [w.of("sentence") for _ in range(2)],
            "machine_summaries": [w.of("sentence") for _ in range(4)],
            **{k: [round(w.rng.uniform(1, 5), 2) for _ in range(4)] for k in ("relevance", "coherence", "fluency", "consistency")},
        })
    return pa.Table.from_pylist(rows)


# Non-English subsets next to the English ones, so tests can see they are left out.
_DECOY_SUBSETS = {"MTOPDomainClassification": "de", "STS17": "en-de"}


@functools.lru_cache(maxsize=1)
def _test_specs():
    from nvdata.decontam import DecontamConfig
    from nvdata.decontam.testsets import resolve_test_sets

    return resolve_test_sets(DecontamConfig())


def mteb_sample_repos(seed: int = 0) -> Repos:
    """{repo_id: {config: {split: table}}} for every MTEB(eng, v1) test set (eval splits only)."""
    repos: Repos = {}
    for spec in _test_specs():
        w = _Writer(random.Random(zlib.crc32(f"{seed}:{spec.task}".encode())), _domain(spec.task))
        repo = repos.setdefault(spec.path, {})
        for subset in spec.subsets + ((_DECOY_SUBSETS[spec.task],) if spec.task in _DECOY_SUBSETS else ()):
            for split in spec.splits:
                if spec.task_type == "Retrieval":
                    part = _beir(w, split, 6 if spec.parent else 10)
                elif spec.task_type == "Reranking":
                    part = _reranking(w, split, 6)
                else:
                    cfg = subset
                    if spec.task_type == "Classification":
                        table = _classification(w, spec.task, 24, lang="de" if subset == "de" else "en")
                    elif spec.task_type == "Clustering":
                        table = _clustering(w, spec.task)
                    elif spec.task_type == "STS":
                        table = _sts(w, 24)
                    elif spec.task_type == "PairClassification":
                        table = _pair_classification(w, 24)
                    elif spec.task_type == "Summarization":
                        table = _summarization(w, 6)
                    else:
                        raise ValueError(f"no sample layout for {spec.task} ({spec.task_type})")
                    part = {cfg: {split: table}}
                for config, splits in part.items():
                    repo.setdefault(config, {}).update(splits)
    return repos


# -- reading test texts back (the loader's view of the in-memory tables) ------------------------
def _texts(tests: Repos, spec) -> list[dict]:
    """Every indexed text of one test set: {split, item_id, field, text}, as decontam reads it."""
    repo = tests[spec.path]
    out = []
    for subset in spec.subsets:
        for split in spec.splits:
            if spec.kind == "retrieval":
                qcfg, rcfg = ("queries", "default") if "default" in repo else ("queries", "qrels")
                qrels = next(iter(repo[rcfg].values())) if split not in repo[rcfg] else repo[rcfg][split]
                rel = {r["corpus-id"] for r in qrels.to_pylist() if r["score"] > 0}
                qids = {r["query-id"] for r in qrels.to_pylist()}
                for cfg, wanted, fields in ((qcfg, qids, ("text",)), ("corpus", rel, ("title", "text"))):
                    for r in next(iter(repo[cfg].values())).to_pylist():
                        rid = r.get("_id", r.get("id"))
                        for f in fields:
                            if rid in wanted and r.get(f):
                                out.append({"split": split, "item_id": rid, "field": "query" if cfg == qcfg else f, "text": r[f]})
            else:
                table = repo[subset][split]
                for i, r in enumerate(table.to_pylist()):
                    rid = str(r.get("id", i))
                    for col in spec.columns:
                        v = r.get(col, r.get({"sentence1": "sent1", "sentence2": "sent2"}.get(col, col)))
                        for j, s in enumerate(v) if isinstance(v, list) else [(None, v)]:
                            out.append({"split": split, "item_id": rid if j is None else f"{rid}[{j}]", "field": col, "text": s})
    return out


# -- plants -----------------------------------------------------------------------------------
# (kind, training source, canonical field, test task). Kinds and what must catch them:
# exact -> exact; variant (case/space/punctuation/Unicode form) -> exact; ngram13 (13+ test
# words inside a new, longer text) -> ngram; paraphrase (small edits, Jaccard >= 0.85) -> near_dup.
PLANT_PLAN = [
    ("exact", "banking77", "text", "Banking77Classification"),
    ("exact", "sts12", "sentence1", "STS12"),
    ("exact", "nq", "query", "NQ"),
    ("exact", "hotpotqa", "query", "HotpotQA"),
    ("exact", "twentynewsgroups", "text", "TwentyNewsgroupsClustering"),
    ("exact", "tweet_sentiment", "text", "TweetSentimentExtractionClassification"),
    ("variant", "emotion", "text", "EmotionClassification"),
    ("variant", "stsbenchmark", "sentence2", "STSBenchmark"),
    ("variant", "msmarco", "query", "MSMARCO"),
    ("variant", "arxiv_s2s", "text", "ArxivClusteringS2S"),
    ("variant", "squad", "query", "QuoraRetrieval"),
    ("variant", "mtop_intent", "text", "MTOPIntentClassification"),
    ("ngram13", "nq", "positive", "NQ"),
    ("ngram13", "arxiv_p2p", "text", "ArxivClusteringP2P"),
    ("ngram13", "imdb", "text", "ImdbClassification"),
    ("ngram13", "fiqa", "corpus", "FiQA2018"),
    ("paraphrase", "msmarco", "corpus", "MSMARCO"),
    ("paraphrase", "toxic_conversations", "text", "ToxicConversationsClassification"),
    ("paraphrase", "sts22", "sentence1", "STS22"),
    ("paraphrase", "medrxiv_p2p", "text", "MedrxivClusteringP2P"),
    # siblings of MTEB test sets (NV-Embed-v2 sources): their own test sets must catch these
    ("exact", "scifact", "query", "SciFact"),
    ("ngram13", "nfcorpus", "corpus", "NFCorpus"),
    ("variant", "massive_intent", "text", "MassiveIntentClassification"),
    ("exact", "massive_scenario", "text", "MassiveScenarioClassification"),
    ("ngram13", "amazon_polarity", "text", "AmazonPolarityClassification"),
    ("exact", "reddit_clustering", "text", "RedditClustering"),
]
EXPECTED_METHOD = {"exact": "exact", "variant": "exact", "ngram13": "ngram", "paraphrase": "near_dup"}


def _variant(rng: random.Random, text: str) -> str:
    """Same normalized text, different surface: case, spacing, punctuation, Unicode forms."""
    words = text.split()
    out = []
    for i, wd in enumerate(words):
        wd = wd.upper() if i % 3 == 0 else wd.lower()
        wd = wd.rstrip(".,;:?!") + rng.choice(["", "", ",", " -", "!!", " ;"])
        out.append(wd)
    s = "  ".join(out).replace("A", "\uff21")  # fullwidth A: NFKC folds it back
    return f"\u201c{s}\u201d ..."


def _ngram_host(w: _Writer, text: str, n: int = 13) -> tuple[str, str]:
    words = text.split()
    start = w.rng.randrange(0, max(1, len(words) - n - 2))
    piece = " ".join(words[start : start + n + 2])
    return f"{w.of('sentence')} {w.of('sentence')} As one source put it, {piece} {w.of('sentence')}", piece


def _paraphrase(w: _Writer, text: str, k: int = 5) -> str | None:
    """Small edits keeping the shingle Jaccard in [0.85, 1): long texts get a word swapped and
    the last word dropped; 11-13 word texts only lose their last word (so no n-gram survives
    whole and only the near-duplicate method can see them)."""
    base = normalize_text(text).split()
    for _ in range(200):
        words = text.split()
        if len(base) >= 40:
            i = w.rng.randrange(len(words))
            words[i] = w.rng.choice(["really", "quite", "often", "also", "rather"])
        words.pop()
        cand = " ".join(words).replace(".", ";", 1)
        j = jaccard(shingle_set(base, k), shingle_set(normalize_text(cand).split(), k))
        if 0.85 <= j < 1.0 and normalize_text(cand) != normalize_text(text):
            return cand
    return None


def _pick_text(rng: random.Random, texts: list[dict], kind: str) -> dict | None:
    def wc(t: dict) -> int:
        return len(normalize_text(t["text"]).split())

    if kind == "ngram13":
        pool = [t for t in texts if wc(t) >= 20]
    elif kind == "paraphrase":  # long texts where possible, else 11-13 words (near-dup only)
        pool = sorted((t for t in texts if wc(t) >= 60), key=wc)[-3:] or [t for t in texts if 11 <= wc(t) <= 13]
    else:  # exact copies and variants: query-sized texts
        pool = [t for t in texts if 3 <= wc(t) <= 40] or [t for t in texts if wc(t) >= 3]
    return rng.choice(pool) if pool else None


def plant_contamination(training: Repos, tests: Repos, seed: int = 0) -> tuple[Repos, list[dict]]:
    """Append planted rows (see ``PLANT_PLAN``) to the training repos; return them and the plants.

    Each plant names where it went (repo, config, split, column, row_index = its position in
    that split; query/corpus ids for BEIR rows), what it copies (test task, split, item id,
    field), its kind and the method expected to catch it. Targets missing from ``training``
    are skipped.
    """
    from nvdata.registry import load_registry

    registry = load_registry()
    specs = {s.task: s for s in _test_specs()}
    out: Repos = {repo: {cfg: dict(splits) for cfg, splits in cfgs.items()} for repo, cfgs in training.items()}
    plants: list[dict] = []
    for n, (kind, source, fld, task) in enumerate(PLANT_PLAN):
        entry, spec = registry.get(source), specs.get(task)
        if entry is None or spec is None or entry.hf_id not in out or spec.path not in tests:
            continue
        rng = random.Random(zlib.crc32(f"{seed}:plant:{n}".encode()))
        w = _Writer(rng, "general")
        pool = _texts(tests, spec)
        if task == "STS22" and kind == "paraphrase":
            pool = [t for t in pool if 11 <= len(normalize_text(t["text"]).split()) <= 13] or pool
        item = _pick_text(rng, pool, kind)
        if item is None:
            continue
        evidence = None
        if kind == "exact":
            text = item["text"]
        elif kind == "variant":
            text = _variant(rng, item["text"])
        elif kind == "ngram13":
            text, evidence = _ngram_host(w, item["text"])
        else:
            text = _paraphrase(w, item["text"], 5)
            if text is None:
                continue
        placed = _append(out, entry, fld, text, rng, f"plant-{n:03d}")
        if placed is None:
            continue
        plants.append({
            **placed, "kind": kind, "expected_method": EXPECTED_METHOD[kind], "source": source,
            "test_task": task, "test_split": item["split"], "test_item_id": item["item_id"],
            "test_field": item["field"], "text": text, "test_text": item["text"], "shared": evidence,
        })
    return out, plants


def _table_split(repo: dict, config: str, split: str | None) -> tuple[str, pa.Table] | None:
    splits = repo.get(config)
    if not splits:
        return None
    if split in splits:
        return split, splits[split]
    return (next(iter(splits.items()))) if len(splits) == 1 and split is None else None


def _append(out: Repos, entry: Any, fld: str, text: str, rng: random.Random, pid: str) -> dict | None:
    repo = out[entry.hf_id]
    if entry.layout != "beir":
        config = entry.config or "default"
        found = _table_split(repo, config, entry.split)
        if found is None:
            return None
        split, table = found
        column = entry.columns[fld]
        row = table.slice(rng.randrange(table.num_rows), 1).to_pylist()[0] if table.num_rows else {}
        row[column] = text
        repo[config][split] = pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)])
        return {"repo": entry.hf_id, "config": config, "split": split, "column": column, "row_index": table.num_rows}
    corpus, queries = _table_split(repo, "corpus", None), _table_split(repo, "queries", None)
    qrels = _table_split(repo, "default", entry.split)
    if corpus is None or queries is None or qrels is None:
        return None
    doc_id, query_id = f"{pid}-d", f"{pid}-q"
    record = {"repo": entry.hf_id}
    if fld == "corpus":  # a new training document
        cs, ct = corpus
        row = {"_id": doc_id, "title": "", "text": text}
        repo["corpus"][cs] = pa.concat_tables([ct, pa.Table.from_pylist([row], schema=ct.schema)])
        record.update(config="corpus", split=cs, column="text", row_index=ct.num_rows, corpus_id=doc_id)
        return record
    qs, qt = queries
    rs, rt = qrels
    if rt.num_rows == 0:
        return None
    target = rt.slice(rng.randrange(rt.num_rows), 1).to_pylist()[0]["corpus-id"]  # an existing train doc
    repo["queries"][qs] = pa.concat_tables([qt, pa.Table.from_pylist([{"_id": query_id, "text": text}], schema=qt.schema)])
    repo["default"][rs] = pa.concat_tables([rt, pa.Table.from_pylist([{"query-id": query_id, "corpus-id": target, "score": 1}], schema=rt.schema)])
    record.update(config="queries", split=qs, column="text", row_index=qt.num_rows, query_id=query_id,
                  qrels_split=rs, qrels_row_index=rt.num_rows, corpus_id=target,
                  # its row_index among the positive qrels, which is how download numbers pairs
                  pairs_row_index=sum(1 for x in rt.column("score").to_pylist() if x is not None and x > 0))
    return record
