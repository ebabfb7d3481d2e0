"""Format stage: raw (decontaminated) rows -> ``schema.FORMATTED`` rows with instructions.

Retrieval and STS are per-batch maps (:class:`nvdata.instruct.StreamingFormatter`: nothing is
drawn at random, duplicates are tracked across batches in a compact key set). Classification
and clustering are per-source reductions: their label / example negatives are drawn from the
whole source's label pools (:func:`nvdata.instruct.format_source`). A recipe's ``max_rows``
then keeps a seeded sample of the formatted rows, in their order (:func:`cap_rows`).

Output: ``rows.parquet`` and ``report.json`` in the stage folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq  # noqa: F401

from nvdata import emit
from nvdata.instruct import FormatConfig, StreamingFormatter, format_labelled
from nvdata.registry import SourceEntry
from nvdata.schema import FORMATTED
from nvdata.stages.io import iter_batches, write_batches


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
    """Format one source's decontaminated raw table into ``out/rows.parquet``; returns the report."""
    out = Path(out)
    uncapped = out / "uncapped.parquet"
    if entry.task_type in ("retrieval", "sts"):
        fmt = StreamingFormatter(entry, cfg)
        n = write_batches(uncapped, FORMATTED,
                          (fmt.feed(b) for b in iter_batches(clean_raw, batch_rows=batch_rows)))
        report = fmt.report
    else:  # a per-source reduction: the label pools need the whole source (as Arrow arrays)
        report = {}
        n = write_batches(uncapped, FORMATTED, format_labelled(entry, pq.read_table(clean_raw), cfg, seed, report,
                                                               batch_rows=batch_rows))
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
