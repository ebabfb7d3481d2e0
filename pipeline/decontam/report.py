"""The decontamination report: ``decontamination.json`` (everything) and ``.md`` (for people).

Counts per source (rows and texts checked, rows dropped, negatives removed, rows each method
matched, rows per test set) and per test set (texts indexed, rows each method matched, per
source), then one record per hit: source, row id, field, action, method, test set, subset,
split, test item id and field, and the evidence (the shared n-gram, the Jaccard, the text).
A row matched by several methods counts once under each: the methods are reported apart.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

REPORT_NAME = "decontamination"
_MD_HIT_LIMIT = 500
_METHODS = ("exact", "ngram", "near_dup", "shared_corpus")  # shared_corpus: nvdata.shared_corpus (by id)


def _checked(c: dict) -> dict:
    """Checked counts of one source, from ``DecontamCounts`` ({rows_checked, texts_checked}) or
    from per-table counts ({table: {checked, kept, dropped}}, e.g. pairs and corpus)."""
    if "rows_checked" in c:
        return {"rows_checked": c["rows_checked"], "texts_checked": c.get("texts_checked")}
    tables = {k: v for k, v in c.items() if isinstance(v, dict)}
    return {"rows_checked": sum(int(v.get("checked", 0)) for v in tables.values()), "texts_checked": None, "tables": tables}


def summarize(hits: list[dict], counts: dict, index_summary: dict | None = None) -> dict:
    """Counts per source and per test set from the hits and the per-source checked counts.

    A row is identified by (source, table, row id): a hit's optional ``table`` key tells a
    source's pairs from its corpus.
    """
    sources: dict[str, dict] = {}
    for src, c in counts.items():
        sources[src] = {
            **_checked(c), "rows_dropped": 0, "negatives_removed": 0,
            "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_by_test_set": {},
        }
    tests: dict[str, dict] = {}
    if index_summary:
        for task, t in index_summary["test_sets"].items():
            tests[task] = {"texts_indexed": t["texts"], "splits": t["splits"], "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_matched": 0, "sources": {}}

    dropped_rows: set[tuple] = set()
    removed: set[tuple] = set()
    by_method: dict[str, set] = defaultdict(set)
    by_test: dict[str, set] = defaultdict(set)
    by_test_method: dict[tuple[str, str], set] = defaultdict(set)
    for h in hits:
        row = (h["source"], h.get("table"), h["row_id"])
        if h["action"] == "drop_row":
            dropped_rows.add(row)
        else:
            removed.add((*row, h["field"]))
        by_method[h["method"]].add(row)
        by_test[h["test_set"]].add(row)
        by_test_method[(h["test_set"], h["method"])].add(row)
    removed = {r for r in removed if r[:3] not in dropped_rows}

    def src_entry(src: str) -> dict:
        return sources.setdefault(src, {
            "rows_checked": 0, "texts_checked": 0, "rows_dropped": 0, "negatives_removed": 0,
            "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_by_test_set": {},
        })

    for src, *_ in dropped_rows:
        src_entry(src)["rows_dropped"] += 1
    for src, *_ in removed:
        src_entry(src)["negatives_removed"] += 1
    for method, rows in by_method.items():
        for src, *_ in rows:
            src_entry(src)["rows_matched_by_method"][method] += 1
    for task, rows in by_test.items():
        t = tests.setdefault(task, {"texts_indexed": None, "splits": [], "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_matched": 0, "sources": {}})
        t["rows_matched"] = len(rows)
        for src, *_ in rows:
            e = src_entry(src)["rows_by_test_set"]
            e[task] = e.get(task, 0) + 1
            t["sources"][src] = t["sources"].get(src, 0) + 1
    for (task, method), rows in by_test_method.items():
        tests[task]["rows_matched_by_method"][method] = len(rows)

    totals = {
        "rows_checked": sum(s["rows_checked"] for s in sources.values()),
        "texts_checked": sum(s["texts_checked"] or 0 for s in sources.values()),
        "rows_dropped": len(dropped_rows),
        "negatives_removed": len(removed),
        "hits": len(hits),
        "rows_matched_by_method": {m: len(by_method.get(m, ())) for m in _METHODS},
    }
    return {"totals": totals, "sources": sources, "test_sets": tests}


def write_report(
    hits: list[dict],
    counts,
    reports_dir: Path,
    *,
    index=None,
    cfg=None,
) -> dict:
    """Write ``reports_dir/decontamination.json`` and ``.md``; return the short summary.

    ``counts``: a ``DecontamCounts``, its ``to_dict()``, or per source per table
    ``{checked, kept, dropped}``; ``index`` (a ``TestIndex``) adds the test sets checked
    against and their sizes; ``cfg`` the options used. The returned summary (checked,
    dropped, negatives_removed, hits, by_method, report file names) is JSON-ready: the build
    puts it in the manifest.
    """
    counts_d = counts.to_dict() if hasattr(counts, "to_dict") else dict(counts)
    index_summary = index.summary() if index is not None else None
    summary = summarize(hits, counts_d, index_summary)
    t = summary["totals"]
    short = {
        "checked": t["rows_checked"], "dropped": t["rows_dropped"], "negatives_removed": t["negatives_removed"],
        "hits": t["hits"], "by_method": t["rows_matched_by_method"],
        "test_sets": len(index_summary["test_sets"]) if index_summary else None,
        "index_key": index_summary["key"] if index_summary else None,
        "report": {"json": f"{REPORT_NAME}.json", "markdown": f"{REPORT_NAME}.md"},
    }
    doc = {
        "summary": short,
        "config": cfg.to_dict() if cfg is not None else None,
        "index": {k: v for k, v in (index_summary or {}).items() if k != "test_sets"} or None,
        **summary,
        "hits": sorted(hits, key=lambda h: (h["source"], h.get("table") or "", h["row_id"], h["field"], h["method"], h["test_set"])),
    }
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    jpath = reports_dir / f"{REPORT_NAME}.json"
    jpath.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    mpath = reports_dir / f"{REPORT_NAME}.md"
    mpath.write_text(render_markdown(doc), encoding="utf-8")
    return short


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: dict) -> str:
    t = doc["totals"]
    lines = [
        "# Decontamination report",
        "",
        f"Checked {t['rows_checked']} rows ({t['texts_checked']} texts) against the MTEB test sets; "
        f"dropped {t['rows_dropped']} rows, removed {t['negatives_removed']} negatives ({t['hits']} hits).",
        "Rows matched per method (a row can match several): "
        + ", ".join(f"{m} {n}" for m, n in t["rows_matched_by_method"].items()) + ".",
        "",
    ]
    if doc.get("config"):
        c = doc["config"]
        lines += [
            f"Methods: {', '.join(c['methods'])}; {c['ngram_n']}-grams (test texts of {c['min_ngram_words']}+ words), "
            f"MinHash LSH on {c['shingle_size']}-shingles at Jaccard >= {c['minhash_threshold']} ({c['num_perm']} permutations); "
            f"negative policy {c['negative_policy']}. Benchmarks: {', '.join(c['benchmarks']) or '-'}; "
            f"added: {', '.join(c['add_tasks']) or '-'}; dropped: {', '.join(c['drop_tasks']) or '-'}.",
            "",
        ]
    if doc.get("index"):
        lines += [f"Test index `{doc['index']['key'][:16]}`: {doc['index']['n_texts']} test texts.", ""]
    lines += ["## Per source", "", "| source | rows checked | texts checked | rows dropped | negatives removed | exact | ngram | near_dup |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for src, s in sorted(doc["sources"].items()):
        m = s["rows_matched_by_method"]
        lines.append(f"| {_cell(src)} | {s['rows_checked']} | {s['texts_checked'] if s['texts_checked'] is not None else '-'} | {s['rows_dropped']} | {s['negatives_removed']} | {m['exact']} | {m['ngram']} | {m['near_dup']} |")
    lines += ["", "## Per test set", "", "| test set | texts indexed | rows matched | exact | ngram | near_dup | sources |", "|---|---:|---:|---:|---:|---:|---|"]
    for task, s in sorted(doc["test_sets"].items()):
        m = s["rows_matched_by_method"]
        srcs = ", ".join(f"{k} {v}" for k, v in sorted(s["sources"].items())) or "-"
        lines.append(f"| {_cell(task)} | {s['texts_indexed']} | {s['rows_matched']} | {m['exact']} | {m['ngram']} | {m['near_dup']} | {_cell(srcs)} |")
    hits = doc["hits"]
    lines += ["", f"## Hits ({len(hits)})", ""]
    if hits:
        lines += ["| source | row id | field | action | method | test set | split | test item | evidence |", "|---|---|---|---|---|---|---|---|---|"]
        for h in hits[:_MD_HIT_LIMIT]:
            ev = h["evidence"]
            evidence = (f"Jaccard {ev['jaccard']}" if "jaccard" in ev else f"{ev['n']}-gram \"{ev['ngram']}\"" if "ngram" in ev
                        else ev["reason"] if "reason" in ev else f"\"{ev.get('text', '')}\"")
            where = f"{h['source']}/{h['table']}" if h.get("table") else h["source"]
            lines.append(
                f"| {_cell(where)} | {_cell(h['row_id'])} | {_cell(h['field'])} | {h['action']} | {h['method']} | "
                f"{_cell(h['test_set'])} ({_cell(h['subset'])}) | {_cell(h['split'])} | {_cell(h['test_item_id'])}:{_cell(h['test_field'])} | {_cell(evidence[:160])} |"
            )
        if len(hits) > _MD_HIT_LIMIT:
            lines += ["", f"... {len(hits) - _MD_HIT_LIMIT} more in decontamination.json."]
    return "\n".join(lines) + "\n"
