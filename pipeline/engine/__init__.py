"""Executors: what runs the build's stages, and the contract every executor keeps.

The stages (:mod:`nvdata.stages`) are plain functions over Arrow record batches and Parquet
files; they do not know how they are scheduled. An executor decides where and in which order
they run: :mod:`nvdata.engine.local` runs them in this process, one source after another;
:mod:`nvdata.engine.ray` runs the same functions on a Ray cluster. Both fill the same stage
cache and hand the same per-source results to the write step (:func:`nvdata.build.run_build`),
so their shards are byte-identical.

Stage cache: ``CACHE/<stage>/<source>-<key>/`` (:func:`stage_folder`), ``key`` from the
``*_key`` functions below (upstream key + options), written under a temp name, ``done.json``
last. A stage's table ``T`` is ``T.parquet`` or ordered parts ``T-00000.parquet`` ...
(:mod:`nvdata.stages.io`): part files are named by input position, never by arrival order.

The stages, per source (``B`` = record batches of ``batch_rows`` rows, :func:`batch_rows`):

download  :func:`nvdata.sources.download_source` (one task per source)
    in:  the Hub / mirror split.   out: ``CACHE/raw/<source>-<key>/pairs.parquet`` +
    ``corpus.parquet`` (retrieval) or ``data.parquet``, ``meta.json``.
decontaminate  per-batch map :func:`nvdata.stages.decontaminate.decontaminate_batches`
    in:  each raw table in batches; the test index (memory-mapped, open once per worker).
    out: the same file names without contaminated rows, ``hits.json`` (the hits, tagged with
    their table), ``counts.json`` (checked / kept / dropped per table). Driver for one source:
    :func:`nvdata.stages.decontaminate.decontaminate_source`. Then, per source, the steps
    of :func:`nvdata.engine.plan.after_decontamination` (shared-corpus test ids, the recipe's
    test-similarity filter), each a stage folder of its own; their output feeds format.
format  :func:`nvdata.stages.format.format_rows`
    retrieval, STS: per-batch map :class:`nvdata.instruct.BatchFormatter` (rows, ids and
    identity keys), then an ordered reduction :class:`nvdata.instruct.FirstRows` (the first
    row of each identity, in source order); apart on a distributed executor: the map's parts
    ``unmerged-<part>.parquet`` + :func:`~nvdata.stages.format.merge_parts`. Classification,
    clustering: per-source reduction (label pools). Then the seeded ``max_rows`` sample (:func:`~nvdata.stages.format.capped_rows`).
    in:  ``decontaminate/<source>-<key>/{pairs,data}.parquet``.
    out: ``rows.parquet`` (``schema.FORMATTED``), ``report.json``.
mine  one of :mod:`nvdata.stages.mine`
    dense (retrieval): model stage :class:`~nvdata.stages.mine.DenseEncoder` (``setup()`` loads
    the model once, ``__call__(texts, prompt)`` embeds; an actor on Ray) + per-source search
    :func:`~nvdata.stages.mine.mine_dense` (corpus embeddings streamed into the content-keyed
    cache ``CACHE/embeddings/<encoder>/<texts hash>.npy``, memory-mapped; queries in blocks).
    in:  ``format/.../rows.parquet``, ``decontaminate/.../corpus.parquet``.
    bm25 (STS): per-source reduction :func:`~nvdata.stages.mine.mine_bm25` over the STS pools
    (``decontaminate/<pool source>/data.parquet``).
    none (classification, clustering): :func:`~nvdata.stages.mine.no_mining`.
    out: ``rows.parquet`` (``schema.FORMATTED``, rows in input order), ``report.json``.
write  :func:`nvdata.emit.write_shards` + reports + manifest (``nvdata.build``): the same code
    for every executor, reading the mine stage's ``rows.parquet`` files in recipe order.

An executor implements ``run_stages(ctx: BuildContext) -> StageOutputs``. Every per-source
decision (the steps after text decontamination, each stage's key, which miner a source gets)
is made by :mod:`nvdata.engine.plan`, which every executor calls: an executor only decides
where those steps run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nvdata.errors import NvdataError
from nvdata.fsutil import staged_dir
from nvdata.stages.io import batch_rows

ENGINES = ("local", "ray")
STAGES = ("download", "decontaminate", "format", "mine", "write")


def min_limit(*limits: int | None) -> int | None:
    """The tightest of the row limits given (``--limit``, a source's ``limit``); None when none is."""
    given = [x for x in limits if x is not None]
    return min(given) if given else None


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


def instructions_key() -> str:
    """Hash of the bundled instruction files (a changed instruction redoes formatting)."""
    from nvdata.paths import data_dir

    h = hashlib.sha256()
    for p in sorted(data_dir("instructions").glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def decontaminate_key(raw_folder_name: str, recipe, index_key: str) -> str:
    return key_of(raw_folder_name, recipe.decontamination.to_dict(), index_key)


def format_key(dkey: str, recipe, instr_key: str, max_rows: int | None) -> str:
    return key_of(dkey, recipe.format.to_dict(), instr_key, recipe.seed, max_rows)


def dense_key(fkey: str, recipe, encoder_fingerprint: str) -> str:
    return key_of(fkey, recipe.dense.to_dict(), encoder_fingerprint, recipe.seed)


def bm25_key(fkey: str, recipe, pool_keys: list[str]) -> str:
    return key_of(fkey, recipe.bm25.to_dict(), pool_keys)


@dataclass
class SourceResult:
    name: str
    task_type: str
    raw_rows: int = 0
    rows: int = 0
    mean_negatives: float = 0.0
    rows_file: Path | None = None
    details: dict = field(default_factory=dict)  # per-stage counts and reports


class Timer:
    """Seconds spent per stage (``with timer("mine"): ...``)."""

    def __init__(self):
        self.t: dict[str, float] = {s: 0.0 for s in STAGES}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[stage] += time.perf_counter() - t0


@dataclass
class BuildContext:
    """What every executor needs to run the stages of one build."""

    recipe: object  # nvdata.recipe.Recipe
    registry: dict
    mirror: Path | None
    cache: Path
    encoder: str | None
    device: str | None
    limit: int | None
    say: Callable[[str, int, int, str], None]
    timer: Timer
    batch_rows: int = field(default_factory=batch_rows)
    ray_address: str | None = None

    @property
    def specs(self) -> dict:
        return {s.name: s for s in self.recipe.sources}


@dataclass
class StageOutputs:
    """What the stages hand to the write step."""

    results: dict[str, SourceResult]
    skipped: dict[str, str]
    index: object  # nvdata.decontam.TestIndex
    hits: list[dict]
    mine_reports: dict[str, dict]


def run_stages(ctx: BuildContext, engine: str = "local") -> StageOutputs:
    """Run download -> decontaminate -> format -> mine with the chosen executor."""
    if engine == "local":
        from nvdata.engine import local

        return local.run_stages(ctx)
    if engine == "ray":
        try:
            from nvdata.engine import ray as ray_engine
        except ImportError as e:
            if getattr(e, "name", None) == "nvdata.engine.ray":
                raise NvdataError("--engine ray is not available in this version of nvdata") from None
            raise
        return ray_engine.run_stages(ctx)
    raise NvdataError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")
