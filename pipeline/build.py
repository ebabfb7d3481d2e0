"""The recipe runner: download -> decontaminate -> format -> mine -> write.

Every stage's output is cached under ``CACHE/<stage>/<source>-<key>/`` where ``key`` hashes the
stage's inputs (the upstream key) and its options, written to a temp folder and renamed when
complete. An interrupted build therefore resumes at the first stage without a finished folder,
and a re-run with one changed option redoes only the stages downstream of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import emit
from nvdata.errors import NvdataError
from nvdata.fsutil import staged_dir
from nvdata.paths import sample_mirror_dir
from nvdata.recipe import Recipe
from nvdata.registry import SourceEntry
from nvdata.sources import RawSource, download_source, obtainable

STAGES = ("download", "decontaminate", "format", "mine", "write")
# Canonical raw fields checked against the test sets, per raw table.
DECONTAM_FIELDS = {
    "pairs": ["query", "positive"],
    "corpus": ["text"],
    "classification": ["text"],
    "clustering": ["text"],
    "sts": ["sentence1", "sentence2"],
}


def key_of(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def stage_folder(cache: Path, stage: str, source: str, key: str):
    """Yield (final_path, tmp_path or None). tmp is None when the stage is already cached."""
    final = Path(cache) / stage / f"{source}-{key}"
    if (final / "done.json").is_file():
        yield final, None
        return
    with staged_dir(final, prefix=f".tmp-{source}-") as tmp:
        yield final, tmp
        (tmp / "done.json").write_text(json.dumps({"key": key}))


@dataclass
class SourceResult:
    name: str
    task_type: str
    raw_rows: int = 0
    decontam_dropped: int = 0
    rows: int = 0
    mean_negatives: float = 0.0
    rows_file: Path | None = None
    details: dict = field(default_factory=dict)  # per-stage counts and reports


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    sources: list[SourceResult]
    timings: dict[str, float]
    skipped: dict[str, str]


class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {s: 0.0 for s in STAGES}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[stage] += time.perf_counter() - t0


def _instructions_hash() -> str:
    from nvdata.paths import data_dir

    h = hashlib.sha256()
    for p in sorted(data_dir("instructions").glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cap_rows(table: pa.Table, max_rows: int | None, seed: int, source: str) -> pa.Table:
    """Seeded sample of ``max_rows`` rows, kept in their original order."""
    if max_rows is None or table.num_rows <= max_rows:
        return table
    rng = np.random.default_rng([seed, int(hashlib.sha256(source.encode()).hexdigest()[:8], 16)])
    idx = np.sort(rng.choice(table.num_rows, size=max_rows, replace=False))
    return table.take(pa.array(idx))


def _min_limit(*limits: int | None) -> int | None:
    given = [x for x in limits if x is not None]
    return min(given) if given else None


# -- stages -----------------------------------------------------------------------------------------


def _decontaminate(raw: RawSource, entry: SourceEntry, recipe: Recipe, index, cache: Path):
    from nvdata import decontam

    key = key_of(raw.path.name, recipe.decontamination.to_dict(), index.key)
    with stage_folder(cache, "decontaminate", entry.name, key) as (final, tmp):
        if tmp is not None:
            parts = ([("pairs", raw.data_file), ("corpus", raw.corpus_file)]
                     if entry.task_type == "retrieval" else [(entry.task_type, raw.data_file)])
            hits, counts = [], {}
            for kind, path in parts:
                table = pq.read_table(path)
                id_col = "doc_id" if kind == "corpus" else "row_index"
                clean, kind_hits = decontam.decontaminate_table(
                    table, DECONTAM_FIELDS[kind], source=entry.name, index=index,
                    cfg=recipe.decontamination, id_column=id_col)
                for h in kind_hits:
                    h.setdefault("table", kind)
                hits.extend(kind_hits)
                counts[kind] = {"checked": table.num_rows, "kept": clean.num_rows,
                                "dropped": table.num_rows - clean.num_rows}
                pq.write_table(clean, tmp / path.name, compression="zstd")
            emit.write_json(tmp / "hits.json", hits)
            emit.write_json(tmp / "counts.json", counts)
    return final, key


def _format(entry, recipe, spec, clean_raw: Path, dkey: str, cache: Path, instructions_key: str):
    from nvdata.instruct import format_source

    key = key_of(dkey, recipe.format.to_dict(), instructions_key, recipe.seed, spec.max_rows)
    with stage_folder(cache, "format", entry.name, key) as (final, tmp):
        if tmp is not None:
            raw = pq.read_table(clean_raw)
            rows, report = format_source(entry, raw, recipe.format, recipe.seed,
                                         instructions=recipe.instructions())
            capped = _cap_rows(rows, spec.max_rows, recipe.seed, entry.name)
            report = dict(report, capped=rows.num_rows - capped.num_rows)
            pq.write_table(capped, tmp / "rows.parquet", compression="zstd")
            emit.write_json(tmp / "report.json", report)
    return final, key


class _LazyEncoder:
    """Loads the dense encoder on first use, once per build (not once per source), and only
    when some source actually needs mining; its fingerprint (model files' hash) keys the cache."""

    def __init__(self, name, device, cfg):
        from nvdata.mine.encode import model_fingerprint

        self.name, self.device, self.cfg, self._enc = name, device, cfg, None
        self.fingerprint = model_fingerprint(name)

    def get(self):
        if self._enc is None:
            from nvdata.mine.encode import load_encoder

            self._enc = load_encoder(self.name, device=self.device, dtype=self.cfg.dtype,
                                     max_seq_length=self.cfg.max_seq_length)
        return self._enc


def _mine_dense(entry, recipe, fmt_dir, fkey, decontam_dir, cache, encoder: _LazyEncoder):
    from nvdata.mine.dense import mine_dense_negatives

    key = key_of(fkey, recipe.dense.to_dict(), encoder.fingerprint, recipe.seed)
    with stage_folder(cache, "mine", entry.name, key) as (final, tmp):
        if tmp is not None:
            rows = pq.read_table(fmt_dir / "rows.parquet")
            corpus = pq.read_table(decontam_dir / "corpus.parquet")
            mined, report = mine_dense_negatives(
                rows, corpus, recipe.dense, encoder=encoder.get(), device=encoder.device,
                cache_dir=Path(cache) / "embeddings", seed=recipe.seed)
            pq.write_table(mined, tmp / "rows.parquet", compression="zstd")
            emit.write_json(tmp / "report.json", report)
    return final


def _mine_bm25(entry, recipe, fmt_dir, fkey, pools: dict[str, Path], pool_keys, cache):
    from nvdata.mine.bm25 import mine_bm25_negatives

    key = key_of(fkey, recipe.bm25.to_dict(), pool_keys)
    with stage_folder(cache, "mine", entry.name, key) as (final, tmp):
        if tmp is not None:
            rows = pq.read_table(fmt_dir / "rows.parquet")
            pool_tables = {name: pq.read_table(p) for name, p in pools.items()}
            mined, report = mine_bm25_negatives(rows, pool_tables, recipe.bm25)
            pq.write_table(mined, tmp / "rows.parquet", compression="zstd")
            emit.write_json(tmp / "report.json", report)
    return final


def _mine_sts_dense(entry, recipe, fmt_dir, fkey, pools: dict[str, Path], pool_keys, cache,
                    encoder: _LazyEncoder):
    """mining.sts.method: dense (arXiv 2405.17428 v3 section 4.2), nvdata.mine.bm25."""
    from nvdata.mine.bm25 import mine_sts_dense_negatives

    key = key_of(fkey, "sts-dense", recipe.bm25.to_dict(), recipe.dense.to_dict(), encoder.fingerprint,
                 pool_keys, recipe.seed)
    with stage_folder(cache, "mine", entry.name, key) as (final, tmp):
        if tmp is not None:
            rows = pq.read_table(fmt_dir / "rows.parquet")
            pool_tables = {name: pq.read_table(p) for name, p in pools.items()}
            mined, report = mine_sts_dense_negatives(
                rows, pool_tables, recipe.bm25, recipe.dense, encoder=encoder.get(),
                device=encoder.device, cache_dir=Path(cache) / "embeddings", seed=recipe.seed)
            pq.write_table(mined, tmp / "rows.parquet", compression="zstd")
            emit.write_json(tmp / "report.json", report)
    return final


def _test_similarity_filter(entry, recipe, clean_dir: Path, dkey: str, cache: Path, mirror):
    """recipe test_similarity_filter (arXiv 2405.17428 v3 section 4.2): drop the rows of a
    decontaminated table whose BM25 score against the named MTEB test set is above threshold."""
    from nvdata.decontam import DecontamConfig
    from nvdata.decontam.testsets import iter_test_texts, resolve_test_sets
    from nvdata.mine.bm25 import filter_by_test_similarity

    f = recipe.test_similarity
    task = dict(f.sources)[entry.name]
    key = key_of(dkey, f.to_dict(), recipe.bm25.to_dict(), str(mirror))
    with stage_folder(cache, "similarity", entry.name, key) as (final, tmp):
        if tmp is not None:
            specs = resolve_test_sets(DecontamConfig(benchmarks=(), add_tasks=(task,)))
            texts = [(f"{t.task}/{t.split}/{t.item_id}", t.text) for s in specs
                     for t in iter_test_texts(s, mirror)]
            field = DECONTAM_FIELDS[entry.task_type][0] if entry.task_type != "retrieval" else "query"
            name = "pairs.parquet" if entry.task_type == "retrieval" else "data.parquet"
            table = pq.read_table(clean_dir / name)
            kept, dropped = filter_by_test_similarity(table, field, texts, f.threshold, recipe.bm25)
            for other in clean_dir.glob("*.parquet"):
                if other.name != name:
                    shutil.copy(other, tmp / other.name)
            pq.write_table(kept, tmp / name, compression="zstd")
            emit.write_json(tmp / "report.json", {
                "test_set": task, "threshold": f.threshold, "test_texts": len(texts),
                "rows_checked": table.num_rows, "rows_dropped": len(dropped), "dropped": dropped})
    return final, key


def _no_mining(entry, fmt_dir, fkey, cache):
    """Classification / clustering rows got their label negatives at formatting time."""
    with stage_folder(cache, "mine", entry.name, fkey) as (final, tmp):
        if tmp is not None:
            shutil.copy(fmt_dir / "rows.parquet", tmp / "rows.parquet")
            emit.write_json(tmp / "report.json", {"method": "label (at formatting)"})
    return final


# -- the build ----------------------------------------------------------------------------------------


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
    progress: Callable[[str, int, int, str], None] | None = None,
    max_rows_per_source: int | None = None,
) -> BuildResult:
    """Run the recipe end to end and publish OUT atomically; returns the manifest and stats.

    ``progress(stage, done, total, message)`` is called after each source of each stage.
    ``max_rows_per_source`` caps every source's formatted rows at once (with its own
    ``max_rows``, the smaller wins; the paper's per-source counts are not available offline).
    """
    from nvdata import decontam
    from nvdata.instruct import instruction_for_source

    if sample and mirror is not None:
        raise NvdataError("give either --mirror or --sample, not both")
    if sample:
        mirror = sample_mirror_dir()
    encoder = encoder if encoder is not None else recipe.encoder  # --encoder overrides the recipe
    out = Path(out or recipe.output.dir)
    cache = Path(cache or out.parent / ".nvdata-cache")
    if force and cache.exists():
        shutil.rmtree(cache)
    say = progress or (lambda stage, done, total, msg: None)
    timer = _Timer()
    registry = recipe.registry()  # the registry plus the recipe's own (custom) sources
    results: dict[str, SourceResult] = {}
    skipped: dict[str, str] = {}
    if max_rows_per_source is not None and max_rows_per_source < 1:
        raise NvdataError(f"--max-rows-per-source must be positive, got {max_rows_per_source}")
    specs = {s.name: dataclasses.replace(s, max_rows=_min_limit(s.max_rows, max_rows_per_source))
             for s in recipe.sources}

    # 1. download
    raws: dict[str, RawSource] = {}
    with timer("download"):
        for done, spec in enumerate(recipe.sources, 1):
            entry = registry[spec.name]
            if not obtainable(entry, mirror):
                skipped[entry.name] = f"not publicly available: {entry.unavailable_reason}"
                say("download", done, len(recipe.sources), f"{entry.name}: SKIPPED ({skipped[entry.name]})")
                continue
            raw = download_source(entry, cache=cache, mirror=mirror,
                                  limit=_min_limit(limit, spec.limit))
            raws[entry.name] = raw
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
        index = decontam.build_test_index(recipe.decontamination, mirror=mirror,
                                          cache_dir=cache / "test-index")
        for done, (name, raw) in enumerate(raws.items(), 1):
            d, dkey = _decontaminate(raw, registry[name], recipe, index, cache)
            decontam_dirs[name] = (d, dkey)
            hits = json.loads((d / "hits.json").read_text())
            counts = json.loads((d / "counts.json").read_text())
            all_hits.extend(hits)
            main_kind = "pairs" if registry[name].task_type == "retrieval" else registry[name].task_type
            results[name].decontam_dropped = counts[main_kind]["dropped"]
            results[name].details["decontam_counts"] = counts
            say("decontaminate", done, len(raws), f"{name}: dropped {results[name].decontam_dropped}")
        # the paper's BM25-similarity-to-test filter (recipe test_similarity_filter)
        for name in raws:
            if recipe.test_similarity.enabled and name in dict(recipe.test_similarity.sources):
                sdir, skey = _test_similarity_filter(registry[name], recipe, *decontam_dirs[name], cache, mirror)
                decontam_dirs[name] = (sdir, skey)
                results[name].details["test_similarity"] = json.loads((sdir / "report.json").read_text())

    # 3. format
    fmt: dict[str, tuple[Path, str]] = {}
    with timer("format"):
        instructions_key = key_of(_instructions_hash(),
                                  {n: i.row() for n, i in recipe.custom_instructions.items()})
        for done, name in enumerate(raws, 1):
            d, dkey = decontam_dirs[name]
            fdir, fkey = _format(registry[name], recipe, specs[name], d / raws[name].data_file.name,
                                 dkey, cache, instructions_key)
            fmt[name] = (fdir, fkey)
            rep = json.loads((fdir / "report.json").read_text())
            results[name].details["format_report"] = rep
            say("format", done, len(raws), f"{name}: {pq.ParquetFile(fdir / 'rows.parquet').metadata.num_rows} rows")

    # 4. mine
    mine_reports: dict[str, dict] = {}
    sts_names = [n for n in raws if registry[n].task_type == "sts"]
    with timer("mine"):
        lazy_encoder = None
        for done, name in enumerate(raws, 1):
            entry = registry[name]
            fdir, fkey = fmt[name]
            if entry.task_type == "retrieval":
                if lazy_encoder is None:
                    lazy_encoder = _LazyEncoder(encoder, device, recipe.dense)
                mdir = _mine_dense(entry, recipe, fdir, fkey, decontam_dirs[name][0], cache,
                                   lazy_encoder)
            elif entry.task_type == "sts":
                pool_names = sts_names if recipe.bm25.to_dict().get("pool") == "all" else [name]
                pools = {n: decontam_dirs[n][0] / "data.parquet" for n in pool_names}
                pool_keys = [decontam_dirs[n][1] for n in pool_names]
                if recipe.sts_method == "dense":  # mining.sts.method
                    if lazy_encoder is None:
                        lazy_encoder = _LazyEncoder(encoder, device, recipe.dense)
                    mdir = _mine_sts_dense(entry, recipe, fdir, fkey, pools, pool_keys, cache, lazy_encoder)
                else:
                    mdir = _mine_bm25(entry, recipe, fdir, fkey, pools, pool_keys, cache)
            else:
                mdir = _no_mining(entry, fdir, fkey, cache)
            mine_reports[name] = json.loads((mdir / "report.json").read_text())
            rows_file = mdir / "rows.parquet"
            negs = pq.read_table(rows_file, columns=["negatives"]).column("negatives")
            r = results[name]
            r.rows_file = rows_file
            r.rows = len(negs)
            lens = pa.compute.list_value_length(negs).to_numpy(zero_copy_only=False)
            r.mean_negatives = float(lens.mean()) if len(lens) else 0.0
            say("mine", done, len(raws), f"{name}: {r.rows} rows, {r.mean_negatives:.2f} negatives/row")

    # 5. write
    with timer("write"):
        live = [r for r in results.values() if r.rows > 0]
        with emit.atomic_output(out) as tmp:
            shards = emit.write_shards(
                [r.rows_file for r in live], tmp / "shards", seed=recipe.seed,
                shard_rows=recipe.output.shard_rows, row_group_rows=recipe.output.row_group_rows,
                in_batch_negatives=recipe.in_batch_negatives)
            decontam_summary = decontam.write_report(
                all_hits, {n: results[n].details["decontam_counts"] for n in raws}, tmp / "reports",
                index=index, cfg=recipe.decontamination)
            emit.write_json(tmp / "reports" / "mining.json", mine_reports)
            similarity = {r.name: r.details["test_similarity"] for r in results.values()
                          if "test_similarity" in r.details}
            if similarity:
                emit.write_json(tmp / "reports" / "test_similarity.json", similarity)
            manifest = {
                "nvdata_manifest_version": 1,
                "recipe": recipe.to_dict(),
                "recipe_path": recipe.path,
                "config_hash": recipe.config_hash(),
                "seed": recipe.seed,
                "encoder": encoder,
                "mirror": str(mirror) if mirror else None,
                "limit": limit,
                "max_rows_per_source": max_rows_per_source,
                "versions": emit.library_versions(),
                "total_rows": sum(s["rows"] for s in shards),
                "shards": shards,
                "sources": {
                    r.name: {
                        "task_type": r.task_type, "raw_rows": r.raw_rows, "rows": r.rows,
                        "decontam_dropped": r.decontam_dropped,
                        "mean_negatives": round(r.mean_negatives, 4),
                        "weight": specs[r.name].weight, "max_rows": specs[r.name].max_rows,
                        "test_similarity_dropped": r.details.get("test_similarity", {}).get("rows_dropped"),
                        "format": r.details.get("format_report"),
                    }
                    for r in results.values()
                },
                "skipped_sources": skipped,
                "decontamination": decontam_summary,
            }
            instructions = {n: instruction_for_source(n, recipe.instructions()) for n in results}
            (tmp / "README.md").write_text(
                emit.render_data_card(manifest, registry, instructions), encoding="utf-8")
            emit.write_json(tmp / "manifest.json", manifest)  # last: marks the build complete
    say("write", 1, 1, f"{manifest['total_rows']} rows in {len(shards)} shard(s) -> {out}")
    return BuildResult(out, manifest, list(results.values()), timer.t, skipped)


# -- partial runs used by the CLI -------------------------------------------------------------------


def _decontaminated_source(entry, recipe, index, cache, mirror, limit) -> Path | None:
    """Download (cached) + decontaminate (cached) one source; None when it cannot be loaded."""
    if not obtainable(entry, mirror):
        return None
    raw = download_source(entry, cache=Path(cache), mirror=mirror, limit=limit)
    return _decontaminate(raw, entry, recipe, index, Path(cache))[0]


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
