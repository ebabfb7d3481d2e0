"""The user's own sources: a recipe may declare a source that is not in the registry.

A team's domain data (or the synthetic examples of NV-Embed's section 4.3: bring the
generated file) enters the build under ``sources.<name>.custom`` in a recipe::

    sources:
      support_faq:
        custom:
          path: data/faq.jsonl            # Parquet, JSONL or CSV (relative: to the recipe file)
          # hf_id: org/name               # ... or a Hub repo (config, split, revision optional)
          task_type: retrieval            # retrieval | classification | clustering | sts
          columns: {query: question, positive: answer}
          instruction: Given a customer question, retrieve the FAQ answer that resolves it
        max_rows: 50000

``custom_source`` turns the declaration into a :class:`~nvdata.registry.SourceEntry` (the same
validation as a registry entry, errors named by recipe key) and its
:class:`~nvdata.instruct.Instruction`; the build then treats it exactly as a registry source:
download cache, decontamination, formatting, mining, report. A local file is checked when the
recipe is read (it exists, is not empty, has every mapped column) and its sha256 becomes the
entry's ``revision``, so the cache notices an edited file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.fsutil import sha256_file
from nvdata.registry import SourceEntry, parse_entry
from nvdata.schema import TASK_TYPES

# file suffix -> the datasets builder that reads it
FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
DEFAULT_LAYOUT = {"retrieval": "pairs", "classification": "table", "clustering": "table", "sts": "table"}
KEYS = {
    "path", "hf_id", "config", "split", "revision", "task_type", "layout", "columns", "instruction",
    "document_instruction", "licence", "citation", "categories_sep", "label_names", "score_range",
}


def custom_source(name: str, decl, base_dir: Path):
    """(SourceEntry, Instruction) of the declaration at recipe key ``sources.<name>.custom``."""
    from nvdata.instruct import entry_instruction

    where = f"recipe key sources.{name}.custom"
    if not isinstance(decl, dict):
        raise NvdataError(f"{where}: expected a mapping, got {type(decl).__name__}")
    reject_unknown_keys(decl, KEYS, where)
    task_type = decl.get("task_type")
    if task_type not in TASK_TYPES:
        raise NvdataError(f"{where}.task_type: {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    instruction = decl.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise NvdataError(f"{where}.instruction: a non-empty instruction string is required")
    doc_ins = decl.get("document_instruction", task_type == "sts")
    if not isinstance(doc_ins, bool):
        raise NvdataError(f"{where}.document_instruction: expected true/false, got {doc_ins!r}")
    if ("path" in decl) == ("hf_id" in decl):
        raise NvdataError(f"{where}: give exactly one of path (a local file) or hf_id (a Hub repo)")
    columns = decl.get("columns")
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise NvdataError(f"{where}.columns: expected a mapping of canonical field -> column name")
    layout = decl.get("layout", DEFAULT_LAYOUT[task_type])
    raw = {k: decl[k] for k in ("config", "revision", "categories_sep", "label_names", "score_range") if k in decl}
    raw.update(task_type=task_type, layout=layout, columns=columns, split=decl.get("split", "train"),
               licence=decl.get("licence", "declared by the recipe's author"),
               citation=decl.get("citation", f"user data ({decl.get('path') or decl.get('hf_id')})"))
    local = None
    if "path" in decl:
        local = _local_file(decl["path"], base_dir, f"{where}.path")
        raw.update(hf_id=f"local:{local}", revision=sha256_file(local), split="train")
    else:
        raw["hf_id"] = decl["hf_id"]
    entry = replace(parse_entry(name, raw, where), instruction=instruction.strip(), document_instruction=doc_ins)
    if local is not None:
        entry = replace(entry, data_files=str(local), file_format=FILE_FORMATS[local.suffix.lower()])
        _check_columns(entry, local, where)
    return entry, entry_instruction(entry)


def _local_file(path, base_dir: Path, where: str) -> Path:
    if not isinstance(path, str) or not path:
        raise NvdataError(f"{where}: expected a file path, got {path!r}")
    p = Path(path).expanduser()
    p = (p if p.is_absolute() else Path(base_dir) / p).resolve()
    if not p.is_file():
        raise NvdataError(f"{where}: {p} is not a file")
    if p.suffix.lower() not in FILE_FORMATS:
        raise NvdataError(f"{where}: {p.name}: unsupported file type (use {', '.join(FILE_FORMATS)})")
    return p


def file_columns(path: Path) -> tuple[list[str], bool]:
    """(column names, has at least one row) of a local Parquet / JSONL / CSV file, cheaply."""
    kind = FILE_FORMATS[path.suffix.lower()]
    try:
        if kind == "parquet":
            meta = pq.ParquetFile(path)
            return meta.schema_arrow.names, meta.metadata.num_rows > 0
        with open(path, encoding="utf-8", newline="") as f:
            if kind == "csv":
                reader = csv.reader(f)
                header = next(reader, None)
                return (header or []), next(reader, None) is not None
            for line in f:  # JSON Lines: the first non-blank line names the columns
                if line.strip():
                    first = json.loads(line)
                    return (list(first) if isinstance(first, dict) else []), True
            return [], False
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise NvdataError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def _check_columns(entry: SourceEntry, path: Path, where: str) -> None:
    names, has_rows = file_columns(path)
    if not has_rows:
        raise NvdataError(f"{where}.path: {path} is empty (no rows)")
    for field, column in entry.columns.items():
        if column not in names:
            raise NvdataError(f"{where}.columns.{field}: column {column!r} is not in {path.name} (it has {names})")
