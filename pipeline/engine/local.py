"""The local executor: every stage in this process, one source after another.

Each stage streams its input in record batches of ``ctx.batch_rows`` rows, so memory does not
grow with a source's size (see :mod:`nvdata.engine` for the stage contract).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from nvdata import counts as named_counts
from nvdata import stages
from nvdata.engine import (
    BuildContext,
    SourceResult,
    StageOutputs,
    bm25_key,
    decontaminate_key,
    dense_key,
    format_key,
    instructions_key,
    stage_folder,
)
from nvdata.errors import NvdataError
from nvdata.sources import RawSource, download_source, obtainable
from nvdata.stages import decontaminate as dstage
from nvdata.stages.io import release_memory
from nvdata.stages import format as fstage
from nvdata.stages import mine as mstage


def min_limit(*limits: int | None) -> int | None:
    given = [x for x in limits if x is not None]
    return min(given) if given else None


def decontaminate(raw: RawSource, recipe, index, cache: Path, batch_rows: int) -> tuple[Path, str]:
    """The cached decontaminate stage of one source: (folder, key)."""
    key = decontaminate_key(raw.path.name, recipe, index.key)
    with stage_folder(cache, "decontaminate", raw.name, key) as (final, tmp):
        if tmp is not None:
            dstage.decontaminate_source(raw, index=index, cfg=recipe.decontamination, out=tmp,
                                        batch_rows=batch_rows)
    return final, key


def run_stages(ctx: BuildContext) -> StageOutputs:
    recipe, registry, cache, say, timer = ctx.recipe, ctx.registry, ctx.cache, ctx.say, ctx.timer
    from nvdata import decontam

    specs = ctx.specs
    results: dict[str, SourceResult] = {}
    skipped: dict[str, str] = {}

    # 1. download
    raws: dict[str, RawSource] = {}
    with timer("download"):
        for done, spec in enumerate(recipe.sources, 1):
            entry = registry[spec.name]
            if not obtainable(entry, ctx.mirror):
                skipped[entry.name] = f"not publicly available: {entry.unavailable_reason}"
                say("download", done, len(recipe.sources), f"{entry.name}: SKIPPED ({skipped[entry.name]})")
                continue
            raw = download_source(entry, cache=cache, mirror=ctx.mirror, limit=min_limit(ctx.limit, spec.limit))
            raws[entry.name] = raw
            release_memory()
            results[entry.name] = SourceResult(entry.name, entry.task_type, raw_rows=raw.rows,
                                               details={"download_cached": raw.cached})
            say("download", done, len(recipe.sources),
                f"{entry.name}: {raw.rows} rows{' (cached)' if raw.cached else ''}")
    if not raws:
        raise NvdataError(f"recipe {recipe.name!r}: no source could be built")

    # 2. decontaminate
    decontam_dirs: dict[str, tuple[Path, str]] = {}
    all_hits: list[dict] = []
    with timer("decontaminate"):
        index = decontam.build_test_index(recipe.decontamination, mirror=ctx.mirror,
                                          cache_dir=cache / "test-index")
        for done, (name, raw) in enumerate(raws.items(), 1):
            d, dkey = decontaminate(raw, recipe, index, cache, ctx.batch_rows)
            release_memory()
            decontam_dirs[name] = (d, dkey)
            all_hits.extend(json.loads((d / "hits.json").read_text()))
            counts = json.loads((d / "counts.json").read_text())
            main_kind = "pairs" if registry[name].task_type == "retrieval" else registry[name].task_type
            results[name].decontam_dropped = counts[main_kind]["dropped"]
            results[name].details["decontam_counts"] = counts
            say("decontaminate", done, len(raws), f"{name}: {named_counts.decontamination_line(counts)}")

    # 3. format
    fmt: dict[str, tuple[Path, str]] = {}
    with timer("format"):
        instr_key = instructions_key()
        for done, name in enumerate(raws, 1):
            d, dkey = decontam_dirs[name]
            key = format_key(dkey, recipe, instr_key, specs[name].max_rows)
            with stage_folder(cache, "format", name, key) as (fdir, tmp):
                if tmp is not None:
                    fstage.format_rows(registry[name], d / raws[name].data_file.name, cfg=recipe.format,
                                       seed=recipe.seed, max_rows=specs[name].max_rows, out=tmp,
                                       batch_rows=ctx.batch_rows)
            release_memory()
            fmt[name] = (fdir, key)
            results[name].details["format_report"] = json.loads((fdir / "report.json").read_text())
            say("format", done, len(raws), f"{name}: {pq.ParquetFile(fdir / 'rows.parquet').metadata.num_rows} rows")

    # 4. mine
    mine_reports: dict[str, dict] = {}
    sts_names = [n for n in raws if registry[n].task_type == "sts"]
    with timer("mine"):
        encoder = None
        for done, name in enumerate(raws, 1):
            entry = registry[name]
            fdir, fkey = fmt[name]
            rows_file = fdir / "rows.parquet"
            if entry.task_type == "retrieval":
                if encoder is None:  # once per build, only when some source needs it
                    encoder = mstage.DenseEncoder(ctx.encoder, ctx.device, recipe.dense)
                key = dense_key(fkey, recipe, encoder.fingerprint)
                with stage_folder(cache, "mine", name, key) as (mdir, tmp):
                    if tmp is not None:
                        mstage.mine_dense(rows_file, decontam_dirs[name][0] / "corpus.parquet", cfg=recipe.dense,
                                          encoder=encoder, cache_dir=cache / "embeddings", seed=recipe.seed,
                                          out=tmp, batch_rows=ctx.batch_rows)
            elif entry.task_type == "sts":
                pool_names = sts_names if recipe.bm25.to_dict().get("pool") == "all" else [name]
                pools = {n: decontam_dirs[n][0] / "data.parquet" for n in pool_names}
                key = bm25_key(fkey, recipe, [decontam_dirs[n][1] for n in pool_names])
                with stage_folder(cache, "mine", name, key) as (mdir, tmp):
                    if tmp is not None:
                        mstage.mine_bm25(rows_file, pools, cfg=recipe.bm25, out=tmp)
            else:
                with stage_folder(cache, "mine", name, fkey) as (mdir, tmp):
                    if tmp is not None:
                        mstage.no_mining(rows_file, out=tmp)
            release_memory()
            mine_reports[name] = json.loads((mdir / "report.json").read_text())
            r = results[name]
            r.rows_file = mdir / "rows.parquet"
            r.rows, total = 0, 0
            per_row = named_counts.NegativesPerRow()
            for b in stages.iter_batches(r.rows_file, columns=["negatives"], batch_rows=ctx.batch_rows):
                r.rows += b.num_rows
                total += pc.sum(pc.list_value_length(b.column(0))).as_py() or 0
                per_row.add(b.column(0))
            r.mean_negatives = total / r.rows if r.rows else 0.0
            r.details["negatives_per_row"] = per_row.to_dict()
            say("mine", done, len(raws), f"{name}: {r.rows} rows, {r.mean_negatives:.2f} negatives/row")
    return StageOutputs(results, skipped, index, all_hits, mine_reports)
