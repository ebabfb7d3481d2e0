"""Score summaries for ``reports/mining.json``: one schema for every miner (dense, BM25).

``score_quantiles`` gives ``{count, mean, min, p05, p25, p50, p75, p95, max}`` (``{"count": 0}``
for no values; non-finite values are left out). ``Histogram`` counts scores into ``bins`` equal
bins over ``[low, high]`` (values outside counted in the end bins); a report keeps them as
``score_histograms: {low, high, bins, positive: [...], negative: [...], removed: {filter:
[...]}}``, small
enough to keep per filter in a report where the raw score arrays would not be: the plots
(:mod:`nvdata.plots`) draw positives, kept negatives and each filter's removed candidates from
it, the picture NV-Retriever (arXiv 2407.15831, figure 2) uses to argue for its margin.

    >>> h = Histogram(-1.0, 1.0, 4); h.add([0.1, 0.7, 0.9, 3.0]); h.counts.tolist()
    [0, 0, 1, 3]
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}
COSINE_RANGE = (-1.0, 1.0)  # dense scores are cosine similarities (normalized embeddings)
COSINE_BINS = 80  # 0.025 wide


def score_quantiles(values) -> dict:
    """Count, mean and the :data:`QUANTILES` of the finite ``values`` (rounded to 6 places)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0}
    qs = np.quantile(v, list(QUANTILES.values()))
    out = {"count": int(v.size), "mean": round(float(v.mean()), 6)}
    out.update({name: round(float(q), 6) for name, q in zip(QUANTILES, qs)})
    return out


class Histogram:
    """Counts of scores in ``bins`` equal bins over ``[low, high]``; accumulates batch by batch."""

    def __init__(self, low: float, high: float, bins: int) -> None:
        if not high > low or bins < 1:
            raise ValueError(f"histogram: need high > low and bins >= 1, got {low}, {high}, {bins}")
        self.low, self.high, self.bins = float(low), float(high), int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)

    def add(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size:
            i = np.floor((v - self.low) / (self.high - self.low) * self.bins).astype(np.int64)
            self.counts += np.bincount(np.clip(i, 0, self.bins - 1), minlength=self.bins)


def value_range(*arrays, bins: int = 40) -> tuple[float, float]:
    """``[0, top]`` covering every finite value, ``top`` rounded up to a whole bin width: bins
    for unbounded scores (BM25), fixed once all of a source's scores are known."""
    top = 0.0
    for a in arrays:
        v = np.asarray(a, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            top = max(top, float(v.max()))
    if top <= 0:
        return 0.0, 1.0
    width = top / bins
    magnitude = 10 ** np.floor(np.log10(width))
    width = float(np.ceil(width / magnitude) * magnitude)
    return 0.0, width * bins


def score_histograms(low: float, high: float, bins: int, **values) -> dict:
    """``{name: counts}`` of each array in ``values`` on the same bins, with the bins once."""
    out: dict = {"low": float(low), "high": float(high), "bins": int(bins)}
    for name, v in values.items():
        h = Histogram(low, high, bins)
        h.add(v)
        out[name] = h.counts.tolist()
    return out
