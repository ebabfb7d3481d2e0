"""The local executor: every stage in this process, one source after another.

Each stage streams its input in record batches of ``ctx.batch_rows`` rows, so memory does not
grow with a source's size (see :mod:`nvdata.engine` for the stage contract).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from nvdata import counts as named_counts
from nvdata.engine import (
    BuildContext,
    SourceResult,
    StageOutputs,
    decontaminate_key,
    instructions_key,
    min_limit,
    plan,
    stage_folder,
)
from nvdata.errors import NvdataError
from nvdata.sources import RawSource, download_source, obtainable
from nvdata.stages import decontaminate as dstage
from nvdata.stages.io import release_memory
from nvdata.stages import format as fstage
from nvdata.stages import mine as mstage


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
        say("download", 0, len(recipe.sources), f"{len(recipe.sources)} source(s)")  # bar and clock start
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
        say("decontaminate", 0, len(raws), f"{len(raws)} source(s)")
        index = decontam.build_test_index(recipe.decontamination, mirror=ctx.mirror,
                                          cache_dir=cache / "test-index")
        for done, (name, raw) in enumerate(raws.items(), 1):
            d, dkey = decontaminate(raw, recipe, index, cache, ctx.batch_rows)
            after = plan.after_decontamination(registry[name], d, dkey, recipe, cache, ctx.mirror)
            release_memory()
            decontam_dirs[name] = (after.folder, after.key)
            all_hits.extend(json.loads((after.folder / "hits.json").read_text()))
            results[name].details.update(after.details)
            say("decontaminate", done, len(raws),
                f"{name}: {named_counts.decontamination_line(after.details['decontam_counts'])}")

    # 3. format
    fmt: dict[str, tuple[Path, str]] = {}
    with timer("format"):
        say("format", 0, len(raws), f"{len(raws)} source(s)")
        instr_key = instructions_key()
        for done, name in enumerate(raws, 1):
            d, dkey = decontam_dirs[name]
            key = plan.source_format_key(registry[name], dkey, recipe, instr_key, specs[name].max_rows)
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
        say("mine", 0, len(raws), f"{len(raws)} source(s)")
        for done, name in enumerate(raws, 1):
            entry = registry[name]
            if encoder is None and plan.needs_encoder(entry, recipe):  # once per build, only when needed
                encoder = mstage.DenseEncoder(ctx.encoder, ctx.device, recipe.dense)
            job = plan.mine_plan(entry, fmt[name], recipe, decontam_dirs, sts_names,
                                 encoder.fingerprint if encoder is not None else None)
            with stage_folder(cache, "mine", name, job.key) as (mdir, tmp):
                if tmp is not None:
                    plan.mine_source(job, recipe, encoder, cache, tmp, ctx.batch_rows)
            release_memory()
            mine_reports[name] = json.loads((mdir / "report.json").read_text())
            r = results[name]
            plan.summarize_mined(r, mdir / "rows.parquet", ctx.batch_rows)
            say("mine", done, len(raws), f"{name}: {r.rows} rows, {r.mean_negatives:.2f} negatives/row")
    return StageOutputs(results, skipped, index, all_hits, mine_reports)
