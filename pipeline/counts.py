"""The named counts of a build, per source: computed once, shown the same everywhere.

The build summary table (``nvdata build``), ``reports/decontamination.{json,md}``,
``manifest.json`` and the data card all read a source's numbers from :func:`source_counts`
(the decontamination part from :func:`decontamination_counts`), and render them with the
labels in :data:`COLUMNS`, so a number never differs between two places. Like datatrove's
``stat_update`` counters, every stage's report says what it dropped and why; this module only
names and adds up what the stage reports say.

Units, because a source is counted in several:

- **raw rows**: what was downloaded: (query, positive) pairs for retrieval, sentence pairs for
  STS, labelled examples for classification and clustering;
- **corpus documents**: a retrieval source's candidate documents (where hard negatives come from);
- **texts**: single strings checked against the test sets (a pair holds two);
- **rows**: formatted training rows (an STS pair gives two, one per direction), as in the shards.

What happens to them, in build order: raw rows and corpus documents *dropped by
decontamination*; raw rows *dropped at formatting* (blank text, STS score below the minimum, no
label, no positive or negative to draw); rows *merged as duplicates* (same source, and the
same query and positive by the text identity rule: :mod:`nvdata.dedup`); rows *cut by max_rows*; rows *dropped for shortfall* (fewer mined
negatives than requested under ``on_shortfall: drop``). What is left is **rows out**.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Column:
    key: str
    label: str  # table header, the same in the terminal, the reports and the card
    meaning: str  # one line for the legend under a table


COLUMNS: tuple[Column, ...] = (
    Column("raw_rows", "raw rows", "pairs (retrieval, STS) or labelled examples (classification, clustering) downloaded"),
    Column("corpus_documents", "corpus docs", "retrieval candidate documents downloaded"),
    Column("texts_checked", "texts checked", "single texts checked against the MTEB test sets (raw rows and corpus documents)"),
    Column("dropped_decontamination", "decontam. dropped", "raw rows dropped because a text matched a test set"),
    Column("documents_dropped_decontamination", "decontam. docs dropped", "corpus documents dropped because they matched a test set"),
    Column("dropped_format", "format dropped", "raw rows not formatted: blank text, STS score below the minimum, no label, no positive or negative"),
    Column("duplicates_merged", "duplicates merged", "rows merged into an earlier row of the same source with the same normalized query and positive"),
    Column("dropped_max_rows", "max_rows cut", "rows left out by the recipe's seeded max_rows sample"),
    Column("dropped_shortfall", "shortfall dropped", "rows dropped with fewer negatives than requested (on_shortfall: drop)"),
    Column("rows", "rows out", "training rows in the shards"),
    Column("negatives_per_row", "negatives/row", "mean hard negatives per row out"),
)
COLUMN = {c.key: c for c in COLUMNS}
DECONTAMINATION_KEYS = ("raw_rows", "corpus_documents", "texts_checked",
                        "dropped_decontamination", "documents_dropped_decontamination")
# The decontamination stage's per-table counts name the raw table by task type; a retrieval
# source has two (its pairs and its corpus).
_CORPUS_TABLE = "corpus"


def decontamination_counts(table_counts: Mapping) -> dict:
    """What decontamination checked and dropped for one source (keys :data:`DECONTAMINATION_KEYS`;
    every raw row and corpus document downloaded is checked, so ``raw_rows`` is the download's).

    ``table_counts`` is the stage's ``counts.json``: ``{table: {checked, kept, dropped, texts}}``
    with table ``pairs`` and ``corpus`` (retrieval) or the task type. ``texts_checked`` is None
    when the stage did not record it.
    """
    tables = {k: v for k, v in table_counts.items() if isinstance(v, Mapping)}
    corpus = tables.get(_CORPUS_TABLE, {})
    data = [v for k, v in tables.items() if k != _CORPUS_TABLE]
    texts = [v.get("texts") for v in tables.values()]
    return {
        "raw_rows": sum(int(v.get("checked", 0)) for v in data),
        "corpus_documents": int(corpus.get("checked", 0)),
        "texts_checked": None if not tables or None in texts else sum(int(t) for t in texts),
        "dropped_decontamination": sum(int(v.get("dropped", 0)) for v in data),
        "documents_dropped_decontamination": int(corpus.get("dropped", 0)),
    }


def decontamination_line(table_counts: Mapping) -> str:
    """One progress line: ``dropped 1 of 55 raw rows, 16 of 118 corpus documents``."""
    d = decontamination_counts(table_counts)
    line = f"dropped {d['dropped_decontamination']} of {d['raw_rows']} raw rows"
    if d["corpus_documents"]:
        line += f", {d['documents_dropped_decontamination']} of {d['corpus_documents']} corpus documents"
    return line


def format_counts(format_report: Mapping | None) -> dict:
    """Drops and merges of the format stage (``instruct.format_source``'s report)."""
    rep = format_report or {}
    merged = rep.get("duplicates_merged", rep.get("duplicates", 0))
    return {
        "dropped_format": sum(int(v) for v in (rep.get("dropped") or {}).values()),
        "dropped_format_by_reason": {k: int(v) for k, v in sorted((rep.get("dropped") or {}).items()) if v},
        "duplicates_merged": int(merged or 0),
        "dropped_max_rows": int(rep.get("capped", 0) or 0),
    }


def shortfall_dropped(source: str, mine_report: Mapping | None) -> int:
    """Rows the miner dropped for too few negatives: dense (``shortfall.dropped``) or BM25
    (``sources[source].dropped``); label-sampled sources drop none here."""
    rep = mine_report or {}
    if rep.get("method") == "dense":
        return int((rep.get("shortfall") or {}).get("dropped", 0))
    if rep.get("method") == "bm25":
        return int(((rep.get("sources") or {}).get(source) or {}).get("dropped", 0))
    return 0


def mining_warnings(mine_reports: Mapping[str, Mapping], share: float = 0.5) -> list[str]:
    """One line per mined source where at least ``share`` of the rows written got no negative
    at all, naming the filter that removed the most candidates: a build that exits 0 with
    empty negative lists is almost always a filter setting (or an encoder) that does not suit
    the data, e.g. ``relative_margin`` under an encoder whose scores all sit near the positive's.
    """
    out = []
    for name, rep in mine_reports.items():
        rows = rep.get("rows_out") or 0
        none = (rep.get("shortfall") or {}).get("without_negatives", 0)
        if not rows or none < share * rows:
            continue
        removed = {k: v for k, v in (rep.get("removed") or {}).items() if v}
        why = ""
        if removed:
            worst = max(removed, key=removed.get)
            retrieved = (rep.get("candidates") or {}).get("retrieved")
            why = f"; {worst} removed the most candidates ({removed[worst]:,}" + (
                f" of {retrieved:,} retrieved)" if retrieved else ")")
        out.append(f"{name}: {none:,} of {rows:,} rows got no negatives{why} (reports/mining.json)")
    return out


def source_counts(
    source: str,
    *,
    decontamination: Mapping,
    format_report: Mapping | None,
    mine_report: Mapping | None,
    rows: int,
    negatives_per_row: float,
) -> dict:
    """Every named count of one built source (keys of :data:`COLUMNS`, plus
    ``dropped_format_by_reason``), from the stage reports: the decontamination stage's
    ``counts.json``, the format report, the mining report and the rows written."""
    dec = decontamination_counts(decontamination)
    return {
        **dec,
        **format_counts(format_report),
        "dropped_shortfall": shortfall_dropped(source, mine_report),
        "rows": int(rows),
        "negatives_per_row": round(float(negatives_per_row), 4),
    }


def totals(per_source: Mapping[str, Mapping]) -> dict:
    """Column sums over sources (``negatives_per_row``: weighted by rows out; a column is None
    when any source lacks it)."""
    out: dict = {}
    for c in COLUMNS:
        if c.key == "negatives_per_row":
            continue
        values = [s.get(c.key) for s in per_source.values()]
        out[c.key] = None if None in values else sum(int(v) for v in values)
    rows = sum(int(s.get("rows", 0)) for s in per_source.values())
    negs = sum(float(s.get("negatives_per_row", 0)) * int(s.get("rows", 0)) for s in per_source.values())
    out["negatives_per_row"] = round(negs / rows, 4) if rows else 0.0
    return out


def cell(key: str, value) -> str:
    """A count as the tables show it: integers plain, negatives/row with two decimals, '-' unknown."""
    if value is None:
        return "-"
    if key == "negatives_per_row":
        return f"{float(value):.2f}"
    return str(int(value))


def table(per_source: Mapping[str, Mapping], keys: Iterable[str] | None = None,
          *, total: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the per-source table: ``source``, then ``keys`` (default: every
    column) in :data:`COLUMNS` order, then a ``total`` row. Terminal and Markdown render this."""
    keys = [c.key for c in COLUMNS] if keys is None else list(keys)
    header = ["source"] + [COLUMN[k].label for k in keys]
    body = [[name] + [cell(k, s.get(k)) for k in keys] for name, s in per_source.items()]
    if total and per_source:
        t = totals(per_source)
        body.append(["total"] + [cell(k, t.get(k)) for k in keys])
    return header, body


def markdown_table(per_source: Mapping[str, Mapping], keys: Iterable[str] | None = None,
                   *, total: bool = True, legend: bool = True) -> str:
    """The per-source table as Markdown (numbers right-aligned), with the column legend."""
    keys = [c.key for c in COLUMNS] if keys is None else list(keys)
    header, body = table(per_source, keys, total=total)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    if legend:
        lines += [""] + [f"- *{COLUMN[k].label}*: {COLUMN[k].meaning}." for k in keys]
    return "\n".join(lines)


@dataclass
class NegativesPerRow:
    """How many rows carry 0, 1, 2 ... negatives: ``add`` each batch's ``negatives`` column,
    ``to_dict`` gives ``{"7": rows, ...}`` (the manifest's ``negatives_histogram``)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, negatives: pa.Array | pa.ChunkedArray) -> None:
        lengths = pc.fill_null(pc.list_value_length(negatives), 0).to_numpy(zero_copy_only=False)
        found = np.bincount(np.asarray(lengths, dtype=np.int64), minlength=len(self.counts))
        found[: len(self.counts)] += self.counts
        self.counts = found

    def to_dict(self) -> dict[str, int]:
        return {str(n): int(c) for n, c in enumerate(self.counts) if c}


def negatives_per_row_of(rows_file, batch_rows: int = 65_536) -> dict[str, int]:
    """:class:`NegativesPerRow` of a rows Parquet file, streamed (for an executor whose stage
    results do not carry it)."""
    from nvdata.stages.io import parquet_file

    h = NegativesPerRow()
    for b in parquet_file(rows_file).iter_batches(batch_size=batch_rows, columns=["negatives"]):
        h.add(b.column(0))
    return h.to_dict()
