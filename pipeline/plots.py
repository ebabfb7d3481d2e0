"""The build's figures, drawn with matplotlib from what the reports already hold.

Three kinds, each a function from report data to a ``matplotlib.figure.Figure``:

- :func:`score_figure`, per mined source: histograms of the positives' scores, the kept
  negatives' scores and the candidates each filter removed (``mining.json``'s
  ``score_histograms``). For dense sources this is the picture NV-Retriever (arXiv 2407.15831,
  section 4.2) draws to argue for its positive-aware margin: the removed candidates sit at and
  above the positives, the kept negatives below them.
- :func:`negatives_figure`: per source, how many rows carry 0, 1, 2 ... negatives.
- :func:`decontamination_figure`: rows matched per test set (``decontamination.json``).

Figures are built with the object API on the Agg canvas (no pyplot, no display, no global
backend switch), so drawing works on a headless build machine and leaves a caller's
matplotlib state alone. :func:`png_bytes` renders one.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100
# Filters that remove a query's own positive or query document: their "scores" are the
# positives' again, so they are left out of the removed-candidates picture.
_OWN_DOCUMENT_FILTERS = ("positive_id", "query_id")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def score_figure(source: str, method: str, hist: Mapping) -> Figure:
    """Step histograms on ``hist``'s shared bins (``{low, high, bins, positive, negative,
    removed: {filter: counts}}``): positives, kept negatives, each filter's removed candidates."""
    edges = np.linspace(hist["low"], hist["high"], int(hist["bins"]) + 1)
    series = [("positive", hist.get("positive"), "tab:green"), ("kept negative", hist.get("negative"), "tab:blue")]
    colors = iter(["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"])
    for name, counts in (hist.get("removed") or {}).items():
        if name not in _OWN_DOCUMENT_FILTERS and any(counts):
            series.append((f"removed: {name}", counts, next(colors, "black")))
    occupied = np.zeros(len(edges) - 1, dtype=bool)
    for _, counts, _ in series:
        if counts:
            occupied |= np.asarray(counts) > 0
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    for label, counts, color in series:
        if counts and any(counts):
            ax.stairs(counts, edges, label=f"{label} ({int(sum(counts))})", color=color,
                      fill=label.startswith("removed"), alpha=0.35 if label.startswith("removed") else 1.0,
                      linewidth=1.5)
    if occupied.any():  # zoom on the bins that hold something, one bin of air either side
        first, last = np.flatnonzero(occupied)[[0, -1]]
        ax.set_xlim(edges[max(first - 1, 0)], edges[min(last + 2, len(edges) - 1)])
    ax.set_xlabel("BM25 score" if method == "bm25" else "cosine similarity to the query")
    ax.set_ylabel("count")
    ax.set_title(f"{source}: scores ({method})", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig


def negatives_figure(per_source: Mapping[str, Mapping]) -> Figure:
    """Horizontal stacked bars: per source, the rows holding each number of negatives
    (``{source: {n_negatives: rows}}``)."""
    names = list(per_source)
    most = max((int(k) for h in per_source.values() for k in h), default=0)
    cmap = colormaps["viridis"]
    fig = _figure(6.4, 0.8 + 0.22 * max(len(names), 1))
    ax = fig.add_subplot()
    left = np.zeros(len(names))
    for n in range(most + 1):
        widths = np.array([int(per_source[s].get(str(n), per_source[s].get(n, 0))) for s in names])
        if widths.any():
            ax.barh(names, widths, left=left, color=cmap(n / max(most, 1)), label=str(n), height=0.7)
            left += widths
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("negatives per row, by source", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(title="negatives", fontsize=7, title_fontsize=7, frameon=False, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    return fig


def decontamination_figure(test_sets: Mapping[str, Mapping]) -> Figure:
    """Horizontal bars: rows (raw rows and corpus documents) each test set matched, per method
    side by side; test sets that matched nothing are left out."""
    hit = {t: s for t, s in sorted(test_sets.items()) if s.get("rows_matched")}
    names = list(hit) or ["(no test set matched)"]
    fig = _figure(6.4, 0.8 + 0.3 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    methods = ("exact", "ngram", "near_dup")
    for i, m in enumerate(methods):
        vals = [int(hit[t]["rows_matched_by_method"].get(m, 0)) if t in hit else 0 for t in names]
        ax.barh(y + (i - 1) * 0.27, vals, height=0.27, label=m)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("rows matched (a row can match several methods)")
    ax.set_title("decontamination: rows matched per test set", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
