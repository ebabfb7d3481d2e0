"""The decontamination report: ``decontamination.json`` (everything) and ``.md`` (for people).

Per source, the named counts of :mod:`nvdata.counts` (raw rows and corpus documents checked,
texts checked, raw rows and corpus documents dropped: the same numbers the build summary, the
manifest and the data card show), negatives removed, and the rows each method and each test
set matched; per test set, the texts indexed and the rows each method matched. Then every
dropped training row with its text beside the test text it matched, grouped by test set:
source, row, field, split, test item, methods and their evidence (the shared n-gram, the
Jaccard). In the ``.md`` both texts are clipped at :data:`MD_TEXT_CHARS` characters (marked
``…``); the ``.json`` keeps them whole, one record per hit.

A row matched by several methods counts once under each: the methods are reported apart.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from nvdata import counts as named

REPORT_NAME = "decontamination"
MD_TEXT_CHARS = 300  # texts in the .md are clipped here; the .json has them whole
_METHODS = ("exact", "ngram", "near_dup", "shared_corpus")  # shared_corpus: nvdata.shared_corpus (by id)


def _source_counts(c: dict, dropped_rows_from_hits: int) -> dict:
    """The named decontamination counts of one source, from the stage's per-table counts
    ({table: {checked, kept, dropped, texts}}) or from ``DecontamCounts``
    ({rows_checked, texts_checked}, where only the hits say what was dropped)."""
    if "rows_checked" in c:
        return {"raw_rows": int(c["rows_checked"]), "corpus_documents": 0,
                "texts_checked": c.get("texts_checked"),
                "dropped_decontamination": dropped_rows_from_hits, "documents_dropped_decontamination": 0}
    return {**named.decontamination_counts(c), "tables": {k: v for k, v in c.items() if isinstance(v, dict)}}


def summarize(hits: list[dict], counts: dict, index_summary: dict | None = None) -> dict:
    """Counts per source and per test set from the hits and the per-source checked counts.

    A row is identified by (source, table, row id): a hit's optional ``table`` key tells a
    source's pairs from its corpus.
    """
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
    dropped_per_source: dict[str, int] = defaultdict(int)
    for src, *_ in dropped_rows:
        dropped_per_source[src] += 1

    def empty() -> dict:
        return {"negatives_removed": 0, "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_by_test_set": {}}

    sources: dict[str, dict] = {}
    for src in sorted(set(counts) | {h["source"] for h in hits}):
        sources[src] = {**_source_counts(counts.get(src, {}), dropped_per_source.get(src, 0)), **empty()}
    tests: dict[str, dict] = {}
    if index_summary:
        for task, t in index_summary["test_sets"].items():
            tests[task] = {"texts_indexed": t["texts"], "splits": t["splits"], "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_matched": 0, "sources": {}}

    for src, *_ in removed:
        sources[src]["negatives_removed"] += 1
    for method, rows in by_method.items():
        for src, *_ in rows:
            sources[src]["rows_matched_by_method"][method] += 1
    # Every listing in key order, never in the order hits arrived (Ray's is not fixed) nor in a
    # set's (string hashes are salted per process).
    for task, rows in sorted(by_test.items()):
        t = tests.setdefault(task, {"texts_indexed": None, "splits": [], "rows_matched_by_method": dict.fromkeys(_METHODS, 0), "rows_matched": 0, "sources": {}})
        t["rows_matched"] = len(rows)
        for src, *_ in rows:
            e = sources[src]["rows_by_test_set"]
            e[task] = e.get(task, 0) + 1
            t["sources"][src] = t["sources"].get(src, 0) + 1
    for (task, method), rows in by_test_method.items():
        tests[task]["rows_matched_by_method"][method] = len(rows)
    for t in tests.values():
        t["sources"] = dict(sorted(t["sources"].items()))
    for src in sources.values():
        src["rows_by_test_set"] = dict(sorted(src["rows_by_test_set"].items()))

    totals = {k: v for k, v in named.totals(sources).items() if k in named.DECONTAMINATION_KEYS}
    totals.update({
        "negatives_removed": len(removed),
        "hits": len(hits),
        "rows_matched_by_method": {m: len(by_method.get(m, ())) for m in _METHODS},
    })
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
    ``{checked, kept, dropped, texts}``; ``index`` (a ``TestIndex``) adds the test sets checked
    against and their sizes; ``cfg`` the options used. The returned summary (the named totals,
    negatives removed, hits, rows per method, report file names) is JSON-ready: the build puts
    it in the manifest.
    """
    counts_d = counts.to_dict() if hasattr(counts, "to_dict") else dict(counts)
    index_summary = index.summary() if index is not None else None
    summary = summarize(hits, counts_d, index_summary)
    t = summary["totals"]
    short = {
        **{k: t[k] for k in named.DECONTAMINATION_KEYS},
        "negatives_removed": t["negatives_removed"], "hits": t["hits"], "by_method": t["rows_matched_by_method"],
        "test_sets": len(index_summary["test_sets"]) if index_summary else None,
        "index_key": index_summary["key"] if index_summary else None,
        "report": {"json": f"{REPORT_NAME}.json", "markdown": f"{REPORT_NAME}.md"},
    }
    doc = {
        "summary": short,
        "config": cfg.to_dict() if cfg is not None else None,
        "index": {k: v for k, v in (index_summary or {}).items() if k != "test_sets"} or None,
        **summary,
        "hits": sorted(hits, key=_hit_order),
    }
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    jpath = reports_dir / f"{REPORT_NAME}.json"
    jpath.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    mpath = reports_dir / f"{REPORT_NAME}.md"
    mpath.write_text(render_markdown(doc), encoding="utf-8")
    return short


def _hit_order(h: dict) -> tuple:
    return (h["test_set"], h["source"], h.get("table") or "", h["row_id"], h["field"], h["method"])


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def clip(text, n: int = MD_TEXT_CHARS) -> str:
    """A text for a Markdown table cell: one line, at most ``n`` characters (``…`` marks a cut)."""
    if text is None:
        return "(not recorded)"
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def evidence_text(method: str, ev: dict) -> str:
    """One method's evidence in words."""
    if method == "near_dup":
        return f"near_dup: Jaccard {ev.get('jaccard')} on {ev.get('shingle_size', '?')}-word shingles"
    if method == "ngram":
        return f"ngram: shared {ev.get('n')}-gram \"{clip(ev.get('ngram'), 120)}\""
    if method == "shared_corpus":  # nvdata.shared_corpus: test content by id, not by text
        return f"shared_corpus: {ev.get('reason')}"
    return "exact: equal after normalization"


def matched_rows(hits: list[dict]) -> dict[str, list[dict]]:
    """Hits merged per (test set, source, table, row, field, test item), grouped by test set:
    one entry per training text and the test text it matched, with every method that matched."""
    groups: dict[tuple, dict] = {}
    for h in sorted(hits, key=_hit_order):
        key = (h["test_set"], h["source"], h.get("table"), h["row_id"], h["field"], h["test_item_id"], h.get("test_field"))
        g = groups.setdefault(key, {
            "test_set": h["test_set"], "subset": h.get("subset"), "split": h.get("split"),
            "source": h["source"], "table": h.get("table"), "row_id": h["row_id"], "field": h["field"],
            "action": h["action"], "test_item_id": h["test_item_id"], "test_field": h.get("test_field"),
            "text": h.get("text"), "test_text": h.get("test_text"), "methods": [], "evidence": [],
        })
        g["methods"].append(h["method"])
        g["evidence"].append(evidence_text(h["method"], h.get("evidence") or {}))
    out: dict[str, list[dict]] = {}
    for g in groups.values():
        out.setdefault(g["test_set"], []).append(g)
    return out


def _per_source_md(doc: dict) -> list[str]:
    sources = doc["sources"]
    keys = list(named.DECONTAMINATION_KEYS)
    header, body = named.table(sources, keys)
    header += ["negatives removed", *_METHODS]
    for row in body:
        if row[0] == "total" and "total" not in sources:
            m = doc["totals"]["rows_matched_by_method"]
            row += [str(doc["totals"]["negatives_removed"]), *(str(m[k]) for k in _METHODS)]
        else:
            s = sources[row[0]]
            row += [str(s["negatives_removed"]), *(str(s["rows_matched_by_method"][k]) for k in _METHODS)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    lines += ["", *(f"- *{named.COLUMN[k].label}*: {named.COLUMN[k].meaning}." for k in keys),
              "- *negatives removed*: negatives taken out of a published row (negative policy drop_negative).",
              f"- *{', '.join(_METHODS)}*: rows (raw rows and corpus documents) each method matched; a row can match several "
              "(shared_corpus: test queries and test-relevant documents of a corpus the test set shares, by id)."]
    return lines


def render_markdown(doc: dict) -> str:
    t = doc["totals"]
    L = named.COLUMN
    checked = f"{t['raw_rows']} {L['raw_rows'].label}, {t['corpus_documents']} {L['corpus_documents'].label}"
    texts = f" ({t['texts_checked']} texts)" if t.get("texts_checked") is not None else ""
    lines = [
        "# Decontamination report",
        "",
        f"Checked {checked}{texts} against the MTEB test sets; dropped {t['dropped_decontamination']} raw rows "
        f"and {t['documents_dropped_decontamination']} corpus documents, removed {t['negatives_removed']} "
        f"negatives ({t['hits']} hits).",
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
    lines += ["## Per source", "", *_per_source_md(doc)]
    lines += ["", "## Per test set", "", "| test set | texts indexed | rows matched | exact | ngram | near_dup | sources |", "|---|---:|---:|---:|---:|---:|---|"]
    quiet = sorted(task for task, s in doc["test_sets"].items() if not s["rows_matched"])
    for task, s in sorted(doc["test_sets"].items()):
        if not s["rows_matched"]:
            continue
        m = s["rows_matched_by_method"]
        srcs = ", ".join(f"{k} {v}" for k, v in sorted(s["sources"].items())) or "-"
        lines.append(f"| {_cell(task)} | {s['texts_indexed']} | {s['rows_matched']} | {m['exact']} | {m['ngram']} | {m['near_dup']} | {_cell(srcs)} |")
    if quiet:
        lines += ["", f"No match in the other {len(quiet)} test sets (texts indexed): "
                  + ", ".join(f"{task} ({doc['test_sets'][task]['texts_indexed']})" for task in quiet) + "."]
    groups = matched_rows(doc["hits"])
    lines += [
        "", f"## Matched training texts beside the test texts ({sum(map(len, groups.values()))} matches, {len(doc['hits'])} hits)", "",
        f"Grouped by test set; one line per training text and test item, with every method that matched it. "
        f"Texts are clipped at {MD_TEXT_CHARS} characters here (`…` marks a cut); `{REPORT_NAME}.json` has them "
        f"whole (`hits`: `text`, `test_text`). *row* is `source/table row id`; *action* drop_row drops the "
        f"training row, drop_negative removes only that negative.",
    ]
    for task in sorted(groups):
        entries = groups[task]
        lines += ["", f"### {task} ({len(entries)})", "",
                  "| row | field | action | split | test item | methods | evidence | training text | test text |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in entries:
            where = f"{g['source']}/{g['table']}" if g.get("table") else g["source"]
            split = f"{g['split']}" + (f" ({g['subset']})" if g.get("subset") not in (None, "default") else "")
            lines.append(
                f"| {_cell(where)} {_cell(g['row_id'])} | {_cell(g['field'])} | {g['action']} | {_cell(split)} | "
                f"{_cell(g['test_item_id'])}:{_cell(g['test_field'])} | {', '.join(g['methods'])} | "
                f"{_cell('; '.join(g['evidence']))} | {_cell(clip(g['text']))} | {_cell(clip(g['test_text']))} |"
            )
    return "\n".join(lines) + "\n"
