"""BM25 hard negatives for STS rows: NV-Embed's rule (arXiv 2405.17428), on an exact Okapi engine.

NV-Embed trains on the train splits of sts12, sts22 and stsbenchmark as (q+, d+) pairs taken
from pairs with a gold score >= 4, and gives each row BM25 hard negatives. The rule, per row:

1. The pool is every sentence of the source's train split (``pool: source``; ``pool: all``
   pools the sentences of every STS source given). Sentences are deduplicated on
   :func:`nvdata.text.normalize_text`, keeping the first spelling seen; pool order is the
   source's rows by ``row_index``, sentence1 before sentence2 (sources in name order for
   ``all``). Pool order is what breaks score ties.
2. Rank the pool by BM25 against q+ (:mod:`nvdata.mine.okapi`: rank_bm25's BM25Okapi scores,
   bit for bit, over the configured tokenizer). The ranking is a stable sort by descending
   score: equal scores keep pool order.
3. Walk the ranking and skip, in this order (a candidate is counted under the first that fits):
   ``rank``: ranks below ``min_rank`` (rank 1 whatever it is, by default);
   ``self_or_positive``: q+ itself and d+ (matched on normalized text);
   ``gold_above_max``: any text that has a gold score > ``max_gold_score`` with q+ in any pair
   of the data (every STS source given, either order, any occurrence of the pair).
4. The first ``num_negatives`` texts left are the negatives, best first, with their BM25 scores.
   Nothing else is filtered: a candidate sharing no term with q+ (score 0) can be chosen when
   nothing better is left, and the report counts those.

Row fields written: ``negatives``, ``negative_scores`` (float32 BM25 scores),
``positive_score`` (float32 BM25 score of d+ for q+ under the same pool statistics, so
negatives and positive are on one scale; defined even when d+ is not in the pool) and
``negative_method`` ``"bm25"``. A row left with no negative is kept with ``negatives=[]`` and
``negative_method "none"`` (``on_shortfall: keep``) or dropped (``drop``); the report counts
both. STS rows that already carry negatives pass through untouched.

Example::

    >>> import pyarrow as pa
    >>> from nvdata import schema
    >>> pool = pa.table({"row_index": [0, 1, 2], "score": [4.6, 0.4, 1.0],
    ...     "sentence1": ["A man plays a guitar.", "A man is cooking.", "A dog runs."],
    ...     "sentence2": ["A man is playing the guitar.", "A cat sleeps.", "A man sings."]},
    ...     schema=schema.RAW_STS)
    >>> row = {"id": "r0", "source": "sts12", "task_type": "sts", "instruction": "...",
    ...     "query": "A man plays a guitar.", "positive": "A man is playing the guitar.",
    ...     "negatives": [], "negative_scores": [], "positive_score": None,
    ...     "negative_method": "none", "in_batch_negatives": False,
    ...     "document_instruction": "...", "query_id": "q0", "positive_id": "p0"}
    >>> rows = pa.Table.from_pylist([row], schema=schema.FORMATTED)
    >>> mined, report = mine_bm25_negatives(rows, {"sts12": pool}, BM25Config())
    >>> mined.column("negatives").to_pylist()   # rank 1 skipped, q+ and d+ skipped
    [['A man sings.']]
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nvdata import schema
from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.mine import stats
from nvdata.mine.okapi import TOKEN_PATTERN, OkapiIndex, Tokenizer, ranked_prefixes, stable_ranking
from nvdata.text import normalize_text

POOL_MODES = ("source", "all")
SHORTFALL_MODES = ("keep", "drop")
SKIP_RULES = ("rank", "self_or_positive", "gold_above_max")
ALL_POOL = "all"  # the pool's name in the report when pool == "all"

# Candidates read past the ones the rule needs before falling back to a full sort of the row:
# room for q+, d+ and a few gold > max_gold_score partners.
_PREFIX_SLACK = 6
_HIST_BINS = 40  # score_histograms bins per source


@dataclass(frozen=True)
class BM25Config:
    """Options of the STS BM25 miner (recipe key ``mining.bm25``). Defaults: NV-Embed's rule.

    ``k1``, ``b``, ``epsilon``: BM25Okapi's (rank_bm25 defaults). ``token_pattern``,
    ``lowercase``: the tokenizer (``re.findall(token_pattern, text.lower())``).
    ``num_negatives``: negatives per row. ``min_rank``: first rank that may be taken (2 skips
    rank 1). ``max_gold_score``: texts with a gold score above it with q+ are skipped.
    ``pool``: ``source`` or ``all``. ``on_shortfall``: ``keep`` or ``drop`` rows left with no
    negative. ``query_batch_size``: queries scored at once; memory 8 * batch * pool bytes.
    """

    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25
    token_pattern: str = TOKEN_PATTERN
    lowercase: bool = True
    num_negatives: int = 1
    min_rank: int = 2
    max_gold_score: float = 2.5
    pool: str = "source"
    on_shortfall: str = "keep"
    query_batch_size: int = 32

    def __post_init__(self) -> None:
        _validate(self, "BM25Config")

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "mining.bm25") -> BM25Config:
        if not isinstance(d, Mapping):
            raise NvdataError(f"{where}: expected a mapping of options, got {type(d).__name__}")
        reject_unknown_keys(d, (f.name for f in fields(cls)), where)
        cfg = cls.__new__(cls)  # validated below under the caller's name for the options
        for f in fields(cls):
            value = d.get(f.name, f.default)
            if isinstance(f.default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # YAML's 2 and 2.0 must give one cache key
            object.__setattr__(cfg, f.name, value)
        _validate(cfg, where)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.token_pattern, self.lowercase)


def _validate(cfg: BM25Config, where: str) -> None:
    def bad(key: str, why: str) -> NvdataError:
        return NvdataError(f"{where}.{key}: {why}, got {getattr(cfg, key)!r}")

    def number(key: str) -> float:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(key, "must be a finite number")
        return float(v)

    def integer(key: str, low: int) -> None:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(key, f"must be an integer >= {low}")

    if number("k1") <= 0:
        raise bad("k1", "must be > 0")
    if not 0 <= number("b") <= 1:
        raise bad("b", "must be in [0, 1]")
    if number("epsilon") < 0:
        raise bad("epsilon", "must be >= 0")
    number("max_gold_score")
    if not isinstance(cfg.token_pattern, str) or not cfg.token_pattern:
        raise bad("token_pattern", "must be a non-empty regular expression")
    try:
        Tokenizer(cfg.token_pattern)
    except (re.error, ValueError) as e:
        raise bad("token_pattern", f"invalid ({e})") from None
    if not isinstance(cfg.lowercase, bool):
        raise bad("lowercase", "must be true or false")
    integer("num_negatives", 1)
    integer("min_rank", 1)
    integer("query_batch_size", 1)
    if cfg.pool not in POOL_MODES:
        raise bad("pool", f"must be one of {POOL_MODES}")
    if cfg.on_shortfall not in SHORTFALL_MODES:
        raise bad("on_shortfall", f"must be one of {SHORTFALL_MODES}")


# -- pool and gold data -------------------------------------------------------------------
@dataclass(frozen=True)
class StsPool:
    """The candidate texts of one pool, deduplicated on normalized text, in pool order."""

    name: str
    texts: list[str]  # first spelling seen of each distinct normalized text
    position: dict[str, int]  # normalized text -> index into texts


def build_sts_pool(
    name: str, tables: Sequence[pa.Table], norm: Callable[[str], str] = normalize_text
) -> StsPool:
    """Pool of ``tables`` (RAW_STS, in the given order): each table's rows by ``row_index``,
    sentence1 then sentence2, first occurrence of each normalized text kept."""
    texts: list[str] = []
    position: dict[str, int] = {}
    for table in tables:
        table = table.sort_by("row_index")  # Arrow's sort is stable: equal row_index keep order
        for s1, s2 in zip(table.column("sentence1").to_pylist(), table.column("sentence2").to_pylist()):
            for text in (s1, s2):
                key = norm(text)
                if key not in position:
                    position[key] = len(texts)
                    texts.append(text)
    return StsPool(name, texts, position)


def gold_partners(
    tables: Iterable[pa.Table], max_gold_score: float, norm: Callable[[str], str] = normalize_text
) -> dict[str, set[str]]:
    """Normalized text -> the normalized texts it is paired with at a gold score > max, both ways."""
    partners: dict[str, set[str]] = {}
    for table in tables:
        high = table.filter(pc.greater(table.column("score"), max_gold_score))
        for s1, s2 in zip(high.column("sentence1").to_pylist(), high.column("sentence2").to_pylist()):
            a, b = norm(s1), norm(s2)
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
    return partners


class _Normalizer:
    """normalize_text with a cache: STS sentences recur across pairs, rows and pools."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        key = self._cache.get(text)
        if key is None:
            key = self._cache[text] = normalize_text(text)
        return key


# -- the rule -----------------------------------------------------------------------------
def skip_reason(
    rank: int, doc: int, min_rank: int, self_or_positive: set[int], gold_above_max: set[int]
) -> str | None:
    """Why the candidate ``doc`` at 1-based ``rank`` is skipped (first rule that fits), or None."""
    if rank < min_rank:
        return "rank"
    if doc in self_or_positive:
        return "self_or_positive"
    if doc in gold_above_max:
        return "gold_above_max"
    return None


def walk_ranking(
    ranking: Sequence[int],
    num_negatives: int,
    min_rank: int,
    self_or_positive: set[int],
    gold_above_max: set[int],
) -> tuple[list[int], Counter]:
    """The first ``num_negatives`` docs of ``ranking`` that no rule skips, and the skip counts."""
    picked: list[int] = []
    skipped: Counter = Counter()
    for rank, doc in enumerate(ranking.tolist() if isinstance(ranking, np.ndarray) else ranking, 1):
        reason = skip_reason(rank, doc, min_rank, self_or_positive, gold_above_max)
        if reason is None:
            picked.append(doc)
            if len(picked) == num_negatives:
                break
        else:
            skipped[reason] += 1
    return picked, skipped


# -- the stage ----------------------------------------------------------------------------
def mine_bm25_negatives(
    rows: pa.Table, pools: Mapping[str, pa.Table], cfg: BM25Config
) -> tuple[pa.Table, dict]:
    """Fill BM25 negatives into the STS rows of ``rows`` (schema.FORMATTED); see the module doc.

    ``pools`` maps each STS source to its RAW_STS table (all pairs, any score): the candidate
    texts and the gold scores the ``max_gold_score`` rule reads. Returns the rows in the same
    order (minus those dropped for a shortfall) and the report for ``reports/mining.json``.
    """
    rows = _check_rows(rows, pools)
    pool_tables = {name: _check_pool(name, table) for name, table in sorted(pools.items())}
    norm = _Normalizer()
    tokenize = cfg.tokenizer()

    sources = rows.column("source").to_pylist()
    queries = rows.column("query").to_pylist()
    positives = rows.column("positive").to_pylist()
    has_negatives = pc.greater(pc.list_value_length(rows.column("negatives")), 0).to_pylist()

    negatives = rows.column("negatives").to_pylist()
    negative_scores = rows.column("negative_scores").to_pylist()
    positive_score = rows.column("positive_score").to_pylist()
    method = rows.column("negative_method").to_pylist()
    keep = [True] * rows.num_rows

    # Which rows each pool serves.
    work: dict[str, list[int]] = {}
    for i, (source, done) in enumerate(zip(sources, has_negatives)):
        if not done:
            work.setdefault(ALL_POOL if cfg.pool == "all" else source, []).append(i)

    partners = gold_partners(pool_tables.values(), cfg.max_gold_score, norm)
    per_source = {s: _SourceStats() for s in sorted(set(sources))}
    for i, done in enumerate(has_negatives):
        per_source[sources[i]].rows += 1
        per_source[sources[i]].already_had_negatives += int(done)
    pool_report: dict[str, dict] = {}

    for pool_name, todo in sorted(work.items()):
        tables = list(pool_tables.values()) if pool_name == ALL_POOL else [pool_tables[pool_name]]
        pool = build_sts_pool(pool_name, tables, norm)
        index = OkapiIndex(map(tokenize, pool.texts), cfg.k1, cfg.b, cfg.epsilon)
        pool_report[pool_name] = _pool_stats(index)
        pairs = [(queries[i], positives[i]) for i in todo]
        for i, found in zip(todo, _mine_pool(pool, index, pairs, partners, norm, cfg)):
            picked, neg_scores, pos_score, skipped, fell_back = found
            per_source[sources[i]].record(picked, neg_scores, pos_score, skipped, fell_back, cfg)
            negatives[i] = [pool.texts[d] for d in picked]
            negative_scores[i] = neg_scores
            positive_score[i] = pos_score
            method[i] = "bm25" if picked else "none"
            keep[i] = bool(picked) or cfg.on_shortfall == "keep"

    out = rows
    for name, values in (
        ("negatives", negatives),
        ("negative_scores", negative_scores),
        ("positive_score", positive_score),
        ("negative_method", method),
    ):
        field = schema.FORMATTED.field(name)
        out = out.set_column(out.schema.get_field_index(name), field, pa.array(values, type=field.type))
    if not all(keep):
        out = out.filter(pa.array(keep))

    report = {
        "method": "bm25",
        "config": cfg.to_dict(),
        "pools": pool_report,
        "sources": {s: st.as_dict() for s, st in per_source.items()},
        "totals": _totals(per_source.values()),
    }
    return out, report


def _mine_pool(
    pool: StsPool,
    index: OkapiIndex,
    pairs: Sequence[tuple[str, str]],
    partners: Mapping[str, set[str]],
    norm: Callable[[str], str],
    cfg: BM25Config,
) -> Iterator[tuple[list[int], list[float], float, Counter, bool]]:
    """Per (q+, d+): picked pool ids, their float32 scores, d+'s score, skips, full sort used."""
    tokenize = cfg.tokenizer()
    k = cfg.min_rank - 1 + cfg.num_negatives + _PREFIX_SLACK
    for start in range(0, len(pairs), cfg.query_batch_size):
        batch = pairs[start : start + cfg.query_batch_size]
        query_tokens = [tokenize(q) for q, _ in batch]
        scores = index.score_batch([index.term_ids(t) for t in query_tokens])
        prefixes = ranked_prefixes(scores, k)
        for j, (query, positive) in enumerate(batch):
            q, p = norm(query), norm(positive)
            self_or_positive = {pool.position[t] for t in (q, p) if t in pool.position}
            gold = {pool.position[t] for t in partners.get(q, ()) if t in pool.position}
            rule = (cfg.num_negatives, cfg.min_rank, self_or_positive, gold)
            picked, skipped = walk_ranking(prefixes[j], *rule)
            fell_back = len(picked) < cfg.num_negatives and len(prefixes[j]) < index.n_docs
            if fell_back:  # the prefix ran out: walk the whole ranking
                picked, skipped = walk_ranking(stable_ranking(scores[j]), *rule)
            neg_scores = scores[j, picked].astype(np.float32).tolist()
            pos_score = float(np.float32(index.score_text(query_tokens[j], tokenize(positive))))
            yield picked, neg_scores, pos_score, skipped, fell_back


# -- checks and report --------------------------------------------------------------------
def _check_rows(rows: pa.Table, pools: Mapping[str, pa.Table]) -> pa.Table:
    names = set(rows.schema.names)
    missing = [n for n in schema.FORMATTED.names if n not in names]
    extra = sorted(names - set(schema.FORMATTED.names))
    if missing or extra:
        raise NvdataError(f"bm25 rows: not schema.FORMATTED (missing {missing}, unexpected {extra})")
    try:
        rows = rows.select(schema.FORMATTED.names).cast(schema.FORMATTED)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise NvdataError(f"bm25 rows: cannot cast to schema.FORMATTED: {e}") from None
    for name in ("source", "task_type", "query", "positive", "negatives"):
        if rows.column(name).null_count:
            raise NvdataError(f"bm25 rows: column {name} has nulls")
    sources, tasks = rows.column("source").to_pylist(), rows.column("task_type").to_pylist()
    for i, (source, task) in enumerate(zip(sources, tasks)):
        if task != "sts":
            raise NvdataError(
                f"bm25 rows: row {i} ({source}) has task_type {task!r}; only sts rows are BM25-mined"
            )
        if source not in pools:
            raise NvdataError(
                f"bm25 rows: row {i} has source {source!r} with no pool (pools: {sorted(pools)})"
            )
    return rows


def _check_pool(name: str, table: pa.Table) -> pa.Table:
    missing = [n for n in schema.RAW_STS.names if n not in table.schema.names]
    if missing:
        raise NvdataError(f"bm25 pool {name}: not schema.RAW_STS (missing {missing})")
    try:
        table = table.select(schema.RAW_STS.names).cast(schema.RAW_STS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise NvdataError(f"bm25 pool {name}: cannot cast to schema.RAW_STS: {e}") from None
    for column in schema.RAW_STS.names:
        if table.column(column).null_count:
            raise NvdataError(f"bm25 pool {name}: column {column} has nulls")
    if table.num_rows and not pc.all(pc.is_finite(table.column("score"))).as_py():
        raise NvdataError(f"bm25 pool {name}: column score has non-finite values")
    return table


class _SourceStats:
    def __init__(self) -> None:
        self.rows = self.already_had_negatives = self.mined = 0
        self.with_negatives = self.partial = self.shortfall = self.dropped = 0
        self.negatives = self.zero_score_negatives = self.full_sorts = 0
        self.skipped: Counter = Counter()
        self.negative_scores: list[float] = []
        self.positive_scores: list[float] = []
        self.margins: list[float] = []  # positive minus each of its row's negatives

    def record(
        self,
        picked: list[int],
        negative_scores: list[float],
        positive_score: float,
        skipped: Counter,
        fell_back: bool,
        cfg: BM25Config,
    ) -> None:
        self.mined += 1
        self.negative_scores.extend(negative_scores)
        self.positive_scores.append(positive_score)
        self.margins.extend(positive_score - s for s in negative_scores)
        self.negatives += len(picked)
        self.skipped.update(skipped)
        self.full_sorts += int(fell_back)
        if not picked:
            self.shortfall += 1
            self.dropped += int(cfg.on_shortfall == "drop")
        else:
            self.with_negatives += 1
            self.partial += int(len(picked) < cfg.num_negatives)

    def as_dict(self) -> dict:
        neg = np.asarray(self.negative_scores, dtype=np.float64)
        return {
            "rows": self.rows,
            "already_had_negatives": self.already_had_negatives,
            "mined": self.mined,
            "with_negatives": self.with_negatives,
            "partial": self.partial,
            "shortfall": self.shortfall,
            "dropped": self.dropped,
            "kept_without_negatives": self.shortfall - self.dropped,
            "negatives": self.negatives,
            "zero_score_negatives": int((neg <= 0).sum()),
            "full_sorts": self.full_sorts,
            "skipped": {rule: self.skipped[rule] for rule in SKIP_RULES},
            **_score_summary(np.asarray(self.positive_scores, dtype=np.float64), neg,
                             np.asarray(self.margins, dtype=np.float64)),
        }


def _totals(stats: Iterable[_SourceStats]) -> dict:
    keys = ("rows", "already_had_negatives", "mined", "with_negatives", "partial", "shortfall",
            "dropped", "kept_without_negatives", "negatives", "zero_score_negatives", "full_sorts")
    total = dict.fromkeys(keys, 0)
    skipped = dict.fromkeys(SKIP_RULES, 0)
    for st in stats:
        d = st.as_dict()
        for key in keys:
            total[key] += d[key]
        for rule in SKIP_RULES:
            skipped[rule] += d["skipped"][rule]
    total["skipped"] = skipped
    return total


def _score_summary(pos: np.ndarray, neg: np.ndarray, margin: np.ndarray) -> dict:
    """``scores`` and ``score_histograms`` in the dense miner's schema (``mine.stats``); BM25
    scores are unbounded, so the bins span 0 to the source's highest score."""
    low, high = stats.value_range(pos, neg, bins=_HIST_BINS)
    hist = stats.score_histograms(low, high, _HIST_BINS, positive=pos, negative=neg)
    hist["removed"] = {}  # the skipped candidates' scores are not kept: counts in `skipped`
    return {
        "scores": {"positive": stats.score_quantiles(pos), "negative": stats.score_quantiles(neg),
                   "margin": stats.score_quantiles(margin)},
        "score_histograms": hist,
    }


def _pool_stats(index: OkapiIndex) -> dict:
    return {
        "texts": index.n_docs,
        "empty_texts": int((index.doc_len == 0).sum()),
        "vocab": index.n_terms,
        "avgdl": round(index.avgdl, 6),
        "average_idf": round(index.average_idf, 6),
        "epsilon_idf_terms": index.n_negative_idf,
    }
