"""Okapi BM25 that gives rank_bm25's scores bit for bit, at pool sizes rank_bm25 cannot serve.

``rank_bm25.BM25Okapi`` is the reference: Robertson's Okapi BM25 with the ATIRE idf
``log(N - df + 0.5) - log(df + 0.5)``, where a term in more than half the corpus (negative idf)
gets ``epsilon * mean idf`` instead. It scores a query by looping in Python over the query's
tokens and, for each, over every document's term-count dict: about 15 ms per token at 50k
documents. This engine precomputes every (term, document) weight once, as a sparse matrix
(``OkapiIndex.weights``, scipy CSR, terms x documents), so a query's scores are the sum of its
tokens' rows. It adds those rows into a dense score row with numpy, one query batch at a time.
Not ``Q @ weights``: scipy's sparse product sums in an order its API does not promise, and was
2x slower here than adding the rows (np.add.at; dense rows for the most frequent terms).
bm25s is not used: its idf has no epsilon floor (negative idf is clipped to 0 or kept) and it
scores in float32, so it cannot give rank_bm25's numbers.

Bit-exact on purpose. The STS miner breaks ties by pool order, and rank_bm25's order is a
stable argsort of its float64 scores, so two documents whose scores are equal in exact
arithmetic but were summed in different orders can differ in the last bit, and then in rank.
To reproduce the reference order everywhere (not only "allclose") the engine repeats
rank_bm25's arithmetic exactly:

- idf with ``math.log`` (numpy's SIMD log may differ in the last ulp), and the mean idf summed
  sequentially over the vocabulary in first-occurrence order, as rank_bm25's dict iterates;
- each posting's weight ``idf * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)))`` with
  the same operations in the same order;
- a document's score summed over the query's tokens in query order, repeats kept (a token that
  occurs twice in the query is added twice, as rank_bm25 does). Documents without the token
  get ``+ 0.0``, which changes nothing.

Also as rank_bm25: ``N`` and ``avgdl`` count every document given, including ones with zero
tokens (they score 0 for every query); query tokens absent from the corpus add nothing. One
deliberate difference: with ``b == 1`` rank_bm25 gives a zero-token document ``0/0 = nan``;
here it scores 0.

Example::

    >>> tok = Tokenizer()
    >>> index = OkapiIndex([tok(t) for t in ["A man plays a guitar.", "A dog runs.", "Rain."]])
    >>> scores = index.score_batch([index.term_ids(tok("man with a guitar"))])
    >>> [int(i) for i in stable_ranking(scores[0])]   # doc 1 shares only "a" with the query
    [0, 1, 2]
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from nvdata.text import remove_invisible

TOKEN_PATTERN = r"\w+"

# Terms in at least this share of the pool are kept as dense rows too: adding a dense row is
# several times faster than scattering a postings list that long. Capped in bytes.
_DENSE_DF_SHARE = 0.25
_DENSE_BUDGET_BYTES = 64 * 2**20
# Block width for the top-k search in ranked_prefixes.
_BLOCK = 64


@dataclass(frozen=True)
class Tokenizer:
    """Text -> tokens: ``re.findall(pattern, text.lower())``. No stemming, no stopwords.

    The default ``\\w+`` keeps Unicode letters, digits and ``_``; ``lowercase`` uses
    ``str.lower``. The pattern must have no capturing group (``findall`` would return groups).
    Invisible characters are removed first (:func:`nvdata.text.remove_invisible`, the first
    step of the text identity rule), so a soft hyphen does not split ``can\u00adcel`` in two.
    """

    pattern: str = TOKEN_PATTERN
    lowercase: bool = True
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.compile(self.pattern)
        if regex.groups:
            raise ValueError(f"token pattern {self.pattern!r} has capturing groups; use (?:...)")
        object.__setattr__(self, "_regex", regex)

    def __call__(self, text: str) -> list[str]:
        text = remove_invisible(text)
        return self._regex.findall(text.lower() if self.lowercase else text)


class OkapiIndex:
    """BM25Okapi statistics of one corpus (the mining pool), ready to score batches of queries.

    ``docs`` are token lists (any iterable); a document's position is its id. Attributes mirror
    rank_bm25's: ``n_docs`` (corpus_size), ``avgdl``, ``doc_len``, ``vocab`` (term -> id,
    first-occurrence order), ``idf`` (float64 by term id, epsilon floor applied) and
    ``average_idf``; ``weights`` is the ``(n_terms, n_docs)`` CSR matrix of posting weights.
    """

    def __init__(
        self,
        docs: Iterable[Sequence[str]],
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> None:
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        # Terms are numbered in order of first occurrence, the order in which rank_bm25's dict
        # (and so its idf sum) sees them. ``docs`` may be a generator: only term ids are kept,
        # never a token list per document (that would be ~0.7 kB a text).
        self.vocab: dict[str, int] = {}
        vocab = self.vocab
        token_terms, lengths = array("q"), array("q")
        for doc in docs:
            lengths.append(len(doc))
            token_terms.extend([vocab.setdefault(t, len(vocab)) for t in doc])
        self.doc_len = np.frombuffer(lengths, dtype=np.int64) if lengths else np.zeros(0, np.int64)
        self.n_docs = len(self.doc_len)
        n_tokens = int(self.doc_len.sum())
        self.avgdl = n_tokens / self.n_docs if self.n_docs else 0.0
        n_terms = len(vocab)

        # Postings: one (term, doc, tf) per distinct term of a document, sorted by term then doc.
        term_of_token = np.frombuffer(token_terms, dtype=np.int64) if token_terms else np.zeros(0, np.int64)
        doc_of_token = np.repeat(np.arange(self.n_docs, dtype=np.int64), self.doc_len)
        keys, tf = np.unique(term_of_token * max(self.n_docs, 1) + doc_of_token, return_counts=True)
        post_term = keys // max(self.n_docs, 1)
        self._post_doc = (keys - post_term * max(self.n_docs, 1)).astype(np.intp)
        df = np.bincount(post_term, minlength=n_terms)
        self._indptr = np.concatenate([[0], np.cumsum(df)]).tolist()
        self.doc_freq = df

        # idf exactly as rank_bm25._calc_idf: math.log per distinct df, a sequential mean over
        # the vocabulary, negative idf replaced by epsilon * mean (the mean may be negative).
        distinct, inverse = np.unique(df, return_inverse=True)
        n = self.n_docs
        raw = np.array(
            [math.log(n - f + 0.5) - math.log(f + 0.5) for f in distinct.tolist()], dtype=np.float64
        )[inverse]
        total = 0.0
        for value in raw.tolist():
            total += value
        self.average_idf = total / n_terms if n_terms else 0.0
        self.idf = np.where(raw < 0, self.epsilon * self.average_idf, raw)
        self.n_negative_idf = int((raw < 0).sum())

        # Posting weights with rank_bm25's expression, operation for operation.
        if n_terms:
            norm = self.k1 * (1 - self.b + self.b * self.doc_len / self.avgdl)
            tf = tf.astype(np.int64)
            self._weight = np.repeat(self.idf, df) * (
                tf * (self.k1 + 1) / (tf + norm[self._post_doc])
            )
        else:
            self._weight = np.zeros(0, dtype=np.float64)

        self.weights = sp.csr_array(
            (self._weight, self._post_doc, np.asarray(self._indptr, dtype=np.int64)),
            shape=(n_terms, self.n_docs),
        )
        # The most frequent terms also as dense rows (see _DENSE_DF_SHARE).
        max_rows = _DENSE_BUDGET_BYTES // (8 * max(self.n_docs, 1))
        frequent = np.flatnonzero(df >= max(_DENSE_DF_SHARE * self.n_docs, 1))
        frequent = frequent[np.argsort(-df[frequent], kind="stable")][:max_rows]
        self._dense_slot = {int(t): s for s, t in enumerate(frequent.tolist())}
        self._dense = np.zeros((len(frequent), self.n_docs), dtype=np.float64)
        for s, t in enumerate(frequent.tolist()):
            lo, hi = self._indptr[t], self._indptr[t + 1]
            self._dense[s, self._post_doc[lo:hi]] = self._weight[lo:hi]

    @property
    def n_terms(self) -> int:
        return len(self.vocab)

    def term_ids(self, tokens: Sequence[str]) -> list[int]:
        """A query's term ids in query order, repeats kept; terms not in the corpus dropped."""
        vocab = self.vocab
        return [vocab[t] for t in tokens if t in vocab]

    def score_batch(self, queries: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores of every document for each query (term ids): float64, ``(len(queries), n_docs)``.

        Memory is ``8 * len(queries) * n_docs`` bytes: callers pass one batch at a time.
        """
        out = np.zeros((len(queries), self.n_docs), dtype=np.float64)
        indptr, post_doc, weight = self._indptr, self._post_doc, self._weight
        dense, dense_slot = self._dense, self._dense_slot
        for row, term_ids in zip(out, queries):
            for t in term_ids:  # query order: the summation order rank_bm25 uses
                slot = dense_slot.get(t)
                if slot is not None:
                    row += dense[slot]
                else:
                    lo, hi = indptr[t], indptr[t + 1]
                    np.add.at(row, post_doc[lo:hi], weight[lo:hi])
        return out

    def score_text(self, query: Sequence[str], doc: Sequence[str]) -> float:
        """Score of any token list ``doc`` (in the corpus or not) for ``query`` tokens.

        Uses the corpus' idf and avgdl with ``doc``'s own length and term counts; for a document
        of the corpus it equals that document's entry in :meth:`score_batch` bit for bit.
        """
        if not self.n_terms:
            return 0.0
        tf = Counter(doc)
        norm = self.k1 * (1 - self.b + self.b * len(doc) / self.avgdl)
        score = 0.0
        for token in query:
            f = tf.get(token)
            t = self.vocab.get(token)
            if f and t is not None:
                score += float(self.idf[t]) * (f * (self.k1 + 1) / (f + norm))
        return score


def stable_ranking(scores: np.ndarray) -> np.ndarray:
    """All document ids by descending score, ties in ascending id: the reference order."""
    return np.argsort(-np.asarray(scores), kind="stable")


def ranked_prefixes(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """For each row of ``scores`` (``(B, N)``, no NaN): a prefix of :func:`stable_ranking`.

    The prefix holds every document scoring at least the row's k-th best score, so it has at
    least ``min(k, N)`` ids (more when the k-th score is tied). It is found without sorting
    the row: the maxima of 64-wide blocks give a threshold ``t`` that the k-th best score
    cannot be under (the k best blocks each hold a score >= t), and only blocks whose maximum
    reaches ``t`` are read again.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_rows, n = scores.shape
    if n == 0 or k <= 0:
        return [np.zeros(0, dtype=np.intp) for _ in range(n_rows)]
    block_max = np.maximum.reduceat(scores, np.arange(0, n, _BLOCK), axis=1)
    n_blocks = block_max.shape[1]
    if k >= n_blocks:  # small pool: sorting is as cheap as anything
        return [stable_ranking(row) for row in scores]
    threshold = np.partition(block_max, n_blocks - k, axis=1)[:, n_blocks - k]
    row_of, block_of = np.nonzero(block_max >= threshold[:, None])
    cols = block_of[:, None] * _BLOCK + np.arange(_BLOCK)
    inside = cols < n
    cols = np.where(inside, cols, n - 1)
    vals = scores[row_of[:, None], cols]
    keep = inside & (vals >= threshold[row_of][:, None])
    rows = np.broadcast_to(row_of[:, None], cols.shape)[keep]
    cols, vals = cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols = rows[order], cols[order]
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    return [cols[bounds[i] : bounds[i + 1]] for i in range(n_rows)]
