"""Format stage: raw (decontaminated) rows -> ``schema.FORMATTED`` rows with instructions.

Retrieval and STS are a per-batch map and an ordered reduction. The map
(:class:`nvdata.instruct.BatchFormatter`: column checks, instructions, ids and each row's
identity key, the costly part) depends on nothing but its batch; the reduction
(:class:`nvdata.instruct.FirstRows`) keeps the first row of each identity in source order and
counts the rest as ``duplicates_merged``. :func:`format_rows` runs both in one process, batch by
batch; a distributed executor runs the map over parts of the table anywhere, each part written
as ``unmerged-<part>.parquet`` (``schema.FORMATTED_KEYED``: the rows plus their keys, so the
reduction recomputes nothing), then :func:`merge_parts` reads the parts in part order. Either
way the rows, their batches and the report are the same.

Classification and clustering are per-source reductions: their label / example negatives are
drawn from the whole source's label pools (:func:`nvdata.instruct.format_labelled`).

A recipe's ``max_rows`` then keeps a seeded sample of the formatted rows, in their order
(:func:`capped_rows`). Output: ``rows.parquet`` and ``report.json`` in the stage folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import emit
from nvdata.instruct import (
    BatchFormatter,
    FirstRows,
    FormatConfig,
    FormatCounts,
    format_labelled,
    streamed_report,
)
from nvdata.registry import SourceEntry
from nvdata.schema import FORMATTED
from nvdata.stages.io import iter_batches, parquet_file, write_batches

STREAMED = ("retrieval", "sts")  # task types formatted as a per-batch map + ordered reduction
UNMERGED = "unmerged"  # the map's part files: UNMERGED-<part:05d>.parquet, schema.FORMATTED_KEYED


def capped_rows(num_rows: int, max_rows: int | None, seed: int, source: str) -> np.ndarray | None:
    """Row positions of the seeded ``max_rows`` sample (sorted), or None to keep every row."""
    if max_rows is None or num_rows <= max_rows:
        return None
    rng = np.random.default_rng([seed, int(hashlib.sha256(source.encode()).hexdigest()[:8], 16)])
    return np.sort(rng.choice(num_rows, size=max_rows, replace=False))


def _take_sorted(batches, keep: np.ndarray):
    """Stream only the rows at the sorted positions ``keep``."""
    start = 0
    for b in batches:
        lo, hi = np.searchsorted(keep, [start, start + b.num_rows])
        if hi > lo:
            yield b.take(pa.array(keep[lo:hi] - start))
        start += b.num_rows


def format_rows(
    entry: SourceEntry,
    clean_raw: Path,
    *,
    cfg: FormatConfig,
    seed: int,
    max_rows: int | None,
    out: Path,
    batch_rows: int,
) -> dict:
    """Format one source's decontaminated raw table into ``out/rows.parquet`` in this process,
    batch by batch; returns the report (also ``out/report.json``)."""
    out = Path(out)
    uncapped = out / "uncapped.parquet"
    if entry.task_type in STREAMED:
        fmt, first = BatchFormatter(entry, cfg), FirstRows()
        n = write_batches(uncapped, FORMATTED,
                          (first.merge(fmt.format_batch(b)) for b in iter_batches(clean_raw, batch_rows=batch_rows)))
        report = streamed_report(entry, cfg, fmt.counts, first)
    else:  # a per-source reduction: the label pools need the whole source (as Arrow arrays)
        report = {}
        n = write_batches(uncapped, FORMATTED, format_labelled(entry, pq.read_table(clean_raw), cfg, seed, report,
                                                               batch_rows=batch_rows))
    return _publish(entry, out, n, report, seed=seed, max_rows=max_rows, batch_rows=batch_rows)


def _publish(entry: SourceEntry, out: Path, n: int, report: dict, *, seed: int, max_rows: int | None,
             batch_rows: int) -> dict:
    """``out/uncapped.parquet`` (``n`` rows) -> ``out/rows.parquet`` capped to the seeded
    ``max_rows`` sample, then ``out/report.json``."""
    uncapped = out / "uncapped.parquet"
    keep = capped_rows(n, max_rows, seed, entry.name)
    if keep is None:
        uncapped.rename(out / "rows.parquet")
    else:
        write_batches(out / "rows.parquet", FORMATTED,
                      _take_sorted(iter_batches(uncapped, batch_rows=batch_rows), keep))
        uncapped.unlink()
    report = dict(report, capped=n - (len(keep) if keep is not None else n))
    emit.write_json(out / "report.json", report)
    return report


def unmerged_part(out: Path, part: int) -> Path:
    """Part ``part`` of a source's map output in its stage folder ``out``."""
    return Path(out) / f"{UNMERGED}-{part:05d}.parquet"


def _row_groups(parts: Iterable[Path]) -> Iterator[pa.Table]:
    """The parts' row groups in order: one per batch the map formatted (empty batches wrote
    none), so the reduction sees the local engine's batches."""
    for p in parts:
        pf = parquet_file(p)
        for i in range(pf.metadata.num_row_groups):
            yield pf.read_row_group(i)


def merge_parts(
    entry: SourceEntry,
    parts: list[Path],
    part_counts: Iterable[Mapping],
    *,
    cfg: FormatConfig,
    seed: int,
    max_rows: int | None,
    out: Path,
    batch_rows: int,
) -> dict:
    """The ordered reduction of a retrieval / STS source formatted in parts: ``parts`` (the
    map's ``unmerged-*.parquet``, in part order) and each part's ``FormatCounts`` (``asdict``)
    -> ``out/rows.parquet`` and the report, as :func:`format_rows` writes them; the parts are
    deleted. Runs again safely after a crash (a finished run's report is returned as is)."""
    out = Path(out)
    if (out / "report.json").is_file():  # a retried task whose first run finished
        report = json.loads((out / "report.json").read_text())
    else:
        first = FirstRows()
        n = write_batches(out / "uncapped.parquet", FORMATTED, (first.merge(t) for t in _row_groups(parts)))
        report = streamed_report(entry, cfg, FormatCounts.total(entry.task_type, part_counts), first)
        report = _publish(entry, out, n, report, seed=seed, max_rows=max_rows, batch_rows=batch_rows)
    for p in parts:
        Path(p).unlink(missing_ok=True)
    return report
