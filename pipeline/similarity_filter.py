"""Stage glue for two of the paper's v2 options (arXiv 2405.17428 v3, section 4.2).

* :func:`similarity_filter`: the recipe's ``test_similarity_filter``, run on a source's
  decontaminated table before formatting: rows whose BM25 similarity to a text of the named
  MTEB test set is above the threshold go (:func:`nvdata.mine.bm25.filter_by_test_similarity`),
  each listed with its score in ``report.json`` (the build copies it to
  ``reports/test_similarity.json``).
* :func:`mine_sts_dense`: ``mining.sts.method: dense``, the mine stage of an STS source
  (:func:`nvdata.mine.bm25.mine_sts_dense_negatives`).

Both write into a stage folder the executor gives them (:func:`nvdata.engine.stage_folder`), as
the functions of :mod:`nvdata.stages` do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from nvdata import emit
from nvdata.engine import key_of, stage_folder
from nvdata.registry import SourceEntry

# the canonical field scored against the test texts, per task type
_FIELD = {"classification": "text", "clustering": "text", "sts": "sentence1", "retrieval": "query"}


def similarity_filter(entry: SourceEntry, recipe, clean_dir: Path, dkey: str, cache: Path,
                      mirror: Path | None) -> tuple[Path, str]:
    """The cached filter stage of one source: (folder with the same file names, key)."""
    from nvdata.decontam import DecontamConfig
    from nvdata.decontam.testsets import iter_test_texts, resolve_test_sets
    from nvdata.mine.bm25 import filter_by_test_similarity

    f = recipe.test_similarity
    task = f.active_sources()[entry.name]
    key = key_of(dkey, f.to_dict(), recipe.bm25.to_dict(), str(mirror))
    with stage_folder(cache, "similarity", entry.name, key) as (final, tmp):
        if tmp is not None:
            specs = resolve_test_sets(DecontamConfig(benchmarks=(), add_tasks=(task,)))
            texts = [(f"{t.task}/{t.split}/{t.item_id}", t.text) for s in specs for t in iter_test_texts(s, mirror)]
            name = "pairs.parquet" if entry.task_type == "retrieval" else "data.parquet"
            table = pq.read_table(clean_dir / name)
            kept, dropped = filter_by_test_similarity(table, _FIELD[entry.task_type], texts, f.threshold, recipe.bm25)
            for other in Path(clean_dir).iterdir():  # corpus, hits: unchanged
                if other.name not in (name, "done.json", "counts.json") and other.is_file():
                    shutil.copy(other, tmp / other.name)
            import json  # the filter's drops count as decontamination drops (listed in its report)

            counts = json.loads((Path(clean_dir) / "counts.json").read_text())
            main = "pairs" if entry.task_type == "retrieval" else entry.task_type
            counts[main]["dropped"] += len(dropped)
            counts[main]["kept"] -= len(dropped)
            emit.write_json(tmp / "counts.json", counts)
            pq.write_table(kept, tmp / name, compression="zstd")
            emit.write_json(tmp / "report.json", {
                "test_set": task, "threshold": f.threshold, "test_texts": len(texts), "field": _FIELD[entry.task_type],
                "rows_checked": table.num_rows, "rows_dropped": len(dropped), "dropped": dropped})
    return final, key


def mine_sts_dense(rows_file: Path, pools: dict[str, Path], *, recipe, encoder, cache_dir: Path, out: Path) -> dict:
    """Dense positive-aware STS negatives for one source: ``out/rows.parquet`` + report."""
    from nvdata.mine.bm25 import mine_sts_dense_negatives

    rows = pq.read_table(rows_file)
    pool_tables = {name: pq.read_table(p) for name, p in pools.items()}
    mined, report = mine_sts_dense_negatives(rows, pool_tables, recipe.bm25, recipe.dense, encoder=encoder.setup(),
                                             device=encoder.device, cache_dir=Path(cache_dir), seed=recipe.seed)
    pq.write_table(mined, Path(out) / "rows.parquet", compression="zstd")
    emit.write_json(Path(out) / "report.json", report)
    return report
