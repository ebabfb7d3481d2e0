"""``reports/report.html``: one self-contained page to audit a build at a glance.

The per-source counts (:mod:`nvdata.counts`), the figures of :mod:`nvdata.plots` (score
histograms per mined source, negatives per row, decontamination matches per test set) embedded
as base64 PNG, and links to the detailed reports next to it. No script, style sheet, font or
image is fetched from anywhere: the page opens offline, from a cluster's file system or an
e-mail attachment. Each figure is also written as a PNG file under ``reports/figures/``.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path

from nvdata import counts as named
from nvdata import plots

FIGURES_DIR = "figures"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; } td.n { text-align: right; }
tr.total td { font-weight: bold; } figure { margin: 1em 0; } img { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(30em, 1fr)); gap: 0.5em; }
small, .legend { color: #555; }
"""


def score_histograms(mining: Mapping[str, Mapping]) -> dict[str, tuple[str, dict]]:
    """``{source: (method, score_histograms)}`` from ``mining.json`` (dense reports are per
    source; a BM25 report keeps its sources under ``sources``)."""
    out = {}
    for name, rep in mining.items():
        if rep.get("method") == "dense" and rep.get("score_histograms"):
            out[name] = ("dense", rep["score_histograms"])
        elif rep.get("method") == "bm25":
            h = ((rep.get("sources") or {}).get(name) or {}).get("score_histograms")
            if h:
                out[name] = ("bm25", h)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _counts_table(per_source: Mapping[str, Mapping]) -> str:
    header, body = named.table(per_source)
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in body:
        cls = ' class="total"' if r[0] == "total" else ""
        rows.append(f"<tr{cls}><td>{html.escape(r[0])}</td>" + "".join(f'<td class="n">{html.escape(c)}</td>' for c in r[1:]) + "</tr>")
    legend = "".join(f"<li><i>{html.escape(c.label)}</i>: {html.escape(c.meaning)}</li>" for c in named.COLUMNS)
    return f"<table>{''.join(rows)}</table><ul class=\"legend\">{legend}</ul>"


def write_html_report(reports_dir: Path, manifest: Mapping, mining: Mapping, decontamination: Mapping,
                      negatives_per_row: Mapping[str, Mapping]) -> Path:
    """Write ``reports_dir/report.html`` and ``reports_dir/figures/*.png``; return the page's path.

    ``manifest``: the build's manifest (recipe, sources with their named counts);
    ``mining``: ``mining.json``; ``decontamination``: ``decontamination.json``;
    ``negatives_per_row``: ``{source: {n_negatives: rows}}``.
    """
    reports_dir = Path(reports_dir)
    fig_dir = reports_dir / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)

    def figure(fig, name: str, alt: str) -> str:
        png = plots.png_bytes(fig)
        (fig_dir / f"{name}.png").write_bytes(png)
        return f'<figure>{_img(png, alt)}<figcaption><small>{FIGURES_DIR}/{html.escape(name)}.png</small></figcaption></figure>'

    recipe = manifest["recipe"]
    sources = manifest["sources"]
    per_source = {n: {c.key: s.get(c.key) for c in named.COLUMNS} for n, s in sources.items()}
    dec = manifest.get("decontamination") or {}
    parts = [
        f"<h1>nvdata build: {html.escape(recipe['name'])} (stage {recipe['stage']})</h1>",
        f"<p>{manifest['total_rows']} rows in {len(manifest['shards'])} shard(s); config hash "
        f"<code>{html.escape(manifest['config_hash'][:16])}</code>, seed {manifest['seed']}; dense miner: "
        f"<code>{html.escape(str(manifest.get('encoder') or 'none (no retrieval source)'))}</code>.</p>",
        '<p>Details: <a href="decontamination.md">decontamination.md</a> (every dropped text beside the test '
        'text it matched), <a href="decontamination.json">decontamination.json</a>, '
        '<a href="mining.json">mining.json</a>, <a href="../manifest.json">manifest.json</a>, '
        '<a href="../README.md">data card</a>.</p>',
        "<h2>Row counts per source</h2>",
        "<p>The same numbers as the build summary, the manifest and the data card.</p>",
        _counts_table(per_source),
    ]
    scored = score_histograms(mining)
    if scored:
        parts += ["<h2>Scores per mined source</h2>",
                  "<p>Positives, kept negatives and the candidates each filter removed, on the same bins "
                  "(dense: cosine similarity; BM25: Okapi score). The positive-aware filter "
                  "(NV-Retriever, arXiv 2407.15831) removes candidates scoring near or above the positive: "
                  "likely false negatives.</p>", '<div class="grid">']
        for name, (method, hist) in scored.items():
            parts.append(figure(plots.score_figure(name, method, hist), f"scores-{_slug(name)}", f"{name} score histograms"))
        parts.append("</div>")
    parts += ["<h2>Negatives per row</h2>",
              figure(plots.negatives_figure(negatives_per_row), "negatives-per-row", "negatives per row by source")]
    parts += [
        "<h2>Decontamination</h2>",
        f"<p>Checked {dec.get('raw_rows', 0)} raw rows and {dec.get('corpus_documents', 0)} corpus documents "
        f"against {dec.get('test_sets') or '?'} test sets; dropped {dec.get('dropped_decontamination', 0)} raw rows "
        f"and {dec.get('documents_dropped_decontamination', 0)} corpus documents. Every match, with the training "
        f'text beside the test text: <a href="decontamination.md">decontamination.md</a>.</p>',
        figure(plots.decontamination_figure(decontamination.get("test_sets") or {}),
               "decontamination-by-test-set", "rows matched per test set"),
    ]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>nvdata build report: {html.escape(recipe['name'])}</title><style>{_STYLE}</style></head>"
            f"<body>\n" + "\n".join(parts) + "\n</body></html>\n")
    path = reports_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
