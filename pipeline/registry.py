"""The source registry: every source of the NV-Embed training mix, loaded from registry.yaml.

The file is data; this module only validates it, so a typo in a column mapping fails at load
time with the source and key named, not hours into a download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nvdata.errors import NvdataError
from nvdata.schema import TASK_TYPES

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")

LAYOUTS = ("beir", "pairs", "table", "passages", "clusters")
# Layouts that only make sense for one task type.
LAYOUT_TASK = {"beir": "retrieval", "passages": "retrieval", "clusters": "clustering"}
# Canonical raw fields each (task type, layout) must map from Hub columns.
REQUIRED_COLUMNS = {
    ("retrieval", "pairs"): ("query", "positive"),
    ("retrieval", "passages"): ("query", "positive"),
    ("classification", "table"): ("text", "label"),
    ("clustering", "table"): ("text", "categories"),
    ("clustering", "clusters"): ("text", "categories"),
    ("sts", "table"): ("sentence1", "sentence2", "score"),
}
OPTIONAL_COLUMNS = {("classification", "table"): ("label_text",), ("retrieval", "passages"): ("negatives",)}
_KEYS = {
    "task_type", "hf_id", "config", "layout", "split", "revision", "columns", "streaming",
    "licence", "citation", "paper_samples", "available", "unavailable_reason", "note",
    "categories_sep", "label_names", "score_range",
}


@dataclass(frozen=True)
class SourceEntry:
    name: str
    task_type: str
    hf_id: str
    layout: str
    split: str
    licence: str
    citation: str
    config: str | None = None
    revision: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    streaming: bool = False
    paper_samples: int | None = None
    available: bool = True
    unavailable_reason: str | None = None
    note: str | None = None
    categories_sep: str | None = None
    label_names: tuple[str, ...] | None = None
    # STS gold scores on another scale than 0-5 (STS22: 1-4) are mapped linearly onto 0-5 at
    # download, so the paper's thresholds (>= 4 positive, <= 2.5 negative) mean the same everywhere.
    score_range: tuple[float, float] = (0.0, 5.0)
    # A user's local file (a recipe `custom:` source, nvdata.custom): load_dataset(file_format,
    # data_files=...) instead of a Hub id; `revision` then holds the file's sha256.
    data_files: str | None = None
    file_format: str | None = None
    # A recipe's own source carries its instruction (nvdata.custom); a registry source's is in
    # instructions/training.yaml.
    instruction: str | None = None
    document_instruction: bool = False

    @property
    def repo_path(self) -> str:
        """``org/name`` part of a mirror path."""
        return self.hf_id

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["label_names"] = list(self.label_names) if self.label_names else None
        d["score_range"] = list(self.score_range)
        return d


def parse_entry(name: str, raw: dict, where: str | None = None) -> SourceEntry:
    """Validate one source mapping; ``where`` prefixes every error (default: the registry's)."""
    where = where or f"registry source {name!r}"
    if not isinstance(raw, dict):
        raise NvdataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise NvdataError(f"{where}: unknown key(s) {sorted(unknown)}")
    for key in ("task_type", "hf_id", "layout", "split", "licence", "citation"):
        if not raw.get(key):
            raise NvdataError(f"{where}: missing required key {key!r}")
    task_type, layout = raw["task_type"], raw["layout"]
    if task_type not in TASK_TYPES:
        raise NvdataError(f"{where}.task_type: {task_type!r} is not one of {TASK_TYPES}")
    if layout not in LAYOUTS:
        raise NvdataError(f"{where}.layout: {layout!r} is not one of {LAYOUTS}")
    if layout in LAYOUT_TASK and task_type != LAYOUT_TASK[layout]:
        raise NvdataError(f"{where}.layout: {layout!r} is only for {LAYOUT_TASK[layout]} sources")
    columns = dict(raw.get("columns") or {})
    required = REQUIRED_COLUMNS.get((task_type, layout), ())
    missing = [c for c in required if c not in columns]
    if missing:
        raise NvdataError(f"{where}.columns: missing mapping for {missing}")
    allowed = set(required) | set(OPTIONAL_COLUMNS.get((task_type, layout), ()))
    extra = set(columns) - allowed
    if extra:
        raise NvdataError(f"{where}.columns: unknown canonical field(s) {sorted(extra)}")
    if raw.get("paper_samples") is not None and not isinstance(raw["paper_samples"], int):
        raise NvdataError(f"{where}.paper_samples: expected an integer or null")
    available = bool(raw.get("available", True))
    if not available and not raw.get("unavailable_reason"):
        raise NvdataError(f"{where}: available: false needs an unavailable_reason")
    names = raw.get("label_names")
    score_range = raw.get("score_range", [0.0, 5.0])
    if (not isinstance(score_range, list) or len(score_range) != 2
            or not all(isinstance(x, (int, float)) for x in score_range)
            or score_range[0] >= score_range[1]):
        raise NvdataError(f"{where}.score_range: expected [low, high] numbers, got {score_range!r}")
    return SourceEntry(
        name=name,
        task_type=task_type,
        hf_id=raw["hf_id"],
        layout=layout,
        split=raw["split"],
        licence=raw["licence"],
        citation=raw["citation"],
        config=raw.get("config"),
        revision=raw.get("revision"),
        columns=columns,
        streaming=bool(raw.get("streaming", False)),
        paper_samples=raw.get("paper_samples"),
        available=available,
        unavailable_reason=raw.get("unavailable_reason"),
        note=raw.get("note"),
        categories_sep=raw.get("categories_sep"),
        label_names=tuple(names) if names else None,
        score_range=(float(score_range[0]), float(score_range[1])),
    )


def load_registry(path: str | Path | None = None) -> dict[str, SourceEntry]:
    """Load and validate the registry; ordered as in the file."""
    p = Path(path) if path else REGISTRY_FILE
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise NvdataError(f"cannot read source registry {p}: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), dict):
        raise NvdataError(f"source registry {p}: expected a top-level 'sources' mapping")
    return {name: parse_entry(name, raw) for name, raw in doc["sources"].items()}


def get_source(name: str, registry: dict[str, SourceEntry] | None = None) -> SourceEntry:
    reg = registry if registry is not None else load_registry()
    if name not in reg:
        raise NvdataError(f"unknown source {name!r}; known: {', '.join(reg)}")
    return reg[name]
