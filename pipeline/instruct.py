"""Task instructions and the formatting of raw sources into contrastive rows.

Instructions are data (``instructions/training.yaml`` for the registry's sources,
``instructions/mteb.yaml`` for the MTEB(eng, v1) tasks); this module validates and looks them up,
and turns each task type's canonical raw table into ``schema.FORMATTED`` rows, following
NV-Embed (arXiv 2405.17428, section 4):

* retrieval   - one row per (query, positive); every positive of a query is kept. Negatives
                are left to the dense miner (``negative_method = "none"``).
* sts         - each pair ``(ta, tb, score)`` with ``score >= sts_min_score`` (4) gives two rows,
                ``ta -> tb`` and ``tb -> ta``; negatives are left to the BM25 miner.
* classification / clustering - negatives at formatting time (``nvdata.mine.labels``):
                label-based (d+ = the label, d- = other labels; NV-Embed v1) or example-based
                (d+ = another example of the class, d- = examples of other classes; v2).

A row's query is seen by a model as ``Instruct: {instruction}\\nQuery: {query}``
(:func:`nvdata.schema.instructed_query`); instruction and raw query are stored apart. A row's
``document_instruction`` is the instruction when the task's data says documents carry it (STS),
else null. Every row's ``id`` is ``content_id(source, instruction, query, positive)``. Rows are
de-duplicated within a source by (normalized query, normalized positive), the first kept and the
rest counted as ``duplicates_merged`` (:mod:`nvdata.dedup`), for every task type.

What is dropped is counted in the report, never silently: blank texts (empty or whitespace
only), rows for which no negative (or, example-based, no positive) exists, STS pairs below the
threshold, and duplicates. Bad values (a non-numeric or NaN score, a missing column) raise
:class:`~nvdata.errors.NvdataError` naming the source and ``row_index``.

>>> from nvdata.registry import get_source
>>> import pyarrow as pa
>>> raw = pa.table({"row_index": [0], "query_id": ["q"], "query": ["what is nv-embed"],
...                 "positive_id": ["d"], "positive": ["An embedding model."]})
>>> rows, report = format_source(get_source("msmarco"), raw, FormatConfig(), seed=42)
>>> rows.column("instruction")[0].as_py()
'Given a web search query, retrieve relevant passages that answer the query'
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from nvdata.dedup import KEY_BYTES, FirstSeen, row_key
from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.mine import labels as lab
from nvdata.registry import SourceEntry
from nvdata.schema import FORMATTED, FORMATTED_KEYED, ROW_KEY
from nvdata.text import content_id, text_hash

TRAINING_FILE = "training.yaml"
MTEB_FILE = "mteb.yaml"
ORIGINS = ("nv-embed", "e5-mistral", "nvdata")
_ENTRY_KEYS = {"instruction", "origin", "reference", "based_on", "document_instruction"}


# -- instructions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One task instruction and where it comes from (see the header of ``training.yaml``)."""

    name: str
    kind: str  # "training" (a registry source) or "mteb" (an MTEB task)
    instruction: str
    origin: str
    document_instruction: bool = False
    reference: str | None = None
    based_on: str | None = None

    @property
    def document_text(self) -> str | None:
        """The value of a row's ``document_instruction`` column."""
        return self.instruction if self.document_instruction else None

    def row(self) -> dict:
        return {
            "set": self.kind,
            "name": self.name,
            "instruction": self.instruction,
            "document_instruction": self.document_instruction,
            "origin": self.origin,
            "reference": self.reference or (f"based on {self.based_on}" if self.based_on else None),
        }


@dataclass(frozen=True)
class Instructions:
    """The two instruction sets: ``sources`` (training, by registry name), ``tasks`` (MTEB)."""

    sources: Mapping[str, Instruction]
    tasks: Mapping[str, Instruction]
    benchmark: str


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a repeated mapping key (plain YAML keeps the last silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _DuplicateKey(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except _DuplicateKey as e:
        raise NvdataError(f"instruction file {path}: {e}") from e
    except (OSError, yaml.YAMLError) as e:
        raise NvdataError(f"cannot read instruction file {path}: {e}") from e


def _parse_entry(name: Any, raw: Any, kind: str, where: str) -> Instruction:
    where = f"{where}.{name}"
    if not isinstance(name, str) or not name:
        raise NvdataError(f"{where}: names must be non-empty strings")
    if not isinstance(raw, dict):
        raise NvdataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise NvdataError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
    text = raw.get("instruction")
    if not isinstance(text, str) or not text.strip():
        raise NvdataError(f"{where}.instruction: expected a non-empty string")
    if text != text.strip() or "\n" in text:
        raise NvdataError(f"{where}.instruction: must be one line without surrounding spaces")
    origin = raw.get("origin")
    if origin not in ORIGINS:
        raise NvdataError(f"{where}.origin: {origin!r} is not one of {ORIGINS}")
    if origin != "nvdata" and not raw.get("reference"):
        raise NvdataError(f"{where}.reference: required when origin is {origin!r} (say where it was checked)")
    doc = raw.get("document_instruction", False)
    if not isinstance(doc, bool):
        raise NvdataError(f"{where}.document_instruction: expected true/false, got {doc!r}")
    for key in ("reference", "based_on"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise NvdataError(f"{where}.{key}: expected a string")
    return Instruction(name, kind, text, origin, doc, raw.get("reference"), raw.get("based_on"))


def _parse_set(path: Path, top: str, kind: str) -> tuple[dict[str, Instruction], dict]:
    doc = _read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get(top), dict):
        raise NvdataError(f"instruction file {path}: expected a top-level {top!r} mapping")
    entries = {name: _parse_entry(name, raw, kind, f"{path.name}:{top}") for name, raw in doc[top].items()}
    return entries, doc


def load_instructions(folder: str | Path | None = None) -> Instructions:
    """Load and validate ``training.yaml`` and ``mteb.yaml`` (default: the bundled folder)."""
    from nvdata.paths import data_dir

    root = Path(folder) if folder is not None else data_dir("instructions")
    sources, _ = _parse_set(root / TRAINING_FILE, "sources", "training")
    tasks, doc = _parse_set(root / MTEB_FILE, "tasks", "mteb")
    return Instructions(sources, tasks, str(doc.get("benchmark", "")))


def _lookup(table: Mapping[str, Instruction], name: str, what: str) -> Instruction:
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise NvdataError(f"no instruction for {what} {name!r}{hint}")


def source_instruction(name: str, instructions: Instructions | None = None) -> Instruction:
    """The full training-instruction record of a registry source."""
    return _lookup((instructions or load_instructions()).sources, name, "source")


def entry_instruction(entry: SourceEntry, instructions: Instructions | None = None) -> Instruction:
    """The instruction of a source: its own when a recipe declared it (``nvdata.custom``), else
    the registry source's from ``instructions/training.yaml``."""
    if entry.instruction is not None:
        return Instruction(entry.name, "training", entry.instruction, "recipe", entry.document_instruction,
                           reference="declared in the recipe (sources.<name>.custom)")
    return source_instruction(entry.name, instructions)


def task_instruction(name: str, instructions: Instructions | None = None) -> Instruction:
    """The full evaluation-instruction record of an MTEB task."""
    return _lookup((instructions or load_instructions()).tasks, name, "MTEB task")


def instruction_for_source(name: str, instructions: Instructions | None = None) -> str:
    """The training instruction of a registry source (NvdataError if it has none)."""
    return source_instruction(name, instructions).instruction


def instruction_for_task(mteb_task_name: str, instructions: Instructions | None = None) -> str:
    """The evaluation instruction of an MTEB(eng, v1) task (NvdataError if it has none)."""
    return task_instruction(mteb_task_name, instructions).instruction


def instruction_rows(name: str | None = None, instructions: Instructions | None = None) -> list[dict]:
    """Rows for ``nvdata instructions [NAME]``: every instruction, or those of NAME.

    NAME is a registry source or an MTEB task, matched exactly, else case-insensitively.
    Columns: set, name, instruction, document_instruction, origin, reference.
    """
    ins = instructions or load_instructions()
    every = [*ins.sources.values(), *ins.tasks.values()]
    if name is None:
        return [i.row() for i in every]
    hits = [i for i in every if i.name == name] or [i for i in every if i.name.lower() == name.lower()]
    if not hits:
        close = difflib.get_close_matches(name, [i.name for i in every], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NvdataError(f"no instruction for {name!r} (neither a registry source nor an MTEB task){hint}")
    return [i.row() for i in hits]


# -- options -----------------------------------------------------------------------------------

MODES = ("label", "example")


@dataclass(frozen=True)
class FormatConfig:
    """Formatting options (the recipe's ``format:`` block). Defaults: NV-Embed v1 / the paper.

    classification_mode, clustering_mode  "label" (v1) or "example" (v2, section 5.2.4).
    example_sources       restrict example mode to these sources (None: every source of the
                          task type that is in example mode).
    example_min_labels    a source with fewer labels stays label-based in example mode; the
                          paper keeps label texts for binary tasks ("For binary classification
                          tasks the label texts are used as documents").
    num_negatives         label/example negatives per row (fewer when the dataset has fewer).
    sts_min_score         an STS pair makes rows when ``score >= sts_min_score``.
    """

    classification_mode: str = "label"
    clustering_mode: str = "label"
    example_sources: tuple[str, ...] | None = None
    example_min_labels: int = 3
    num_negatives: int = 1
    sts_min_score: float = 4.0

    def __post_init__(self):
        # Lists from YAML become tuples so the config stays hashable; ints are fine as scores.
        if isinstance(self.example_sources, list):
            object.__setattr__(self, "example_sources", tuple(self.example_sources))
        v = self.sts_min_score
        if isinstance(v, int) and not isinstance(v, bool):
            object.__setattr__(self, "sts_min_score", float(v))
        self._validate(self, "format")

    @staticmethod
    def _validate(cfg: FormatConfig, where: str) -> None:
        for key in ("classification_mode", "clustering_mode"):
            if getattr(cfg, key) not in MODES:
                raise NvdataError(f"{where}.{key}: {getattr(cfg, key)!r} is not one of {MODES}")
        for key, low in (("example_min_labels", 2), ("num_negatives", 1)):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise NvdataError(f"{where}.{key}: expected an integer >= {low}, got {v!r}")
        v = cfg.sts_min_score
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise NvdataError(f"{where}.sts_min_score: expected a number, got {v!r}")
        srcs = cfg.example_sources
        if srcs is not None and (
            not isinstance(srcs, tuple) or not all(isinstance(s, str) and s for s in srcs)
        ):
            raise NvdataError(f"{where}.example_sources: expected a list of source names, got {srcs!r}")

    @classmethod
    def from_dict(cls, d: Mapping | None, where: str = "format") -> FormatConfig:
        """Build from a recipe's ``format:`` mapping; a bad key or value names ``where.key``."""
        d = dict(d or {})
        reject_unknown_keys(d, (f.name for f in fields(cls)), where)
        try:
            return cls(**d)
        except NvdataError as e:  # re-anchor the message at the recipe's key
            raise NvdataError(str(e).replace("format.", f"{where}.", 1)) from None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["example_sources"] = list(self.example_sources) if self.example_sources is not None else None
        return d

    def mode_for(self, entry: SourceEntry, num_labels: int) -> str:
        """label or example, for this source (clustering and classification have their own switch)."""
        mode = self.clustering_mode if entry.task_type == "clustering" else self.classification_mode
        if mode == "example" and self.example_sources is not None and entry.name not in self.example_sources:
            return "label"
        if mode == "example" and num_labels < self.example_min_labels:
            return "label"
        return mode


# -- formatting --------------------------------------------------------------------------------

_REQUIRED = {
    "retrieval": ("row_index", "query_id", "query", "positive_id", "positive"),
    "sts": ("row_index", "sentence1", "sentence2", "score"),
    "classification": ("row_index", "text", "label", "label_text"),
    "clustering": ("row_index", "text", "categories"),
}


def _check_columns(entry: SourceEntry, table: pa.Table | pa.RecordBatch) -> None:
    missing = [c for c in _REQUIRED[entry.task_type] if c not in table.schema.names]
    if missing:
        raise NvdataError(
            f"source {entry.name!r}: raw {entry.task_type} table lacks column(s) {missing} "
            f"(has {table.schema.names})"
        )


def _blank(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where a text is null, empty or whitespace only."""
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
    return np.asarray(pc.fill_null(empty, True).to_numpy(zero_copy_only=False), dtype=bool)


def _row_indices(table: pa.Table | pa.RecordBatch) -> list:
    return table.column("row_index").to_pylist()


def _empty_cols() -> dict:
    return {k: [] for k in ("id", "query", "positive", "negatives", "query_id", "positive_id", "key")}


@dataclass
class _Rows:
    """Formatted rows accumulated column-wise (one batch at a time), each with its identity key
    (:func:`nvdata.dedup.row_key`): the candidates :class:`FirstRows` then keeps or merges."""

    source: str
    task_type: str
    ins: Instruction
    method: str
    cols: dict = field(default_factory=_empty_cols)

    def add(self, query: str, positive: str, query_id: str, positive_id: str, negatives=()) -> None:
        c = self.cols
        c["key"].append(row_key(query, positive))
        c["id"].append(content_id(self.source, self.ins.instruction, query, positive))
        c["query"].append(query)
        c["positive"].append(positive)
        c["negatives"].append(list(negatives))
        c["query_id"].append(query_id)
        c["positive_id"].append(positive_id)

    def take(self) -> pa.Table:
        """The rows added since the last take, as a ``schema.FORMATTED_KEYED`` table."""
        c = self.cols
        n = len(c["id"])
        table = pa.table(
            {
                "id": c["id"],
                "source": [self.source] * n,
                "task_type": [self.task_type] * n,
                "instruction": [self.ins.instruction] * n,
                "query": c["query"],
                "positive": c["positive"],
                "negatives": c["negatives"],
                # Label/example negatives are drawn, not scored: no scores (an empty list, not
                # NaN, which would break equality checks and JSON export).
                "negative_scores": [[] for _ in range(n)],
                "positive_score": pa.nulls(n, pa.float32()),
                "negative_method": [self.method] * n,
                "in_batch_negatives": [False] * n,
                "document_instruction": [self.ins.document_text] * n,
                "query_id": c["query_id"],
                "positive_id": c["positive_id"],
                ROW_KEY: pa.array(c["key"], pa.binary(KEY_BYTES)),
            },
            schema=FORMATTED_KEYED,
        )
        self.cols = _empty_cols()
        return table


def row_keys(keyed: pa.Table) -> np.ndarray:
    """The ``row_key`` column of a ``FORMATTED_KEYED`` table as a numpy ``S12`` array: a view
    of the Arrow buffer, no Python object per row."""
    col = keyed.column(ROW_KEY)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(col) == 0:
        return np.zeros(0, dtype=f"S{KEY_BYTES}")
    return np.frombuffer(col.buffers()[1], dtype=f"S{KEY_BYTES}", count=len(col), offset=col.offset * KEY_BYTES)


class FirstRows:
    """The ordered reduction of formatting: of a source's keyed rows, fed in source order, the
    first row of each (normalized query, normalized positive) identity; the rest are counted
    as ``merged``. Holds 12 bytes per kept row (:class:`nvdata.dedup.FirstSeen`) and no
    Python object per row; the keys come computed (:class:`BatchFormatter`, anywhere)."""

    def __init__(self) -> None:
        self.seen = FirstSeen()

    def merge(self, keyed: pa.Table) -> pa.Table:
        """``keyed`` (``schema.FORMATTED_KEYED``) less the rows seen before, as ``schema.FORMATTED``."""
        keep = self.seen.keep_new(row_keys(keyed))
        rows = keyed.drop_columns([ROW_KEY])
        return rows if keep.all() else rows.filter(pa.array(keep))

    @property
    def rows_out(self) -> int:
        return self.seen.count

    @property
    def merged(self) -> int:
        return self.seen.merged


@dataclass
class FormatCounts:
    """The raw rows a formatter read and those it dropped, by reason (STS: pairs); summed over
    batches and parts. JSON-able (``asdict``) so a distributed map can hand it back."""

    rows_in: int
    dropped: dict[str, int]

    @classmethod
    def zero(cls, task_type: str) -> FormatCounts:
        return cls(0, {"empty_text": 0, **({"below_min_score": 0} if task_type == "sts" else {})})

    @classmethod
    def total(cls, task_type: str, parts: Iterable[Mapping]) -> FormatCounts:
        """The sum of ``asdict(FormatCounts)`` of a source's parts."""
        out = cls.zero(task_type)
        for p in parts:
            out.rows_in += p["rows_in"]
            for reason, n in p["dropped"].items():
                out.dropped[reason] += n
        return out


class BatchFormatter:
    """The per-batch map of retrieval and STS formatting: a raw batch -> its candidate rows as a
    ``schema.FORMATTED_KEYED`` table (instruction, ids and each row's identity key, the costly
    part: ``normalize_text`` and a hash per text), in the batch's order, before duplicates
    across the source are merged (:class:`FirstRows`, in source order).

    Neither task type draws anything at random, so a batch's rows depend on the batch alone:
    batches can be formatted anywhere, in any order. ``counts`` sums what was read and dropped.
    Classification and clustering need their label set and class pools first: use
    :func:`format_source` on the whole table.
    """

    def __init__(self, entry: SourceEntry, cfg: FormatConfig, instructions: Instructions | None = None):
        if entry.task_type not in ("retrieval", "sts"):
            raise NvdataError(
                f"source {entry.name!r}: {entry.task_type} rows need the whole table (label set, "
                "class pools); use format_source"
            )
        self.entry, self.cfg = entry, cfg
        self.ins = entry_instruction(entry, instructions)
        self.counts = FormatCounts.zero(entry.task_type)

    def format_batch(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        _check_columns(self.entry, batch)
        self.counts.rows_in += batch.num_rows
        rows = _Rows(self.entry.name, self.entry.task_type, self.ins, "none")
        if self.entry.task_type == "retrieval":
            self._retrieval(batch, rows)
        else:
            self._sts(batch, rows)
        return rows.take()

    def _retrieval(self, batch, rows: _Rows) -> None:
        blank = _blank(batch.column("query")) | _blank(batch.column("positive"))
        self.counts.dropped["empty_text"] += int(blank.sum())
        cols = [batch.column(c).to_pylist() for c in ("query", "positive", "query_id", "positive_id")]
        add = rows.add
        for i, (q, p, qid, pid) in enumerate(zip(*cols)):
            if not blank[i]:
                add(q, p, qid, pid)

    def _sts(self, batch, rows: _Rows) -> None:
        scores = _sts_scores(self.entry.name, batch)
        blank = _blank(batch.column("sentence1")) | _blank(batch.column("sentence2"))
        keep = scores >= self.cfg.sts_min_score
        dropped = self.counts.dropped
        dropped["below_min_score"] += int((~keep).sum())
        dropped["empty_text"] += int((keep & blank).sum())
        s1, s2 = batch.column("sentence1").to_pylist(), batch.column("sentence2").to_pylist()
        add = rows.add
        for i in np.nonzero(keep & ~blank)[0]:
            a, b = s1[i], s2[i]
            ida, idb = content_id(a), content_id(b)
            add(a, b, ida, idb)
            add(b, a, idb, ida)


def streamed_report(entry: SourceEntry, cfg: FormatConfig, counts: FormatCounts, first: FirstRows,
                    instructions: Instructions | None = None) -> dict:
    """The format report of a retrieval / STS source from its map's ``counts`` and its reduction."""
    return _report(entry, entry_instruction(entry, instructions), counts, "none", cfg, first.rows_out, first.merged)


class StreamingFormatter:
    """Formats a retrieval or STS source batch by batch in one process: each batch through
    :class:`BatchFormatter` then :class:`FirstRows`, so batches must be fed in source order
    (a distributed executor runs the two steps apart: :mod:`nvdata.stages.format`).

    >>> fmt = StreamingFormatter(entry, FormatConfig())          # doctest: +SKIP
    >>> for batch in pq.ParquetFile(path).iter_batches():        # doctest: +SKIP
    ...     write(fmt.feed(batch))
    >>> fmt.report                                               # doctest: +SKIP
    """

    def __init__(self, entry: SourceEntry, cfg: FormatConfig, instructions: Instructions | None = None):
        self.batches = BatchFormatter(entry, cfg, instructions)
        self.first = FirstRows()

    def feed(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        """The batch's ``schema.FORMATTED`` rows that repeat no earlier row of the source."""
        return self.first.merge(self.batches.format_batch(batch))

    @property
    def report(self) -> dict:
        b = self.batches
        return _report(b.entry, b.ins, b.counts, "none", b.cfg, self.first.rows_out, self.first.merged)


def _sts_scores(source: str, batch) -> np.ndarray:
    """The score column as float64; a missing, non-numeric or NaN score is an error."""
    col = batch.column("score")
    rows = None
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_decimal(col.type):
        values = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        nulls = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
        bad = np.nonzero(nulls | ~np.isfinite(values))[0]
        if len(bad):
            rows = _row_indices(batch)
            i = int(bad[0])
            what = "missing" if nulls[i] else f"{values[i]!r}"
            raise NvdataError(f"source {source!r}: row_index {rows[i]}: score is {what}; expected a finite number")
        return values
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # Some Hub copies store scores as text ("4.2"); numbers in text are read, anything else
        # names its row.
        out = np.empty(len(col), dtype=np.float64)
        for i, v in enumerate(col.to_pylist()):
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = float("nan")
            if not math.isfinite(x):
                rows = rows or _row_indices(batch)
                raise NvdataError(f"source {source!r}: row_index {rows[i]}: score {v!r} is not a finite number")
            out[i] = x
        return out
    raise NvdataError(f"source {source!r}: score column has type {col.type}; expected numbers")


def _report(entry, ins: Instruction, counts: FormatCounts, method: str, cfg: FormatConfig, rows_out: int,
            merged: int, **extra) -> dict:
    return {
        "source": entry.name,
        "task_type": entry.task_type,
        "instruction": ins.instruction,
        "document_instruction": ins.document_instruction,
        "negative_method": method,
        "rows_in": counts.rows_in,
        "rows_out": rows_out,
        "dropped": dict(counts.dropped),  # raw rows (STS: pairs) not turned into rows, by reason
        # rows not emitted because an earlier row has the same normalized query and positive
        "duplicates_merged": merged,
        "config": cfg.to_dict(),
        **extra,
    }


def format_source(
    entry: SourceEntry,
    raw: pa.Table,
    cfg: FormatConfig,
    seed: int,
    instructions: Instructions | None = None,
) -> tuple[pa.Table, dict]:
    """Format one source's canonical raw table into ``schema.FORMATTED`` rows plus a report.

    ``raw`` is the raw table of the source's task type (for retrieval, the pairs table). The
    result is a function of (raw, cfg, seed, the instruction files): same inputs, same rows in
    the same order. ``in_batch_negatives`` is False here; the build sets it per recipe stage.
    """
    if entry.task_type in ("retrieval", "sts"):
        fmt = StreamingFormatter(entry, cfg, instructions)
        _check_columns(entry, raw)
        parts = [fmt.feed(b) for b in raw.to_batches()]
        table = pa.concat_tables(parts) if parts else FORMATTED.empty_table()
        return table, fmt.report
    report: dict = {}
    parts = list(format_labelled(entry, raw, cfg, seed, report, instructions))
    return (pa.concat_tables(parts) if parts else FORMATTED.empty_table()), report


def format_labelled(
    entry: SourceEntry,
    raw: pa.Table,
    cfg: FormatConfig,
    seed: int,
    report: dict,
    instructions: Instructions | None = None,
    batch_rows: int = 8192,
):
    """Yield a classification / clustering source's rows in tables of ``batch_rows``; fill ``report``.

    A per-source reduction: label / example negatives are drawn from the whole source's label
    pools, held as Arrow text arrays and numpy label indices (no Python object per row); the
    rows are then built and yielded a block at a time.
    """
    _check_columns(entry, raw)
    ins = entry_instruction(entry, instructions)
    rng = lab.rng_for(seed, entry.name)
    data = _classification_labels(entry, raw) if entry.task_type == "classification" else _clustering_labels(entry, raw)
    yield from _format_labelled(entry, raw, cfg, rng, ins, data, report, batch_rows)


@dataclass(frozen=True)
class _Labelled:
    """A classification/clustering table reduced to what sampling needs (blank texts removed)."""

    texts: pa.Array  # string, one per kept row
    sets: lab.LabelSets
    label_text: tuple[str, ...]  # display text per label index
    own_text: pa.Array | None  # classification: each row's own label_text (d+ in label mode)
    dropped: dict


def _strings(col) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.cast(col, pa.string())


def _classification_labels(entry: SourceEntry, raw: pa.Table) -> _Labelled:
    labels = raw.column("label")
    if labels.null_count:
        i = int(np.nonzero(np.asarray(pc.is_null(labels).to_numpy(zero_copy_only=False)))[0][0])
        raise NvdataError(f"source {entry.name!r}: row_index {_row_indices(raw)[i]}: label is missing")
    keep = ~_blank(raw.column("text"))
    mask = pa.array(keep)
    texts = _strings(raw.column("text")).filter(mask)
    label_ids = _strings(labels).filter(mask)
    label_text = _strings(raw.column("label_text")).filter(mask)
    shown = pc.if_else(pa.array(_blank(label_text)), label_ids, label_text)
    names = tuple(sorted(pc.unique(label_ids).to_pylist()))
    values = np.asarray(pc.index_in(label_ids, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False),
                        dtype=np.int64)
    sets = lab.LabelSets(names, np.arange(len(values) + 1, dtype=np.int64), values)
    # A label's display text is the label_text of its first row (the raw table's order).
    first = np.unique(values, return_index=True)[1]
    return _Labelled(texts, sets, tuple(shown.take(pa.array(first)).to_pylist()), shown,
                     {"empty_text": int((~keep).sum())})


def _clustering_labels(entry: SourceEntry, raw: pa.Table) -> _Labelled:
    keep = ~_blank(raw.column("text"))
    cats = raw.column("categories")
    cats = cats.combine_chunks() if isinstance(cats, pa.ChunkedArray) else cats
    parent = np.asarray(pc.list_parent_indices(cats), dtype=np.int64)
    flat = pc.utf8_trim_whitespace(_strings(pc.list_flatten(cats)))
    ok = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False).to_numpy(zero_copy_only=False), dtype=bool)
    ok &= keep[parent]
    flat, parent = flat.filter(pa.array(ok)), parent[ok]
    has = np.zeros(len(keep), dtype=bool)
    has[parent] = True
    rows = np.flatnonzero(keep & has)  # rows with a text and at least one category, in order
    names = tuple(sorted(pc.unique(flat).to_pylist()))
    label = np.asarray(pc.index_in(flat, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False),
                       dtype=np.int64)
    new_row = np.searchsorted(rows, parent)  # rows are ascending, every parent is among them
    # A row's labels: distinct, in first-seen order.
    first = np.sort(np.unique(new_row * max(len(names), 1) + label, return_index=True)[1])
    new_row, label = new_row[first], label[first]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_row, minlength=len(rows)), out=offsets[1:])
    sets = lab.LabelSets(names, offsets, label)
    texts = _strings(raw.column("text")).take(pa.array(rows))
    return _Labelled(texts, sets, sets.names, None,
                     {"empty_text": int((~keep).sum()), "no_label": int((keep & ~has).sum())})


_SAME_TEXT_TRIES = 4


def _format_labelled(entry, raw, cfg: FormatConfig, rng, ins: Instruction, data: _Labelled, report: dict,
                     batch_rows: int):
    sets, texts = data.sets, data.texts
    n = len(texts)
    mode = cfg.mode_for(entry, sets.num_labels)
    k = cfg.num_negatives
    dropped = dict(data.dropped, no_positive=0, no_negative=0)
    rows, first = _Rows(entry.name, entry.task_type, ins, mode), FirstRows()
    labels = pa.array(data.label_text, pa.string())
    if mode == "label":
        if data.own_text is not None:  # classification: the row's own label text
            pos_text = data.own_text
        else:  # clustering: one of the row's categories
            pos_text = labels.take(pa.array(lab.sample_member(sets, rng)))
        neg_idx, neg_pool = lab.sample_other_labels(sets, k, rng), labels
        pos_row = None
    else:
        pools = lab.class_pools(sets)
        pos_label = lab.sample_member(sets, rng)
        pos_row = lab.sample_example_of(pos_label, pools, rng, exclude=np.arange(sets.num_rows))
        # A repeated text in the dataset (the same text by normalize_text) can be drawn as its
        # own positive: redraw a few times, then give up on the row (counted as no_positive).
        identity = np.array([text_hash(t) for t in texts.to_pylist()])
        for attempt in range(_SAME_TEXT_TRIES + 1):
            drawn = np.flatnonzero(pos_row >= 0)
            same = drawn[identity[pos_row[drawn]] == identity[drawn]]
            if len(same) == 0:
                break
            if attempt == _SAME_TEXT_TRIES:
                pos_row[same] = -1
            else:
                pos_row[same] = lab.sample_example_of(pos_label[same], pools, rng, exclude=same)
        neg_idx, neg_pool = lab.sample_example_negatives(sets, pools, k, rng), texts
        pos_text = None
    has_neg = (neg_idx >= 0).any(axis=1)
    out_rows = 0
    for start in range(0, n, batch_rows):
        stop = min(n, start + batch_rows)
        block = np.arange(start, stop)
        if pos_row is not None:
            no_pos = pos_row[block] < 0
            dropped["no_positive"] += int(no_pos.sum())
            block = block[~no_pos]
        no_neg = ~has_neg[block]
        dropped["no_negative"] += int(no_neg.sum())
        block = block[~no_neg]
        if len(block) == 0:
            continue
        q_texts = texts.take(pa.array(block)).to_pylist()
        if pos_row is None:
            p_texts = pos_text.take(pa.array(block)).to_pylist()
            p_ids = [content_id(p) for p in p_texts]
        else:
            p_texts = texts.take(pa.array(pos_row[block])).to_pylist()
            p_ids = [content_id(p) for p in p_texts]
        negs = neg_idx[block]
        valid = negs >= 0
        flat = neg_pool.take(pa.array(negs[valid])).to_pylist()
        cuts = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
        for i, (q, p, pid) in enumerate(zip(q_texts, p_texts, p_ids)):
            rows.add(q, p, content_id(q), pid, flat[cuts[i] : cuts[i + 1]])
        table = first.merge(rows.take())
        out_rows += table.num_rows
        yield table
    report.update(_report(entry, ins, FormatCounts(raw.num_rows, dropped), mode, cfg, out_rows, first.merged,
                          num_labels=sets.num_labels))
