"""Export a build to the column conventions other trainers already read.

``sentence-transformers``: Parquet with ``anchor``, ``positive``, ``negative_1..n`` - the
instruction is prefixed to the anchor (and to documents where the row's task says so), so
``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` consume it unchanged. A
dataset has one column set, and rows carry different numbers of negatives (7 dense-mined for
retrieval, 1 label-sampled for classification...), so by default every row goes to the split
``negatives_<n>`` (a folder, and a dataset config) of its negative count n: every mined
negative stays reachable, and the ``DatasetDict`` of those datasets is what the trainer's
multi-dataset training takes. With ``num_negatives=N`` there is one dataset, ``train``: rows
with >= N negatives, cut to their first (hardest) N; the rows left out are counted per source.

``jsonl``: the rows as they are, one JSON object per line.

The export folder is a Hub dataset repo: its ``README.md`` names the datasets (``configs:``),
so ``datasets.load_dataset(DIR, "negatives_7", split="train")`` loads one (``load_snippet``
builds the ``DatasetDict``); ``nvdata-export.json`` records what
was exported and marks the folder as an export (a later export may replace it).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nvdata.errors import NvdataError
from nvdata.fsutil import check_output_dir, staged_dir
from nvdata.schema import ROW, instructed_query
from nvdata.stages.io import parquet_file

FORMATS = ("sentence-transformers", "jsonl")
MARKER = "nvdata-export.json"
BATCH_ROWS = 8192


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


def _st_table(rows: list[dict], n: int) -> pa.Table:
    """anchor, positive, negative_1..n (the first n negatives of each row)."""
    cols: dict[str, list[str]] = {"anchor": [], "positive": []}
    cols.update({f"negative_{i + 1}": [] for i in range(n)})
    for r in rows:
        di = r["document_instruction"]
        cols["anchor"].append(instructed_query(r["instruction"], r["query"]))
        cols["positive"].append(_document(r["positive"], di))
        for i in range(n):
            cols[f"negative_{i + 1}"].append(_document(r["negatives"][i], di))
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def split_name(n: int) -> str:
    return f"negatives_{n}"


def load_snippet(to: Path, splits: list[str]) -> str:
    """Python that loads the export as a ``DatasetDict`` for SentenceTransformerTrainer."""
    return (
        "from datasets import DatasetDict, load_dataset\n"
        f"ds = DatasetDict({{name: load_dataset({str(to)!r}, name, split='train')\n"
        f"                  for name in {splits!r}}})\n"
        "# SentenceTransformerTrainer(model=model, train_dataset=ds,\n"
        "#     loss=MultipleNegativesRankingLoss(model))  # multi-dataset training\n"
    )


def _readme(splits: dict[str, int], snippet: str) -> str:
    configs = "".join(f"  - config_name: {s}\n    data_files:\n      - split: train\n        path: {s}/*.parquet\n"
                      for s in splits)
    table = "".join(f"| {s} | {n} |\n" for s, n in splits.items())
    return (
        "---\nconfigs:\n" + configs + "---\n\n"
        "# nvdata export (sentence-transformers)\n\n"
        "One dataset (config) per number of negatives: `anchor, positive, negative_1..n`.\n\n"
        "| config | rows |\n|---|---|\n" + table + "\n```python\n" + snippet + "```\n"
    )


def _batches(shard: Path):
    for batch in parquet_file(shard).iter_batches(batch_size=BATCH_ROWS):
        yield pa.Table.from_batches([batch]).cast(ROW)


def _write_jsonl(shard: Path, dest: Path) -> tuple[int, int]:
    """The shard's rows as JSON lines; returns (rows, negatives)."""
    rows = negatives = 0
    with open(dest, "w", encoding="utf-8") as f:
        for t in _batches(shard):
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in t.to_pylist())
            rows += t.num_rows
            negatives += pc.sum(pc.list_value_length(t.column("negatives"))).as_py() or 0
    return rows, negatives


class _SplitWriters:
    """One ParquetWriter per split, opened on its first rows."""

    def __init__(self, root: Path) -> None:
        self.root, self.writers, self.rows = root, {}, Counter()

    def write(self, split: str, table: pa.Table) -> None:
        if split not in self.writers:
            (self.root / split).mkdir()
            self.writers[split] = pq.ParquetWriter(self.root / split / "part-00000.parquet", table.schema,
                                                   compression="zstd")
        self.writers[split].write_table(table)
        self.rows[split] += table.num_rows

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def export_build(build: Path, to: Path, *, fmt: str = "sentence-transformers",
                 num_negatives: int | None = None, overwrite: bool = False) -> dict:
    """Write the export of the build folder ``build`` into ``to`` (atomically).

    ``to`` may be new, empty or an earlier export (``overwrite``: any folder but the build
    itself); checked before anything is read. Returns {format, rows, splits: {name: rows},
    num_negatives, negatives, left_out: {source: rows}, negatives_cut, snippet}. Raises
    ``NvdataError`` for a bad format, a negative ``num_negatives``, an unfinished build, or an
    export with no rows (every row has fewer than ``num_negatives`` negatives).
    """
    if fmt not in FORMATS:
        raise NvdataError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if num_negatives is not None and num_negatives < 0:
        raise NvdataError(f"--num-negatives must be >= 0, got {num_negatives}")
    if num_negatives is not None and fmt != "sentence-transformers":
        raise NvdataError("--num-negatives applies to --format sentence-transformers only")
    build, to = Path(build), Path(to)
    shards = _shards(build)
    check_output_dir(to, "export", overwrite=overwrite, inputs=(build,))
    rows = negatives = cut = 0
    left_out: Counter = Counter()
    with staged_dir(to) as tmp:
        writers = _SplitWriters(tmp)
        try:
            for i, s in enumerate(shards):  # one record batch at a time: memory bounded by BATCH_ROWS
                if fmt == "jsonl":
                    r, n = _write_jsonl(s, tmp / f"part-{i:05d}.jsonl")
                    rows, negatives = rows + r, negatives + n
                    continue
                for t in _batches(s):
                    by_count: dict[int, list[dict]] = {}
                    for r in t.to_pylist():
                        k = len(r["negatives"])
                        if num_negatives is None:
                            by_count.setdefault(k, []).append(r)
                        elif k >= num_negatives:
                            by_count.setdefault(num_negatives, []).append(r)
                            cut += k - num_negatives
                        else:
                            left_out[r["source"]] += 1
                    for n, group in sorted(by_count.items()):
                        split = split_name(n) if num_negatives is None else "train"
                        writers.write(split, _st_table(group, n))
                        rows += len(group)
                        negatives += n * len(group)
        finally:
            writers.close()
        if rows == 0:
            raise NvdataError(
                f"export of {build}: no row has {num_negatives} negatives or more (left out per source: "
                f"{dict(sorted(left_out.items()))}); choose a smaller --num-negatives"
                if num_negatives is not None else f"export of {build}: the build has no rows")
        splits = dict(sorted(writers.rows.items(), key=lambda kv: (len(kv[0]), kv[0])))
        snippet = load_snippet(to, list(splits)) if fmt == "sentence-transformers" else (
            "from datasets import load_dataset\n"
            f"ds = load_dataset('json', data_files={str(to / '*.jsonl')!r}, split='train')\n")
        if fmt == "sentence-transformers":
            (tmp / "README.md").write_text(_readme(splits, snippet), encoding="utf-8")
        result = {
            "format": fmt, "build": str(build), "rows": rows, "splits": splits,
            "num_negatives": num_negatives, "negatives": negatives,
            "left_out": dict(sorted(left_out.items())), "negatives_cut": cut, "snippet": snippet,
        }
        (tmp / MARKER).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
