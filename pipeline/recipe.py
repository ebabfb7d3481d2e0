"""Recipes: which sources, how to format, mine, decontaminate and shard them (recipes/*.yaml).

A recipe is a built-in name (``stage1``, ``stage2``, ``stage2-v2``) or a path to a YAML file.
Every key is validated: unknown keys and unknown sources are errors naming the key, because a
typo silently ignored costs a multi-hour build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.paths import data_dir
from nvdata.registry import SourceEntry, load_registry

_TOP_KEYS = {
    "name", "description", "stage", "seed", "in_batch_negatives", "sources", "format",
    "mining", "decontamination", "test_similarity_filter", "output", "train",
}
_SOURCE_KEYS = {"max_rows", "limit", "weight", "custom"}
_MINING_KEYS = {"dense", "bm25", "sts"}
# mining.sts.method: how STS rows get their hard negatives. bm25: the seeds' rule (rank >= 2,
# gold <= 2.5; nvdata.mine.bm25). dense: NV-Embed v2's "same technique as section 4.1.1"
# (arXiv 2405.17428 v3, section 4.2): the dense positive-aware miner, never a gold partner.
STS_METHODS = ("bm25", "dense")
_SIMILARITY_KEYS = {"enabled", "threshold", "sources"}
_OUTPUT_KEYS = {"dir", "shard_rows", "row_group_rows"}


@dataclass(frozen=True)
class SourceSpec:
    name: str
    max_rows: int | None = None  # cap on formatted rows (seeded sample), e.g. the paper's count
    weight: float = 1.0  # recorded in the manifest for samplers; does not duplicate rows
    # rows read from the source's stream at download (its first N): bounds the download of a
    # huge source such as PAQ (64M pairs) before max_rows samples from what was read
    limit: int | None = None


@dataclass(frozen=True)
class TestSimilarityFilter:
    """Recipe key ``test_similarity_filter`` (arXiv 2405.17428 v3, section 4.2): drop training
    rows of ``sources`` whose BM25 similarity to a text of the named MTEB test set is above
    ``threshold`` (Okapi BM25 units, the training text as the query). The paper applies it to
    EmotionClassification and AmazonCounterfactual but does not state the threshold, so the
    key is required whenever the filter is on."""

    enabled: bool = False
    threshold: float | None = None
    sources: tuple[tuple[str, str], ...] = ()  # (training source, MTEB test task)

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "threshold": self.threshold, "sources": dict(self.sources)}

    def active_sources(self) -> dict[str, str]:
        """{training source: MTEB test task} when the filter is on, else {}."""
        return dict(self.sources) if self.enabled else {}


@dataclass(frozen=True)
class OutputSpec:
    dir: str
    shard_rows: int = 100_000
    row_group_rows: int = 10_000


@dataclass(frozen=True)
class Recipe:
    name: str
    stage: int
    seed: int
    in_batch_negatives: bool
    sources: tuple[SourceSpec, ...]
    output: OutputSpec
    description: str = ""
    format: Any = None  # instruct.FormatConfig
    dense: Any = None  # mine.dense.DenseConfig
    encoder: str | None = None  # mining.dense.encoder: the dense miner (None: bundled MiniLM)
    bm25: Any = None  # mine.bm25.BM25Config
    decontamination: Any = None  # decontam.DecontamConfig
    train: dict = field(default_factory=dict)  # validated by train.TrainConfig when training
    path: str | None = None
    sts_method: str = "bm25"  # mining.sts.method
    test_similarity: TestSimilarityFilter = TestSimilarityFilter()
    # the recipe's own sources (sources.<name>.custom): entries and their instructions
    custom: dict[str, SourceEntry] = field(default_factory=dict)
    custom_instructions: dict = field(default_factory=dict)

    def registry(self) -> dict[str, SourceEntry]:
        """The source registry plus this recipe's own (custom) sources."""
        return {**load_registry(), **self.custom}

    def entries(self, registry: dict[str, SourceEntry] | None = None) -> list[SourceEntry]:
        reg = {**(registry or load_registry()), **self.custom}
        return [reg[s.name] for s in self.sources]

    def instructions(self):
        """The instruction files plus the custom sources' declared instructions."""
        from nvdata.instruct import Instructions, load_instructions

        base = load_instructions()
        if not self.custom_instructions:
            return base
        return Instructions({**base.sources, **self.custom_instructions}, base.tasks, base.benchmark)

    def to_dict(self) -> dict:
        """The resolved recipe (every default filled in), as written to the manifest."""
        return {
            "name": self.name,
            "description": self.description,
            "stage": self.stage,
            "seed": self.seed,
            "in_batch_negatives": self.in_batch_negatives,
            "sources": {s.name: {"max_rows": s.max_rows, "limit": s.limit, "weight": s.weight,
                                 **({"custom": self.custom[s.name].to_dict()} if s.name in self.custom else {})}
                        for s in self.sources},
            "format": self.format.to_dict(),
            "mining": {"dense": {"encoder": self.encoder, **self.dense.to_dict()}, "bm25": self.bm25.to_dict(),
                       "sts": {"method": self.sts_method}},
            "decontamination": self.decontamination.to_dict(),
            "test_similarity_filter": self.test_similarity.to_dict(),
            "output": {"dir": self.output.dir, "shard_rows": self.output.shard_rows,
                       "row_group_rows": self.output.row_group_rows},
            "train": self.train,
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(data_dir("recipes").glob("*.yaml"))}


def _mapping(value, where: str, allowed: set[str] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NvdataError(f"recipe key {where}: expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        reject_unknown_keys(value, allowed, f"recipe key {where}")
    return value


def _int(value, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NvdataError(f"recipe key {where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise NvdataError(f"recipe key {where}: must be >= {minimum}, got {value}")
    return value


def _sources(raw, registry: dict[str, SourceEntry], base_dir: Path):
    """(specs, custom entries, custom instructions) of the ``sources`` mapping."""
    from nvdata.custom import custom_source

    if isinstance(raw, list):
        raw = {name: None for name in raw}
    raw = _mapping(raw, "sources")
    if not raw:
        raise NvdataError("recipe key sources: at least one source is required")
    out, custom, custom_ins = [], {}, {}
    for name, spec in raw.items():
        spec = _mapping(spec, f"sources.{name}", _SOURCE_KEYS)
        if "custom" in spec:
            if name in registry:
                raise NvdataError(f"recipe key sources.{name}.custom: {name!r} is a registry source; "
                                  "give your own source another name")
            custom[name], custom_ins[name] = custom_source(name, spec["custom"], base_dir)
        elif name not in registry:
            raise NvdataError(f"recipe key sources.{name}: unknown source (see `nvdata sources`; "
                              "declare your own data under sources.<name>.custom)")
        max_rows = spec.get("max_rows")
        if max_rows is not None:
            max_rows = _int(max_rows, f"sources.{name}.max_rows", 1)
        limit = spec.get("limit")
        if limit is not None:
            limit = _int(limit, f"sources.{name}.limit", 1)
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise NvdataError(f"recipe key sources.{name}.weight: expected a positive number, got {weight!r}")
        out.append(SourceSpec(name, max_rows, float(weight), limit))
    return tuple(out), custom, custom_ins


def _sts_method(raw) -> str:
    sts = _mapping(raw, "mining.sts", {"method"})
    method = sts.get("method", "bm25")
    if method not in STS_METHODS:
        raise NvdataError(f"recipe key mining.sts.method: {method!r} is not one of {', '.join(STS_METHODS)}")
    return method


def _test_similarity(raw, source_names: set[str]) -> TestSimilarityFilter:
    d = _mapping(raw, "test_similarity_filter", _SIMILARITY_KEYS)
    enabled = d.get("enabled", bool(d))
    if not isinstance(enabled, bool):
        raise NvdataError(f"recipe key test_similarity_filter.enabled: expected true/false, got {enabled!r}")
    threshold = d.get("threshold")
    if enabled and threshold is None:
        raise NvdataError("recipe key test_similarity_filter.threshold: required when the filter is on "
                          "(arXiv 2405.17428 section 4.2 does not state the value; choose one)")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or threshold != threshold or threshold < 0):
        raise NvdataError(f"recipe key test_similarity_filter.threshold: expected a number >= 0, got {threshold!r}")
    sources = _mapping(d.get("sources"), "test_similarity_filter.sources")
    if enabled and not sources:
        raise NvdataError("recipe key test_similarity_filter.sources: map at least one source to its MTEB test task")
    for name, task in sources.items():
        if name not in source_names:
            raise NvdataError(f"recipe key test_similarity_filter.sources.{name}: not a source of this recipe")
        if not isinstance(task, str) or not task:
            raise NvdataError(f"recipe key test_similarity_filter.sources.{name}: expected an MTEB task name")
    return TestSimilarityFilter(enabled, None if threshold is None else float(threshold),
                                tuple(sorted(sources.items())))


def parse_recipe(doc: dict, *, path: str | None = None) -> Recipe:
    from nvdata.decontam import DecontamConfig
    from nvdata.instruct import FormatConfig
    from nvdata.mine.bm25 import BM25Config
    from nvdata.mine.dense import DenseConfig

    doc = _mapping(doc, "<top>", _TOP_KEYS)
    for key in ("name", "stage", "sources"):
        if key not in doc:
            raise NvdataError(f"recipe key {key}: missing")
    stage = _int(doc["stage"], "stage", 1)
    if stage not in (1, 2):
        raise NvdataError(f"recipe key stage: must be 1 or 2, got {stage}")
    ibn = doc.get("in_batch_negatives", stage == 1)
    if not isinstance(ibn, bool):
        raise NvdataError(f"recipe key in_batch_negatives: expected true/false, got {ibn!r}")
    mining = _mapping(doc.get("mining"), "mining", _MINING_KEYS)
    output = _mapping(doc.get("output"), "output", _OUTPUT_KEYS)
    registry = load_registry()
    name = doc["name"]
    if not isinstance(name, str) or not name:
        raise NvdataError("recipe key name: expected a non-empty string")
    train = _mapping(doc.get("train"), "train")
    dense = _mapping(mining.get("dense"), "mining.dense")
    encoder = dense.pop("encoder", None)
    if encoder is not None and (not isinstance(encoder, str) or not encoder.strip()):
        raise NvdataError(f"recipe key mining.dense.encoder: expected a model path or Hub id, got {encoder!r}")
    base_dir = Path(path).parent if path else Path.cwd()  # custom sources' relative paths
    sources, custom, custom_ins = _sources(doc["sources"], registry, base_dir)
    return Recipe(
        name=name,
        description=str(doc.get("description", "")),
        stage=stage,
        seed=_int(doc.get("seed", 42), "seed", 0),
        in_batch_negatives=ibn,
        sources=sources,
        custom=custom,
        custom_instructions=custom_ins,
        sts_method=_sts_method(mining.get("sts")),
        test_similarity=_test_similarity(doc.get("test_similarity_filter"), {s.name for s in sources}),
        format=FormatConfig.from_dict(_mapping(doc.get("format"), "format"), "format"),
        dense=DenseConfig.from_dict(dense, "mining.dense"),
        encoder=encoder,
        bm25=BM25Config.from_dict(_mapping(mining.get("bm25"), "mining.bm25"), "mining.bm25"),
        decontamination=DecontamConfig.from_dict(
            _mapping(doc.get("decontamination"), "decontamination"), "decontamination"
        ),
        output=OutputSpec(
            dir=str(output.get("dir", f"nvdata-out/{name}")),
            shard_rows=_int(output.get("shard_rows", 100_000), "output.shard_rows", 1),
            row_group_rows=_int(output.get("row_group_rows", 10_000), "output.row_group_rows", 1),
        ),
        train=train,
        path=path,
    )


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name, or a YAML file by path."""
    builtins = builtin_recipes()
    p = Path(name_or_path)
    if str(name_or_path) in builtins and not p.is_file():
        p = builtins[str(name_or_path)]
    if not p.is_file():
        raise NvdataError(
            f"recipe {str(name_or_path)!r} is neither a built-in ({', '.join(builtins)}) nor a file"
        )
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise NvdataError(f"cannot read recipe {p}: {e}") from e
    if not isinstance(doc, dict):
        raise NvdataError(f"recipe {p}: expected a YAML mapping at the top level")
    return parse_recipe(doc, path=str(p))
