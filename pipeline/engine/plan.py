"""Every per-source decision of a build, made in one place for every executor.

An executor (:mod:`nvdata.engine.local`, :mod:`nvdata.engine.ray`) decides *where* a stage
runs; this module decides *what* runs for a source and under which cache key: the steps after
text decontamination, the format stage's key, the mine stage's method, inputs and key. Both
executors call these functions, so a new per-source step added here runs on both engines (and
their shards stay byte-identical) without touching either of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nvdata.engine import bm25_key, dense_key, format_key, key_of


@dataclass(frozen=True)
class Decontaminated:
    """A source after every decontamination step: its folder and key (the format stage's
    input) and the ``SourceResult.details`` it adds (the named counts come from them)."""

    folder: Path
    key: str
    details: dict = field(default_factory=dict)


def after_decontamination(entry, folder: Path, key: str, recipe, cache: Path,
                          mirror: Path | None) -> Decontaminated:
    """The steps that run on a source's text-decontaminated folder, in order: the shared-corpus
    step (:func:`nvdata.shared_corpus.shared_corpus_stage`: test ids of a repo an MTEB test set
    shares) for every source, then the recipe's ``test_similarity_filter``
    (:func:`nvdata.similarity_filter.similarity_filter`) for its sources. Each is a cached stage
    folder of its own; a per-source reduction (a Ray executor runs it as one task)."""
    from nvdata.shared_corpus import shared_corpus_stage
    from nvdata.similarity_filter import similarity_filter

    folder, key = shared_corpus_stage(entry, folder, key, recipe, cache, mirror)
    counts = json.loads((folder / "counts.json").read_text())
    details: dict = {}
    if entry.name in recipe.test_similarity.active_sources():  # arXiv 2405.17428 v3 section 4.2
        folder, key = similarity_filter(entry, recipe, folder, key, cache, mirror)
        details["test_similarity"] = json.loads((folder / "report.json").read_text())
        counts = json.loads((folder / "counts.json").read_text())
    details["decontam_counts"] = counts
    return Decontaminated(folder, key, details)


def source_format_key(entry, dkey: str, recipe, instr_key: str, max_rows: int | None) -> str:
    """The format stage's key of one source: a recipe-declared source's own instruction is
    part of it (editing it re-formats), the bundled instruction files for every source."""
    own = entry.instruction
    ikey = instr_key if own is None else key_of(instr_key, own, entry.document_instruction)
    return format_key(dkey, recipe, ikey, max_rows)


# mine methods: which function mines a source (:func:`mine_source`)
DENSE, BM25, STS_DENSE, NONE = "dense", "bm25", "sts-dense", "none"


@dataclass(frozen=True)
class MinePlan:
    """How one source is mined: ``method``, the stage ``key``, and its inputs (``corpus`` for
    dense retrieval, ``pools`` {source: decontaminated data.parquet} for STS)."""

    name: str
    method: str
    key: str
    rows_file: Path
    corpus: Path | None = None
    pools: dict = field(default_factory=dict)

    @property
    def needs_encoder(self) -> bool:
        return self.method in (DENSE, STS_DENSE)


def needs_encoder(entry, recipe) -> bool:
    """Whether mining ``entry`` takes the dense encoder (its fingerprint is in the key)."""
    return entry.task_type == "retrieval" or (entry.task_type == "sts" and recipe.sts_method == "dense")


def mine_plan(entry, fmt: tuple[Path, str], recipe, decontaminated: dict[str, tuple[Path, str]],
              sts_names: list[str], encoder_fingerprint: str | None) -> MinePlan:
    """The mine stage of one source. ``fmt``: its format (folder, key); ``decontaminated``:
    every source's final decontaminated (folder, key) (STS pools); ``sts_names``: the build's
    STS sources in recipe order; ``encoder_fingerprint``: required when :func:`needs_encoder`."""
    fdir, fkey = fmt
    rows_file = fdir / "rows.parquet"
    name = entry.name
    if needs_encoder(entry, recipe) and encoder_fingerprint is None:
        raise ValueError(f"{name}: mining needs the encoder's fingerprint")
    if entry.task_type == "retrieval":
        return MinePlan(name, DENSE, dense_key(fkey, recipe, encoder_fingerprint), rows_file,
                        corpus=decontaminated[name][0] / "corpus.parquet")
    if entry.task_type == "sts":
        pool_names = sts_names if recipe.bm25.to_dict().get("pool") == "all" else [name]
        pools = {n: decontaminated[n][0] / "data.parquet" for n in pool_names}
        key = bm25_key(fkey, recipe, [decontaminated[n][1] for n in pool_names])
        if recipe.sts_method == "dense":  # mining.sts.method (arXiv 2405.17428 v3 section 4.2)
            return MinePlan(name, STS_DENSE, key_of(key, "sts-dense", dense_key(fkey, recipe, encoder_fingerprint)),
                            rows_file, pools=pools)
        return MinePlan(name, BM25, key, rows_file, pools=pools)
    return MinePlan(name, NONE, fkey, rows_file)


def mine_source(plan: MinePlan, recipe, encoder, cache: Path, out: Path, batch_rows: int) -> dict:
    """Run ``plan`` into the stage folder ``out``; its report. ``encoder``: a
    :class:`~nvdata.stages.mine.DenseEncoder` when ``plan.needs_encoder`` (on Ray, the actor's)."""
    from nvdata.similarity_filter import mine_sts_dense
    from nvdata.stages import mine as mstage

    if plan.method == DENSE:
        return mstage.mine_dense(plan.rows_file, plan.corpus, cfg=recipe.dense, encoder=encoder,
                                 cache_dir=Path(cache) / "embeddings", seed=recipe.seed, out=out,
                                 batch_rows=batch_rows)
    if plan.method == STS_DENSE:
        return mine_sts_dense(plan.rows_file, plan.pools, recipe=recipe, encoder=encoder,
                              cache_dir=Path(cache) / "embeddings", out=out)
    if plan.method == BM25:
        return mstage.mine_bm25(plan.rows_file, plan.pools, cfg=recipe.bm25, out=out)
    return mstage.no_mining(plan.rows_file, out=out)


def summarize_mined(result, rows_file: Path, batch_rows: int) -> None:
    """Fill ``result`` (a :class:`~nvdata.engine.SourceResult`) from the mine stage's rows:
    ``rows_file``, ``rows``, ``mean_negatives`` and the negatives-per-row histogram."""
    import pyarrow.compute as pc

    from nvdata import counts as named_counts
    from nvdata import stages

    result.rows_file = rows_file
    result.rows, negatives = 0, 0
    per_row = named_counts.NegativesPerRow()
    for b in stages.iter_batches(rows_file, columns=["negatives"], batch_rows=batch_rows):
        result.rows += b.num_rows
        negatives += pc.sum(pc.list_value_length(b.column(0))).as_py() or 0
        per_row.add(b.column(0))
    result.mean_negatives = negatives / result.rows if result.rows else 0.0
    result.details["negatives_per_row"] = per_row.to_dict()
