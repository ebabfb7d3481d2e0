"""Emit: mined rows -> shuffled, sharded Parquet + manifest + data card, written atomically.

The output folder is the contract other trainers rely on::

    OUT/shards/part-00000.parquet ...   schema.ROW, zstd, row groups sized for streaming
    OUT/reports/decontamination.{json,md}, mining.json   what was dropped and mined, and why
    OUT/reports/report.html, figures/*.png               the same at a glance, with figures
    OUT/README.md                       data card (huggingface_hub DatasetCard; nvdata.card)
    OUT/manifest.json                   written last: recipe, hashes, versions, shard checksums,
                                        per-source named counts (nvdata.counts)

Everything is written under a temp sibling and renamed into place, so a failed build never
leaves a half-written OUT and an earlier good build survives until the new one is complete.
The shuffle is a two-pass external shuffle (rows scattered to shard buckets by a seeded RNG,
then each bucket permuted), so memory is bounded by one shard, not the dataset.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import counts
from nvdata.errors import NvdataError
from nvdata.fsutil import sha256_file, staged_dir
from nvdata.schema import ROW
from nvdata.stages.io import parquet_file, take_chunked

SHARD_PATTERN = "part-{:05d}.parquet"


def _row_tables(files: Iterable[Path], in_batch_negatives: bool, batch_rows: int = 10_000):
    """Stream every row file as ROW-schema tables of exactly ``batch_rows`` rows per file (the
    last of each file shorter), stamping the recipe's in-batch flag. The cut depends only on
    the rows, never on the files' row groups, so the seeded scatter below does not either."""
    from nvdata.stages.io import exact_batches

    for f in files:
        pf = parquet_file(f)
        for t in exact_batches(pf.iter_batches(batch_size=batch_rows, columns=ROW.names), batch_rows):
            t = t.select(ROW.names)
            t = t.set_column(t.schema.get_field_index("in_batch_negatives"), "in_batch_negatives",
                             pa.array(np.full(t.num_rows, in_batch_negatives), pa.bool_()))
            yield t.cast(ROW)


def _as_read_back(schema: pa.Schema) -> pa.Schema:
    """``schema`` as Parquet gives it back (list children named ``element``): the shards
    record this form, as they always have."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    return pq.read_schema(pa.BufferReader(sink.getvalue()))


def write_shards(
    row_files: list[Path],
    shard_dir: Path,
    *,
    seed: int,
    shard_rows: int,
    row_group_rows: int,
    in_batch_negatives: bool,
) -> list[dict]:
    """Shuffle rows across sources (seeded) into shards; return [{file, rows, sha256}].

    Pass 1 scatters rows to one bucket per shard (seeded draws per 10,000-row batch); pass 2
    permutes each bucket (seeded) and writes it one row group at a time. Buckets are
    uncompressed Arrow IPC files read back memory-mapped, so memory holds a batch or a row
    group, not a shard.
    """
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in row_files)
    if total == 0:
        raise NvdataError("nothing to write: every source ended with zero rows")
    n_shards = max(1, -(-total // shard_rows))
    rng = np.random.default_rng(seed)
    shard_dir.mkdir(parents=True, exist_ok=True)
    bucket_dir = Path(tempfile.mkdtemp(prefix=".buckets-", dir=shard_dir.parent))
    try:
        sinks = [pa.OSFile(str(bucket_dir / f"b{i}.arrow"), "wb") for i in range(n_shards)]
        writers = [pa.ipc.new_file(s, ROW) for s in sinks]
        try:
            for t in _row_tables(row_files, in_batch_negatives):
                buckets = rng.integers(0, n_shards, size=t.num_rows)
                for i in np.unique(buckets):
                    writers[i].write_table(t.filter(pa.array(buckets == i)))
        finally:
            for w, s in zip(writers, sinks):
                w.close()
                s.close()
        shard_schema = _as_read_back(ROW)
        out = []
        for i in range(n_shards):
            with pa.memory_map(str(bucket_dir / f"b{i}.arrow")) as source:
                reader = pa.ipc.open_file(source)
                bucket = [reader.get_batch(k) for k in range(reader.num_record_batches)]
                perm = rng.permutation(sum(b.num_rows for b in bucket))
                name = SHARD_PATTERN.format(i)
                path = shard_dir / name
                with pq.ParquetWriter(path, shard_schema, compression="zstd", write_statistics=True) as w:
                    for start in range(0, max(len(perm), 1), row_group_rows):
                        # chunk by chunk: Table.take would copy the whole bucket in each time
                        piece = take_chunked(bucket, perm[start : start + row_group_rows]) if bucket else ROW.empty_table()
                        w.write_table(piece.cast(shard_schema), row_group_size=row_group_rows)
                del bucket, reader
            out.append({"file": f"shards/{name}", "rows": len(perm), "sha256": sha256_file(path)})
        return out
    finally:
        shutil.rmtree(bucket_dir, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


@contextmanager
def atomic_output(out: Path):
    """Yield a temp folder; on success (manifest present) it replaces ``out`` in one rename."""
    with staged_dir(Path(out)) as tmp:
        yield tmp
        if not (tmp / "manifest.json").is_file():
            raise NvdataError("internal: build finished without a manifest; output not published")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("nvdata", "pyarrow", "datasets", "polars", "numpy", "torch", "sentence-transformers",
                "transformers", "faiss-cpu", "rank-bm25", "bm25s", "mteb", "datasketch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# -- manifest, reports, data card ---------------------------------------------------------------


def build_manifest(recipe, *, results, mine_reports: dict, shards: list[dict], skipped: dict,
                   encoder: str | None, dense_mined: bool, mirror, sample: bool, limit,
                   negatives_per_row: dict[str, dict]) -> dict:
    """``manifest.json``'s content (its ``decontamination`` summary is added by
    :func:`write_reports`). Per source: task type, weight, max_rows, the format report and the
    named counts of :func:`nvdata.counts.source_counts`, the numbers every other output shows.

    ``results``: the build's ``SourceResult``s; ``encoder``: the dense miner as given (None:
    the bundled default, recorded by its Hub id); ``dense_mined``: whether any source used it;
    ``negatives_per_row``: ``{source: {n_negatives: rows}}``.
    """
    from nvdata.card import encoder_name

    specs = {s.name: s for s in recipe.sources}
    sources = {}
    for r in results:
        fmt = r.details.get("format_report")
        sources[r.name] = {
            "task_type": r.task_type,
            **counts.source_counts(r.name, decontamination=r.details["decontam_counts"], format_report=fmt,
                                   mine_report=mine_reports.get(r.name), rows=r.rows,
                                   negatives_per_row=r.mean_negatives),
            "negatives_histogram": negatives_per_row.get(r.name, {}),
            "weight": specs[r.name].weight, "max_rows": specs[r.name].max_rows,
            "format": fmt,
        }
    return {
        "nvdata_manifest_version": 2,  # 2: per-source named counts (nvdata.counts)
        "recipe": recipe.to_dict(),
        "recipe_path": recipe.path,
        "config_hash": recipe.config_hash(),
        "seed": recipe.seed,
        "encoder": (encoder if encoder is not None else encoder_name(None)) if dense_mined else None,
        "mirror": str(mirror) if mirror else None,
        "sample": sample,  # audit re-checks against the bundled sample wherever it is installed
        "limit": limit,
        "versions": library_versions(),
        "total_rows": sum(s["rows"] for s in shards),
        "shards": shards,
        "sources": sources,
        "totals": counts.totals(sources),
        "skipped_sources": skipped,
        "reports": {"html": "reports/report.html", "decontamination": "reports/decontamination.md",
                    "mining": "reports/mining.json", "data_card": "README.md"},
    }


def write_reports(reports_dir: Path, manifest: dict, *, hits: list[dict], mine_reports: dict, index,
                  decontam_counts: dict, negatives_per_row: dict) -> dict:
    """``reports/``: decontamination.{json,md}, mining.json, figures/*.png and report.html.
    Returns the decontamination summary for the manifest."""
    from nvdata import decontam
    from nvdata.report_html import write_html_report

    recipe = manifest["recipe"]
    cfg = decontam.DecontamConfig.from_dict(recipe.get("decontamination"), "recipe.decontamination")
    summary = decontam.write_report(hits, decontam_counts, reports_dir, index=index, cfg=cfg)
    write_json(reports_dir / "mining.json", mine_reports)
    doc = json.loads((reports_dir / "decontamination.json").read_text(encoding="utf-8"))
    write_html_report(reports_dir, {**manifest, "decontamination": summary}, mine_reports, doc, negatives_per_row)
    return summary


def write_data_card(path: Path, manifest: dict, registry: dict, instructions: dict[str, str]) -> Path:
    """``OUT/README.md`` (see :mod:`nvdata.card`)."""
    from nvdata.card import write_data_card as write

    return write(path, manifest, registry, instructions)
