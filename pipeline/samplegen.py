"""Generate the bundled sample mirror: every registry source in its Hub repo's layout and columns.

All text is produced here from small word banks with a seeded RNG (nothing is copied from the
real sets), but shaped so the pipeline does real work on it: several topics sharing vocabulary
(dense hard negatives exist), multi-positive queries, near-duplicates of positives (the false-
negative filter must fire), STS pairs sharing sentences at many gold scores (the BM25 rule's
score <= 2.5 skip matters). The MTEB test-set half and the planted contamination come from
``samplegen_mteb``. Run ``python -m nvdata.samplegen [DIR]`` to rewrite the bundled copy.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pyarrow as pa

from nvdata.mirror import write_hub_repo
from nvdata.paths import sample_mirror_dir
from nvdata.registry import load_registry

TOPICS = {
    "astronomy": {
        "entities": ["the Andromeda galaxy", "Jupiter", "a red dwarf", "the Crab Nebula", "Saturn's rings",
                     "a neutron star", "the Kuiper belt", "Halley's comet"],
        "facts": ["is made mostly of hydrogen and helium", "was first catalogued in the eighteenth century",
                  "emits strong radio waves", "can be seen with a small telescope on clear nights",
                  "orbits at a distance of several billion kilometres", "is slowly losing mass to space",
                  "has a magnetic field far stronger than the Earth's", "formed roughly four billion years ago"],
    },
    "cooking": {
        "entities": ["sourdough bread", "a French omelette", "miso soup", "risotto", "kimchi",
                     "a sponge cake", "tomato sauce", "pickled onions"],
        "facts": ["needs a long slow fermentation", "is best cooked over a low flame",
                  "keeps in the fridge for about a week", "depends on fresh eggs at room temperature",
                  "tastes sharper when made with rice vinegar", "should rest before it is served",
                  "uses a starter culture of wild yeast", "burns quickly if the pan is too hot"],
    },
    "finance": {
        "entities": ["an index fund", "a fixed-rate mortgage", "a Roth account", "corporate bonds",
                     "a credit card balance", "dividend stocks", "an emergency fund", "a savings certificate"],
        "facts": ["usually charges lower fees than an active fund", "locks in the interest rate for years",
                  "is taxed differently when money is withdrawn", "pays interest twice a year",
                  "grows quickly when only the minimum is paid", "can lose value when rates rise",
                  "should cover three to six months of expenses", "cannot be cashed early without a penalty"],
    },
    "medicine": {
        "entities": ["vitamin D deficiency", "type 2 diabetes", "seasonal influenza", "a sprained ankle",
                     "high blood pressure", "iron-deficiency anaemia", "migraine", "asthma"],
        "facts": ["is often treated with rest, ice and elevation", "can be managed with diet and exercise",
                  "is more common in people who get little sunlight", "spreads mainly through droplets",
                  "is diagnosed with a simple blood test", "may be triggered by bright light or stress",
                  "narrows the airways during an attack", "raises the risk of heart disease over time"],
    },
    "history": {
        "entities": ["the printing press", "the Roman aqueducts", "the Silk Road", "the Hanseatic League",
                     "the Meiji Restoration", "the Magna Carta", "the Great Fire of London", "the telegraph"],
        "facts": ["changed how news travelled between cities", "was built over several centuries",
                  "connected merchants across two continents", "limited the power of the king",
                  "modernised the country within a generation", "destroyed most of the medieval city",
                  "carried water across long distances by gravity", "made books far cheaper to produce"],
    },
    "software": {
        "entities": ["a hash table", "garbage collection", "a race condition", "the Git rebase command",
                     "a Docker container", "unit tests", "a memory leak", "a binary search"],
        "facts": ["finds an item in logarithmic time", "frees memory that is no longer referenced",
                  "appears when two threads write the same value", "rewrites the commit history of a branch",
                  "packages an application with its dependencies", "catch regressions before release",
                  "slowly grows the memory a process uses", "gives constant-time lookups on average"],
    },
}
QUESTION_FORMS = [
    "what is true about {e}", "tell me a fact about {e}", "which statement describes {e}",
    "why is {e} notable", "explain {e} briefly", "facts on {e}",
]
EXTRA_SENTENCES = [
    "Experts still debate some of the details.", "This is covered in most introductory guides.",
    "Many people find this surprising.", "The effect is easy to observe in practice.",
    "Further reading is listed at the end of the article.", "Opinions on this vary widely.",
]


def _facts(rng: random.Random) -> list[tuple[str, str, str]]:
    """(topic, entity, fact) triples: each entity gets two facts from its topic."""
    out = []
    for topic, bank in TOPICS.items():
        for i, e in enumerate(bank["entities"]):
            facts = bank["facts"]
            out.append((topic, e, facts[i % len(facts)]))
            out.append((topic, e, facts[(i + 3) % len(facts)]))
    rng.shuffle(out)
    return out


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _passage(rng: random.Random, entity: str, fact: str) -> str:
    return f"{_cap(entity)} {fact}. {rng.choice(EXTRA_SENTENCES)}"


def _question(rng: random.Random, entity: str) -> str:
    return rng.choice(QUESTION_FORMS).format(e=entity)


def _near_duplicate(text: str) -> str:
    """A small edit of a passage: the kind of false negative the margin filter must catch."""
    return text.replace(". ", "; indeed, ", 1).rstrip(".") + " as noted."


def _tbl(rows: list[dict], columns: list[str], types: dict | None = None) -> pa.Table:
    types = types or {}
    return pa.table(
        {c: pa.array([r[c] for r in rows], type=types.get(c, pa.string())) for c in columns}
    )


# -- retrieval ---------------------------------------------------------------------------------


def beir_repo(rng: random.Random, prefix: str) -> dict:
    """corpus / queries / default-qrels(train) with multi-positive queries and near-duplicates."""
    corpus, queries, qrels = [], [], []
    for n, (topic, e, f) in enumerate(_facts(rng)):
        corpus.append({"_id": f"{prefix}d{n}", "title": f"{_cap(e)} ({topic})", "text": _passage(rng, e, f)})
    by_entity: dict[str, list[str]] = {}
    for doc in corpus:
        by_entity.setdefault(doc["title"], []).append(doc["_id"])
    for qn, (title, ids) in enumerate(sorted(by_entity.items())[:36]):
        qid = f"{prefix}q{qn}"
        queries.append({"_id": qid, "text": _question(rng, title.split(" (")[0].lower())})
        for did in ids[: 1 + qn % 2]:  # every other query has two positives
            qrels.append({"query-id": qid, "corpus-id": did, "score": 1})
        qrels.append({"query-id": qid, "corpus-id": ids[-1], "score": 0})  # judged not relevant
    # near-duplicates of the first few positives, as their own corpus entries
    for k in range(4):
        src = next(d for d in corpus if d["_id"] == qrels[k * 3]["corpus-id"])
        corpus.append({"_id": f"{prefix}nd{k}", "title": src["title"], "text": _near_duplicate(src["text"])})
    return {
        "corpus": {"corpus": _tbl(corpus, ["_id", "title", "text"])},
        "queries": {"queries": _tbl(queries, ["_id", "text"])},
        "default": {"train": _tbl(qrels, ["query-id", "corpus-id", "score"], {"score": pa.int64()})},
    }


def pair_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    facts = _facts(rng)
    out = []
    for i in range(n):
        topic, e, f = facts[i % len(facts)]
        out.append((_question(rng, e), _passage(rng, e, f)))
    out.append(out[0])  # an exact duplicate pair, as real sets have
    return out


def pairs_repo(rng, entry, n=60) -> dict:
    qcol, pcol = entry.columns["query"], entry.columns["positive"]
    rows = [{qcol: q, pcol: p} for q, p in pair_rows(rng, n)]
    cols = [qcol, pcol]
    if entry.name == "nli":  # all-nli triplet config also ships a negative
        facts = _facts(rng)
        for r in rows:
            t, e, f = rng.choice(facts)
            r["negative"] = _passage(rng, e, f)
        cols.append("negative")
    if entry.name == "stackexchange":  # title-title: short, title-like texts on both sides
        rows = [{qcol: q.capitalize() + "?", pcol: _question(rng, q.split(" ", 3)[-1]).capitalize() + "?"}
                for q, _ in pair_rows(rng, n)]
    return {entry.config or "default": {entry.split: _tbl(rows, cols)}}


def passages_repo(rng: random.Random, entry, n: int = 40) -> dict:
    """Tevatron-style rows: query + lists of {docid, title, text} positive / negative passages.

    Some passages recur across queries (shared docids, as in the real sets), and Cohere's
    MIRACL copy carries a per-query ``emb`` vector, kept here so the columns match."""
    facts = _facts(rng)
    pool = [(f"{entry.name}-p{i}", _cap(e), _passage(rng, e, f)) for i, (_t, e, f) in enumerate(facts)]
    rows = []
    for i in range(n):
        topic, e, _f = facts[i % len(facts)]
        same = [p for p in pool if p[1] == _cap(e)]
        other = [p for p in pool if p[1] != _cap(e)]
        pos = same[: 1 + i % 2]
        neg = rng.sample(other, 3)
        as_struct = lambda ps: [{"docid": d, "title": t, "text": x} for d, t, x in ps]  # noqa: E731
        row = {"query_id": str(1000 + i), "query": _question(rng, e), "positive_passages": as_struct(pos),
               "negative_passages": as_struct(neg)}
        if entry.hf_id.startswith("Cohere/"):
            row["emb"] = [round(rng.uniform(-1, 1), 4) for _ in range(4)]
        rows.append(row)
    passage = pa.struct([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])
    schema = pa.schema([("query_id", pa.string()), ("query", pa.string()),
                        ("positive_passages", pa.list_(passage)), ("negative_passages", pa.list_(passage))]
                       + ([("emb", pa.list_(pa.float32()))] if "emb" in rows[0] else []))
    return {entry.config or "default": {entry.split: pa.Table.from_pylist(rows, schema=schema)}}


# -- classification / clustering / sts ------------------------------------------------------

SENTIMENT = {
    "positive": ["I loved {x}, it exceeded every expectation", "{x} was wonderful and I would buy it again",
                 "Really happy with {x}", "{x} made my week, highly recommended"],
    "negative": ["{x} broke after two days", "I regret buying {x}", "{x} was a complete waste of money",
                 "Terrible experience with {x}"],
    "neutral": ["{x} arrived on Tuesday", "I used {x} for a month", "{x} is available in three colours",
                "My neighbour also has {x}"],
}
PRODUCTS = ["the blender", "this phone case", "the desk lamp", "these headphones", "the rain jacket",
            "this novel", "the kettle", "the hiking boots", "this board game", "the coffee grinder"]
INTENTS = {
    "card_arrival": ["When will my new card arrive?", "My card still has not come in the post",
                     "How long does card delivery take?"],
    "exchange_rate": ["What exchange rate do you use?", "Is the currency conversion rate fair?",
                      "How is the rate for euros calculated?"],
    "lost_or_stolen_card": ["I lost my card yesterday", "Someone stole my wallet with my card",
                            "Please block my missing card"],
    "top_up_failed": ["My top up did not go through", "Why was my top-up declined?",
                      "The money I added never showed up"],
    "pin_blocked": ["My PIN is blocked", "I entered the wrong PIN three times",
                    "How do I unblock my PIN?"],
}
EMOTIONS = {
    "joy": ["i feel so cheerful about {x}", "i am delighted with {x}"],
    "sadness": ["i feel gloomy thinking about {x}", "i am heartbroken over {x}"],
    "anger": ["i am furious about {x}", "i feel irritated by {x}"],
    "fear": ["i feel nervous about {x}", "i am scared of {x}"],
}


def _variants(rng, templates: dict[str, list[str]], fillers: list[str], n: int):
    labels = sorted(templates)
    out = []
    for i in range(n):
        lab = labels[i % len(labels)]
        t = rng.choice(templates[lab])
        out.append((t.format(x=rng.choice(fillers)) if "{x}" in t else t + rng.choice(["", " please", " today", "?"]), lab))
    return out


def classification_repo(rng, entry, n=72) -> dict:
    if entry.name in ("banking77", "mtop_intent", "mtop_domain", "massive_intent", "massive_scenario"):
        rows = _variants(rng, INTENTS, [], n)
    elif entry.name == "emotion":
        rows = _variants(rng, EMOTIONS, PRODUCTS + ["the exam", "moving house", "the weather"], n)
    elif entry.name in ("amazon_counterfactual", "toxic_conversations"):
        two = {"counterfactual" if entry.name == "amazon_counterfactual" else "toxic": SENTIMENT["negative"],
               "not-counterfactual" if entry.name == "amazon_counterfactual" else "not toxic": SENTIMENT["positive"]}
        rows = _variants(rng, two, PRODUCTS, n)
    elif entry.name == "amazon_polarity":  # binary, as the real set
        rows = _variants(rng, {k: SENTIMENT[k] for k in ("negative", "positive")}, PRODUCTS, n)
    else:
        rows = _variants(rng, SENTIMENT, PRODUCTS, n)
    label_ids = {lab: i for i, lab in enumerate(sorted({lab for _, lab in rows}))}
    table_rows = [{"text": t, "label": label_ids[lab], "label_text": lab} for t, lab in rows]
    return {entry.config or "default": {entry.split: _tbl(
        table_rows, ["text", "label", "label_text"], {"label": pa.int64()})}}


PAPER_FIELDS = {
    "astro-ph": "astronomy", "q-fin": "finance", "cs.SE": "software", "physics.hist-ph": "history",
    "q-bio": "medicine", "cs.CL": "software",
}


def papers(rng, n=60) -> list[dict]:
    facts = _facts(rng)
    cats = list(PAPER_FIELDS)
    out = []
    for i in range(n):
        topic, e, f = facts[i % len(facts)]
        primary = [c for c in cats if PAPER_FIELDS[c] == topic] or [rng.choice(cats)]
        title = f"On {e}: evidence that it {f}"
        abstract = f"We study {e}. Our results show that it {f}. {rng.choice(EXTRA_SENTENCES)}"
        out.append({"title": _cap(title), "abstract": abstract, "primary": primary, "topic": topic})
    return out


def clustering_repo(rng, hf_id: str) -> dict:
    rows = papers(rng)
    if hf_id == "mteb/raw_arxiv":
        for r in rows:
            r["categories"] = " ".join(r["primary"] + ([rng.choice(list(PAPER_FIELDS))] if rng.random() < 0.3 else []))
        return {"default": {"train": _tbl(rows, ["title", "abstract", "categories"])}}
    for r in rows:
        r["category"] = r["topic"]
    return {"default": {"train": _tbl(rows, ["title", "abstract", "category"])}}


def reddit_repo(rng) -> dict:
    """sentence-transformers/reddit-title-body: title, body, subreddit (one post per row)."""
    subs = {"space": "astronomy", "Cooking": "cooking", "personalfinance": "finance",
            "AskDocs": "medicine", "AskHistorians": "history", "learnprogramming": "software"}
    facts = _facts(rng)
    rows = []
    for i in range(60):
        topic, e, f = facts[i % len(facts)]
        sub = next(s for s, t in subs.items() if t == topic)
        rows.append({"title": _cap(_question(rng, e)) + "?",
                     "body": f"I read that {e} {f}. {rng.choice(EXTRA_SENTENCES)} Can anyone confirm?",
                     "subreddit": sub})
    return {"default": {"train": _tbl(rows, ["title", "body", "subreddit"])}}


def cluster_sets_repo(rng, entry, n_sets: int = 3) -> dict:
    """MTEB clustering layout: each row one cluster set (sentences + parallel labels)."""
    sites = {"astronomy": "astronomy", "cooking": "cooking", "money": "finance",
             "medicalsciences": "medicine", "history": "history", "softwareengineering": "software"}
    facts = _facts(rng)
    rows = []
    for k in range(n_sets):
        sents, labels = [], []
        for i in range(18):
            topic, e, f = facts[(k * 18 + i) % len(facts)]
            sents.append(_cap(_question(rng, e)) + "?")
            labels.append(next(s for s, t in sites.items() if t == topic))
        rows.append({"sentences": sents, "labels": labels})
    schema = pa.schema([("sentences", pa.list_(pa.string())), ("labels", pa.list_(pa.string()))])
    return {"default": {entry.split: pa.Table.from_pylist(rows, schema=schema)}}


def newsgroups_repo(rng) -> dict:
    groups = {"sci.space": "astronomy", "rec.food": "cooking", "misc.forsale": "finance",
              "sci.med": "medicine", "soc.history": "history", "comp.programming": "software"}
    facts = _facts(rng)
    rows = []
    for i in range(60):
        topic, e, f = facts[i % len(facts)]
        label_text = next(g for g, t in groups.items() if t == topic)
        rows.append({"text": f"Subject: {e}\n\nDid you know {e} {f}? {rng.choice(EXTRA_SENTENCES)}",
                     "label": sorted(groups).index(label_text), "label_text": label_text})
    return {"default": {"train": _tbl(rows, ["text", "label", "label_text"], {"label": pa.int64()})}}


def sts_repo(rng, entry, n=50) -> dict:
    """Pairs at graded similarity; sentences recur across pairs so gold scores constrain BM25."""
    facts = _facts(rng)
    rows = []
    for i in range(n):
        topic, e, f = facts[i % len(facts)]
        a = f"{_cap(e)} {f}."
        kind = i % 5
        if kind == 0:
            b, s = f"It is known that {e} {f}.", 4.8
        elif kind == 1:
            b, s = f"{_cap(e)} really {f}.", 4.2
        elif kind == 2:
            t2, e2, f2 = facts[(i + 1) % len(facts)]
            b, s = f"{_cap(e)} {f2}.", 2.0
        elif kind == 3:
            t2, e2, f2 = facts[(i + 7) % len(facts)]
            b, s = f"{_cap(e2)} {f2}.", 0.4
        else:
            b, s = f"Some say {e} {f}, others disagree.", 3.2
        rows.append({"sentence1": a, "sentence2": b, "score": s})
    # a sentence paired twice: once as a paraphrase (>=4), once at 3.6 with a close sentence, so
    # that sentence must be skipped as a negative by the gold > 2.5 rule
    rows.append({"sentence1": rows[0]["sentence1"], "sentence2": rows[5]["sentence1"], "score": 3.6})
    lo, hi = entry.score_range  # write the source's own scale (STS22: 1-4), as the real repo has
    for r in rows:
        r["score"] = round(lo + r["score"] * (hi - lo) / 5.0, 4)
    return {entry.config or "default": {entry.split: _tbl(
        rows, ["sentence1", "sentence2", "score"], {"score": pa.float64()})}}


# -- assembly ------------------------------------------------------------------------------------


def training_repos(seed: int = 0) -> dict[str, dict[str, dict[str, pa.Table]]]:
    """{repo_id: {config: {split: table}}} for every registry source (shared repos merged)."""
    repos: dict[str, dict] = {}
    for name, entry in load_registry().items():
        if not entry.available:
            continue  # a licence-gated source has no public copy to imitate
        rng = random.Random(f"{seed}-{name}")
        if entry.layout == "beir":
            part = beir_repo(rng, prefix="")
        elif entry.layout == "passages":
            part = passages_repo(rng, entry)
        elif entry.layout == "clusters":
            part = cluster_sets_repo(rng, entry)
        elif entry.hf_id == "sentence-transformers/reddit-title-body":
            if entry.hf_id in repos:
                continue  # one repo backs both the S2S (title) and the P2P (body) source
            part = reddit_repo(random.Random(f"{seed}-{entry.hf_id}"))
        elif entry.task_type == "retrieval":
            part = pairs_repo(rng, entry)
        elif entry.task_type == "classification":
            part = classification_repo(rng, entry)
        elif entry.hf_id == "SetFit/20_newsgroups":
            part = newsgroups_repo(rng)
        elif entry.task_type == "clustering":
            if entry.hf_id in repos:
                continue  # raw_arxiv etc. back both the S2S and the P2P source
            part = clustering_repo(random.Random(f"{seed}-{entry.hf_id}"), entry.hf_id)
        else:
            part = sts_repo(rng, entry)
        merge_repos(repos, {entry.hf_id: part})
    return repos


def merge_repos(into: dict, more: dict) -> dict:
    """Deep-merge {repo: {config: {split: table}}}; the same split twice is concatenated."""
    for repo, configs in more.items():
        for config, splits in configs.items():
            for split, table in splits.items():
                have = into.setdefault(repo, {}).setdefault(config, {})
                if split in have:
                    have[split] = pa.concat_tables([have[split], table.cast(have[split].schema)])
                else:
                    have[split] = table
    return into


def write_sample_mirror(out: Path, seed: int = 0) -> Path:
    """Write the full sample mirror (training sources + MTEB test sets + plants) to ``out``."""
    from nvdata import samplegen_mteb

    repos = training_repos(seed)
    tests = samplegen_mteb.mteb_sample_repos(seed)
    repos, plants = samplegen_mteb.plant_contamination(repos, tests, seed)
    merge_repos(repos, tests)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for repo_id in sorted(repos):
        write_hub_repo(out / repo_id, repos[repo_id],
                       card=f"\nSample snapshot of `{repo_id}` generated by nvdata (synthetic text).\n")
    (out / "PLANTS.json").write_text(json.dumps(plants, indent=1, sort_keys=True, default=str))
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else sample_mirror_dir()
    print(write_sample_mirror(target))
