"""Export a build to the column conventions other trainers already read.

``sentence-transformers``: Parquet with ``anchor``, ``positive``, ``negative_1..n`` - the
instruction is prefixed to the anchor (and to documents where the row's task says so), so
``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` consume it unchanged.
``jsonl``: the rows as they are, one JSON object per line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nvdata.errors import NvdataError
from nvdata.fsutil import staged_dir
from nvdata.schema import ROW, instructed_query

FORMATS = ("sentence-transformers", "jsonl")


def _shards(build: Path) -> list[Path]:
    manifest = build / "manifest.json"
    if not manifest.is_file():
        raise NvdataError(f"{build} is not a finished nvdata build (no manifest.json)")
    files = [build / s["file"] for s in json.loads(manifest.read_text())["shards"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise NvdataError(f"{build}: shard(s) listed in the manifest are missing: {missing}")
    return files


def _document(text: str, doc_instruction: str | None) -> str:
    return instructed_query(doc_instruction, text) if doc_instruction else text


def _st_table(t: pa.Table, n: int) -> pa.Table:
    rows = t.to_pylist()
    cols: dict[str, list[str]] = {"anchor": [], "positive": []}
    for i in range(n):
        cols[f"negative_{i + 1}"] = []
    for r in rows:
        di = r["document_instruction"]
        cols["anchor"].append(instructed_query(r["instruction"], r["query"]))
        cols["positive"].append(_document(r["positive"], di))
        for i in range(n):
            cols[f"negative_{i + 1}"].append(_document(r["negatives"][i], di))
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def export_build(build: Path, to: Path, *, fmt: str = "sentence-transformers",
                 num_negatives: int | None = None) -> dict:
    """Write the export into ``to`` (atomically); returns {rows, dropped, num_negatives}."""
    if fmt not in FORMATS:
        raise NvdataError(f"--format must be one of {FORMATS}, got {fmt!r}")
    build, to = Path(build), Path(to)
    shards = _shards(build)
    if fmt == "sentence-transformers" and num_negatives is None:
        # the most negatives every row has: sentence-transformers needs a fixed column set
        num_negatives = min(
            pc.min(pc.list_value_length(pq.read_table(s, columns=["negatives"]).column("negatives"))).as_py() or 0
            for s in shards
        )
    if num_negatives is not None and num_negatives < 0:
        raise NvdataError(f"--num-negatives must be >= 0, got {num_negatives}")
    rows = dropped = 0
    with staged_dir(to) as tmp:
        for i, s in enumerate(shards):
            t = pq.read_table(s).cast(ROW)
            if fmt == "jsonl":
                with open(tmp / f"part-{i:05d}.jsonl", "w", encoding="utf-8") as f:
                    for r in t.to_pylist():
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
                rows += t.num_rows
                continue
            enough = pc.greater_equal(pc.list_value_length(t.column("negatives")), num_negatives)
            kept = t.filter(enough)
            dropped += t.num_rows - kept.num_rows
            rows += kept.num_rows
            pq.write_table(_st_table(kept, num_negatives), tmp / f"part-{i:05d}.parquet", compression="zstd")
    return {"rows": rows, "dropped": dropped, "num_negatives": num_negatives, "format": fmt}
