"""The recipe runner: download -> decontaminate -> format -> mine -> write.

The stages run on an executor (:mod:`nvdata.engine`: ``local`` or ``ray``); the write step
and the partial runs of the CLI are here, the same for every executor. Every stage's output is cached under ``CACHE/<stage>/<source>-<key>/`` where ``key`` hashes the
stage's inputs (the upstream key) and its options, written to a temp folder and renamed when
complete. An interrupted build therefore resumes at the first stage without a finished folder,
and a re-run with one changed option redoes only the stages downstream of it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import counts as named_counts
from nvdata import emit
from nvdata.errors import NvdataError
from nvdata.paths import default_cache_dir, sample_mirror_dir
from nvdata.preflight import preflight
from nvdata.recipe import Recipe
from nvdata.sources import download_source, obtainable
from nvdata.stages.io import batch_rows
from nvdata.engine import (  # noqa: F401  (re-exported: the stage contract lives there)
    STAGES,
    BuildContext,
    SourceResult,
    StageOutputs,
    Timer,
    key_of,
    run_stages,
    stage_folder,
)
from nvdata.engine.local import decontaminate as _decontaminate_stage
from nvdata.engine import min_limit as _min_limit
from nvdata.stages.decontaminate import DECONTAM_FIELDS  # noqa: F401


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    sources: list[SourceResult]
    timings: dict[str, float]
    skipped: dict[str, str]


# -- the build ----------------------------------------------------------------------------------------


def _build_inputs(recipe: Recipe, mirror: Path | None, encoder) -> list[Path]:
    """What a build reads from disk, which its output must neither replace nor sit inside: the
    mirror, a local encoder folder, the recipe file and the recipe's own (custom) source files."""
    inputs = [mirror, recipe.path]
    if encoder is not None and Path(str(encoder)).expanduser().exists():
        inputs.append(Path(str(encoder)))
    for entry in recipe.registry().values():
        if getattr(entry, "data_files", None) and str(entry.hf_id).startswith("local:"):
            inputs.append(Path(entry.data_files))
    return [Path(p) for p in inputs if p is not None]


def run_build(
    recipe: Recipe,
    *,
    out: Path | None = None,
    mirror: Path | None = None,
    sample: bool = False,
    encoder: str | None = None,
    device: str | None = None,
    limit: int | None = None,
    force: bool = False,
    cache: Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int, str], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    max_rows_per_source: int | None = None,
) -> BuildResult:
    """Run the recipe end to end and publish OUT atomically; returns the manifest and stats.

    ``progress(stage, done, total, message)`` is called after each source of each stage.
    OUT, the device and the encoder are checked before any work (``nvdata.preflight``); OUT
    may be new, empty or an earlier build, or any folder with ``overwrite``.
    ``engine`` picks the executor of the stages (:mod:`nvdata.engine`): ``local`` (this
    process) or ``ray`` (a Ray cluster at ``ray_address``; None: ``RAY_ADDRESS``, else a new local one); the
    write step is the same for both, and so are the shards.
    ``max_rows_per_source`` caps every source's formatted rows at once (a source's own
    ``max_rows`` still applies: the smaller wins); the paper's per-source counts (its Table 12)
    are not available offline, so this is the user's knob.
    """
    from nvdata.instruct import instruction_for_source

    if sample and mirror is not None:
        raise NvdataError("give either --mirror or --sample, not both")
    if ray_address is not None and engine != "ray":
        raise NvdataError("--ray-address needs --engine ray")
    if engine == "ray":  # before any work (--force included): without Ray, say how to install it
        from nvdata.engine.ray import import_ray

        import_ray()
    if sample:
        mirror = sample_mirror_dir()
    if max_rows_per_source is not None:
        if max_rows_per_source < 1:
            raise NvdataError(f"--max-rows-per-source must be positive, got {max_rows_per_source}")
        recipe = dataclasses.replace(recipe, sources=tuple(
            dataclasses.replace(s, max_rows=_min_limit(s.max_rows, max_rows_per_source)) for s in recipe.sources))
    encoder = encoder if encoder is not None else recipe.encoder  # --encoder overrides the recipe
    out = Path(out or recipe.output.dir)
    cache = Path(cache) if cache else default_cache_dir()
    preflight(out, "build", overwrite=overwrite, cache=cache, device=device, encoder=encoder,
              inputs=_build_inputs(recipe, mirror, encoder))
    if force:  # nvdata's own stage folders only: the cache may be shared, or a folder of the user's
        for sub in ("raw", "decontaminate", "format", "mine", "embeddings", "test-index"):
            shutil.rmtree(cache / sub, ignore_errors=True)
    say = progress or (lambda stage, done, total, msg: None)
    timer = Timer()
    registry = recipe.registry()  # the source registry plus the recipe's own (custom) sources
    specs = {s.name: s for s in recipe.sources}
    ctx = BuildContext(recipe, registry, mirror, cache, encoder, device, limit, say, timer,
                       ray_address=ray_address)
    staged = run_stages(ctx, engine)
    results, skipped, index, all_hits = staged.results, staged.skipped, staged.index, staged.hits
    mine_reports = staged.mine_reports

    # 5. write: shards, then the reports, manifest and data card, all from one set of counts
    with timer("write"):
        live = [r for r in results.values() if r.rows > 0]
        with emit.atomic_output(out) as tmp:
            shards = emit.write_shards(
                [r.rows_file for r in live], tmp / "shards", seed=recipe.seed,
                shard_rows=recipe.output.shard_rows, row_group_rows=recipe.output.row_group_rows,
                in_batch_negatives=recipe.in_batch_negatives)
            per_row = {r.name: r.details.get("negatives_per_row") or named_counts.negatives_per_row_of(r.rows_file)
                       for r in live}
            manifest = emit.build_manifest(
                recipe, results=results.values(), mine_reports=mine_reports, shards=shards,
                skipped=skipped, encoder=encoder, mirror=mirror, sample=sample, limit=limit, negatives_per_row=per_row,
                dense_mined=any(rep.get("method") == "dense" for rep in mine_reports.values()))
            manifest["decontamination"] = emit.write_reports(
                tmp / "reports", manifest, hits=all_hits, mine_reports=mine_reports, index=index,
                decontam_counts={n: r.details["decontam_counts"] for n, r in results.items()},
                negatives_per_row=per_row)
            # the paper's v2 options (recipe keys): --max-rows-per-source, test_similarity_filter
            manifest["max_rows_per_source"] = max_rows_per_source
            manifest["warnings"] = named_counts.mining_warnings(mine_reports)
            similarity = {n: r.details["test_similarity"] for n, r in results.items() if "test_similarity" in r.details}
            for n, rep in similarity.items():
                manifest["sources"][n]["test_similarity_dropped"] = rep["rows_dropped"]
            if similarity:
                emit.write_json(tmp / "reports" / "test_similarity.json", similarity)
            emit.write_data_card(tmp / "README.md", manifest, registry,
                                 {n: instruction_for_source(n, recipe.instructions()) for n in results})
            emit.write_json(tmp / "manifest.json", manifest)  # last: marks the build complete
    say("write", 1, 1, f"{manifest['total_rows']} rows in {len(shards)} shard(s) -> {out}")
    return BuildResult(out, manifest, list(results.values()), timer.t, skipped)


# -- partial runs used by the CLI -------------------------------------------------------------------


def _decontaminated_source(entry, recipe, index, cache, mirror, limit) -> Path | None:
    """Download (cached) + decontaminate (cached) one source; None when it cannot be loaded."""
    if not obtainable(entry, mirror):
        return None
    from nvdata.shared_corpus import shared_corpus_stage

    raw = download_source(entry, cache=Path(cache), mirror=mirror, limit=limit)
    d, dkey = _decontaminate_stage(raw, recipe, index, Path(cache), batch_rows())
    return shared_corpus_stage(entry, d, dkey, recipe, Path(cache), mirror)[0]  # test content by id


def run_decontaminate_sources(recipe: Recipe, *, names=None, mirror=None, limit=None,
                              cache: Path, report_dir: Path) -> dict:
    """`nvdata decontaminate`: download (cached) + decontaminate the sources, write the report."""
    from nvdata import decontam

    registry = recipe.registry()
    wanted = list(names or [s.name for s in recipe.sources])
    index = decontam.build_test_index(recipe.decontamination, mirror=mirror, cache_dir=Path(cache) / "test-index")
    hits, counts = [], {}
    for name in wanted:
        if name not in registry:
            raise NvdataError(f"unknown source {name!r}")
        spec_limit = next((s.limit for s in recipe.sources if s.name == name), None)
        d = _decontaminated_source(registry[name], recipe, index, cache, mirror, _min_limit(limit, spec_limit))
        if d is None:
            continue
        hits.extend(json.loads((d / "hits.json").read_text()))
        counts[name] = json.loads((d / "counts.json").read_text())
    return decontam.write_report(hits, counts, Path(report_dir), index=index, cfg=recipe.decontamination)


def finetune_miner_from_recipe(recipe: Recipe, *, out: Path, encoder=None, mirror=None, limit=None,
                               cache: Path, epochs: int = 1, batch_size: int = 32, device=None) -> Path:
    """`nvdata finetune-miner`: the recipe's retrieval pairs (decontaminated) train the miner."""
    from nvdata import decontam
    from nvdata.finetune import finetune_miner

    registry = recipe.registry()
    index = decontam.build_test_index(recipe.decontamination, mirror=mirror, cache_dir=Path(cache) / "test-index")
    pair_files = []
    for spec in recipe.sources:
        entry = registry[spec.name]
        if entry.task_type != "retrieval":
            continue
        d = _decontaminated_source(entry, recipe, index, cache, mirror, _min_limit(limit, spec.limit))
        if d is not None:
            pair_files.append(d / "pairs.parquet")
    if not pair_files:
        raise NvdataError(f"recipe {recipe.name!r} has no retrieval source to fine-tune the miner on")
    pairs = pa.concat_tables([pq.read_table(f, columns=["query", "positive"]) for f in pair_files])
    encoder = encoder if encoder is not None else recipe.encoder
    return finetune_miner(pairs, encoder=encoder, out_dir=Path(out), epochs=epochs,
                          batch_size=batch_size, device=device, seed=recipe.seed)
