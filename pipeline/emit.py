"""Emit: mined rows -> shuffled, sharded Parquet + manifest + data card, written atomically.

The output folder is the contract other trainers rely on::

    OUT/shards/part-00000.parquet ...   schema.ROW, zstd, row groups sized for streaming
    OUT/reports/*.json|md               decontamination and mining reports
    OUT/README.md                       data card (Hugging Face dataset-card format)
    OUT/manifest.json                   written last: recipe, hashes, versions, shard checksums

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

from nvdata.errors import NvdataError
from nvdata.fsutil import sha256_file, staged_dir
from nvdata.schema import ROW

SHARD_PATTERN = "part-{:05d}.parquet"


def _row_tables(files: Iterable[Path], in_batch_negatives: bool, batch_rows: int = 10_000):
    """Stream every row file as ROW-schema tables of exactly ``batch_rows`` rows per file (the
    last of each file shorter), stamping the recipe's in-batch flag. The cut depends only on
    the rows, never on the files' row groups, so the seeded scatter below does not either."""
    from nvdata.stages.io import exact_batches

    for f in files:
        pf = pq.ParquetFile(f)
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
                bucket = pa.ipc.open_file(source).read_all()
                perm = rng.permutation(bucket.num_rows)
                name = SHARD_PATTERN.format(i)
                path = shard_dir / name
                with pq.ParquetWriter(path, shard_schema, compression="zstd", write_statistics=True) as w:
                    for start in range(0, max(len(perm), 1), row_group_rows):
                        piece = bucket.take(pa.array(perm[start : start + row_group_rows]))
                        w.write_table(piece.combine_chunks().cast(shard_schema), row_group_size=row_group_rows)
                del bucket
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


# -- data card ----------------------------------------------------------------------------------


def render_data_card(manifest: dict, registry: dict, instructions: dict[str, str]) -> str:
    """The OUT/README.md card: the template in data_cards/ filled from the manifest."""
    from nvdata.paths import data_dir

    template = (data_dir("data_cards") / "card_template.md").read_text(encoding="utf-8")
    sources = manifest["sources"]
    licences = sorted({registry[s].licence for s in sources if s in registry})
    table = ["| source | task type | Hub id | rows | dropped (decontamination) | negatives/row | licence |",
             "|---|---|---|---:|---:|---:|---|"]
    for name, st in sources.items():
        e = registry[name]
        table.append(f"| {name} | {e.task_type} | `{e.hf_id}` | {st.get('rows', 0)} | "
                     f"{st.get('decontam_dropped', 0)} | {st.get('mean_negatives', 0):.2f} | {e.licence} |")
    instr = ["| source | instruction |", "|---|---|"]
    for name in sources:
        instr.append(f"| {name} | {instructions.get(name, '').replace('|', '/')} |")
    cites = "\n".join(f"- **{n}**: {registry[n].citation}" for n in sources)
    skipped = manifest.get("skipped_sources") or {}
    skipped_md = "\n".join(f"- {n}: {why}" for n, why in skipped.items()) or "- none"
    dec = manifest.get("decontamination", {})
    task_types = sorted({registry[s].task_type for s in sources})
    size = manifest["total_rows"]
    size_cat = ("n<1K" if size < 1_000 else "1K<n<10K" if size < 10_000 else "10K<n<100K"
                if size < 100_000 else "100K<n<1M" if size < 1_000_000 else "1M<n<10M"
                if size < 10_000_000 else "n>10M")
    return template.format(
        name=manifest["recipe"]["name"],
        stage=manifest["recipe"]["stage"],
        licences=json.dumps(licences),
        size_category=size_cat,
        task_types=", ".join(task_types),
        total_rows=size,
        n_shards=len(manifest["shards"]),
        config_hash=manifest["config_hash"],
        seed=manifest["seed"],
        in_batch="on" if manifest["recipe"]["in_batch_negatives"] else "off",
        source_table="\n".join(table),
        instruction_table="\n".join(instr),
        citations=cites,
        skipped=skipped_md,
        decontam_checked=dec.get("checked", 0),
        decontam_dropped=dec.get("dropped", 0),
        decontam_methods=", ".join(f"{k}: {v}" for k, v in sorted(dec.get("by_method", {}).items())) or "none",
        version=manifest["versions"].get("nvdata"),
    )
