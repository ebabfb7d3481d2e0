"""Decontamination against the MTEB test sets (NV-Embed, arXiv 2405.17428, section 4).

The datatrove shape: an indexer hashes the test sets once (``build_test_index``, cached on
disk), a filter streams training rows against it and records why it drops each one. Three
methods, each reported on its own:

1. ``exact``: equal normalized text (``text.normalize_text``);
2. ``ngram``: a shared ``ngram_n``-gram (13) of normalized words; a test text of
   ``min_ngram_words`` (8) to n-1 words counts as one n-gram of its own length, so a training
   text containing it whole matches; shorter test texts match exactly only;
3. ``near_dup``: MinHash LSH over word ``shingle_size``-shingles (5), confirmed by the true
   Jaccard >= ``minhash_threshold`` (0.8).

A row is dropped when any checked field matches. In published rows (``scan_rows``) a
matching negative may instead be removed from its row (``negative_policy: drop_negative``);
either way every hit is recorded: row id, field, test set, split, item id, method, evidence,
and both texts whole (the training text and the test text it matched).

Example::

    cfg = DecontamConfig.from_dict({"negative_policy": "drop_negative"}, where="decontam")
    index = build_test_index(cfg, mirror=None, cache_dir=Path("cache"))
    clean, hits = decontaminate_table(raw, ["query", "positive"], source="nq", index=index,
                                      cfg=cfg, id_column="row_index", counts=counts)
    write_report(hits, counts, Path("out/reports"), index=index, cfg=cfg)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nvdata.decontam.index import TestIndex, build_test_index
from nvdata.decontam.match import METHODS, Matcher
from nvdata.decontam.report import summarize, write_report
from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.fsutil import sha256_file
from nvdata.stages.io import parquet_file

__all__ = [
    "DecontamConfig", "DecontamCounts", "TestIndex", "build_test_index", "iter_decontaminate",
    "decontaminate_table", "scan_rows", "summarize", "write_report", "audit_build", "METHODS",
]

NEGATIVE_POLICIES = ("drop_row", "drop_negative")


@dataclass(frozen=True)
class DecontamConfig:
    """Options of the decontamination stage (recipe key ``decontam``); defaults are the issue's."""

    benchmarks: tuple[str, ...] = ("MTEB(eng, v1)",)
    add_tasks: tuple[str, ...] = ()  # mteb task names added to the benchmarks' tasks
    drop_tasks: tuple[str, ...] = ()  # task (or aggregate) names removed
    methods: tuple[str, ...] = METHODS
    ngram_n: int = 13
    min_ngram_words: int = 8
    shingle_size: int = 5
    minhash_threshold: float = 0.8
    num_perm: int = 128
    minhash_seed: int = 1
    negative_policy: str = "drop_row"  # drop_row | drop_negative
    batch_size: int = 8192  # rows per scanned record batch

    def __post_init__(self) -> None:
        _validate(self, "decontam")

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "decontam") -> DecontamConfig:
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        reject_unknown_keys(d, known, where)
        values = {}
        for k, v in d.items():
            default = known[k].default
            if isinstance(default, tuple):
                if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                    raise NvdataError(f"{where}.{k}: expected a list of strings, got {v!r}")
                v = tuple(v)
            elif isinstance(default, bool) or isinstance(v, bool):
                raise NvdataError(f"{where}.{k}: expected {type(default).__name__}, got {v!r}")
            elif isinstance(default, float):
                if not isinstance(v, (int, float)):
                    raise NvdataError(f"{where}.{k}: expected a number, got {v!r}")
                v = float(v)
            elif not isinstance(v, type(default)):
                raise NvdataError(f"{where}.{k}: expected {type(default).__name__}, got {v!r}")
            values[k] = v
        cfg = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(cfg, f.name, values.get(f.name, f.default))
        _validate(cfg, where)
        return cfg

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def index_options(self) -> dict:
        """The options that shape the test index (its cache key); scan-only options excluded."""
        d = self.to_dict()
        for k in ("negative_policy", "batch_size"):
            d.pop(k)
        return d


def _validate(cfg: DecontamConfig, where: str) -> None:
    def bad(key: str, why: str) -> NvdataError:
        return NvdataError(f"{where}.{key}: {why} (got {getattr(cfg, key)!r})")

    if not cfg.methods or any(m not in METHODS for m in cfg.methods):
        raise bad("methods", f"expected a non-empty subset of {list(METHODS)}")
    if not cfg.benchmarks and not cfg.add_tasks:
        raise bad("benchmarks", "no test sets: give benchmarks or add_tasks")
    for key, lo in (("ngram_n", 1), ("min_ngram_words", 1), ("shingle_size", 1), ("num_perm", 16), ("batch_size", 1)):
        if getattr(cfg, key) < lo:
            raise bad(key, f"must be >= {lo}")
    if cfg.min_ngram_words > cfg.ngram_n:
        raise bad("min_ngram_words", f"must be <= ngram_n ({cfg.ngram_n})")
    if not 0.0 < cfg.minhash_threshold <= 1.0:
        raise bad("minhash_threshold", "must be in (0, 1]")
    if cfg.negative_policy not in NEGATIVE_POLICIES:
        raise bad("negative_policy", f"must be one of {list(NEGATIVE_POLICIES)}")


@dataclass
class DecontamCounts:
    """What was checked, per source (what was dropped is counted from the hits)."""

    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, source: str, rows: int, texts: int) -> None:
        c = self.sources.setdefault(source, {"rows_checked": 0, "texts_checked": 0})
        c["rows_checked"] += rows
        c["texts_checked"] += texts

    def to_dict(self) -> dict:
        return {s: dict(c) for s, c in self.sources.items()}


# -- scanning -------------------------------------------------------------------------------
def iter_decontaminate(
    batches: Iterable[pa.RecordBatch],
    fields: list[str],
    *,
    index: TestIndex,
    cfg: DecontamConfig,
    id_column: str,
    source: str | None = None,
    hits: list[dict],
    counts: DecontamCounts | None = None,
    list_fields: dict[str, list[str]] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches, yield them without contaminated rows, append every hit to ``hits``.

    ``fields`` are string columns: a hit drops the row. ``list_fields`` maps a list<string>
    column to the list columns aligned with it (``{"negatives": ["negative_scores"]}``): a hit
    drops the row, or under ``negative_policy: drop_negative`` only that element (and the
    aligned elements). ``source=None`` reads each row's source from its ``source`` column.
    """
    matcher = Matcher(index, cfg)
    list_fields = list_fields or {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        missing = [f for f in [*fields, *list_fields, id_column] if f not in batch.schema.names]
        if missing:
            raise NvdataError(f"decontam: source {source or '?'}: missing column(s) {missing}")
        yield _scan_batch(batch, fields, list_fields, matcher, cfg, id_column, source, hits, counts)


def _scan_batch(batch, fields, list_fields, matcher, cfg, id_column, source, hits, counts) -> pa.RecordBatch:
    n = batch.num_rows
    names = [*fields, *list_fields]
    arrays, rows, codes, elems = [], [], [], []
    for code, f in enumerate(fields):
        arrays.append(batch.column(f).cast(pa.string()))
        rows.append(np.arange(n))
        codes.append(np.full(n, code))
        elems.append(np.full(n, -1))
    for code, f in enumerate(list_fields, start=len(fields)):
        col = batch.column(f)
        parent = np.asarray(pc.list_parent_indices(col), dtype=np.int64)
        offsets = np.asarray(col.offsets, dtype=np.int64)
        arrays.append(pc.list_flatten(col).cast(pa.string()))
        rows.append(parent)
        codes.append(np.full(len(parent), code))
        elems.append(np.arange(len(parent)) + offsets[0] - offsets[parent])  # position in its row
    text_row, text_code, text_elem = (np.concatenate(x) for x in (rows, codes, elems))
    texts = pa.concat_arrays(arrays)

    sources = [source] * n if source is not None else batch.column("source").to_pylist()
    if counts is not None:
        non_null = np.asarray(pc.is_valid(texts).to_numpy(zero_copy_only=False), dtype=bool)
        per_row = np.bincount(text_row[non_null], minlength=n)
        names_, which = np.unique(np.asarray(sources, dtype=object), return_inverse=True)
        rows_of = np.bincount(which, minlength=len(names_))
        texts_of = np.bincount(which, weights=per_row, minlength=len(names_))
        for s, r, t in zip(names_.tolist(), rows_of.tolist(), texts_of.tolist(), strict=True):
            counts.add(s, int(r), int(t))

    ids = batch.column(id_column).to_pylist()
    keep_row = np.ones(n, dtype=bool)
    keep_elem = np.ones(len(texts), dtype=bool)
    for m in matcher.find_texts(texts):
        row, code, elem = int(text_row[m.text]), int(text_code[m.text]), int(text_elem[m.text])
        is_list = elem >= 0
        action = "drop_negative" if is_list and cfg.negative_policy == "drop_negative" else "drop_row"
        if action == "drop_row":
            keep_row[row] = False
        else:
            keep_elem[m.text] = False
        item = matcher.index.item(m.item)
        hits.append({  # both texts whole: the report shows them side by side

            "source": sources[row], "row_id": str(ids[row]),
            "field": f"{names[code]}[{elem}]" if is_list else names[code],
            "action": action, "method": m.method,
            "test_set": item.task, "subset": item.subset, "split": item.split,
            "test_item_id": item.item_id, "test_field": item.field, "evidence": m.evidence,
            "text": texts[m.text].as_py(), "test_text": item.text,
        })
    if list_fields and not keep_elem.all():
        batch = _drop_elements(batch, list_fields, len(fields), text_code, keep_elem)
    return batch if keep_row.all() else batch.filter(pa.array(keep_row))


def _drop_elements(batch, list_fields, first_code, text_code, keep_elem) -> pa.RecordBatch:
    cols = {name: batch.column(name) for name in batch.schema.names}
    for code, f in enumerate(list_fields, start=first_code):
        keep = keep_elem[text_code == code]
        if keep.all():
            continue
        for name in [f, *list_fields[f]]:
            col = cols[name]
            if len(pc.list_flatten(col)) != len(keep):
                raise NvdataError(f"decontam: column {name!r} is not aligned with {f!r}")
            cols[name] = _filter_list(col, keep)
    return pa.RecordBatch.from_arrays(list(cols.values()), schema=batch.schema)


def _filter_list(col: pa.ListArray, keep: np.ndarray) -> pa.ListArray:
    parent = np.asarray(pc.list_parent_indices(col), dtype=np.int64)
    lengths = np.bincount(parent[keep], minlength=len(col))
    offsets = np.zeros(len(col) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pc.list_flatten(col).filter(pa.array(keep))
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=col.type, mask=col.is_null())


def decontaminate_table(
    table: pa.Table,
    fields: list[str],
    *,
    source: str,
    index: TestIndex,
    cfg: DecontamConfig,
    id_column: str,
    counts: DecontamCounts | None = None,
) -> tuple[pa.Table, list[dict]]:
    """Drop every row of a raw table (``schema.RAW_*``) whose ``fields`` match a test set.

    Raw text fields: retrieval pairs ``query``, ``positive``; retrieval corpus ``text``;
    classification and clustering ``text``; STS ``sentence1``, ``sentence2``.
    """
    hits: list[dict] = []
    out = list(
        iter_decontaminate(
            table.to_batches(max_chunksize=cfg.batch_size), fields, index=index, cfg=cfg,
            id_column=id_column, source=source, hits=hits, counts=counts,
        )
    )
    return pa.Table.from_batches(out, schema=table.schema), hits


def scan_rows(
    table: pa.Table,
    *,
    index: TestIndex,
    cfg: DecontamConfig,
    source: str | None = None,
    id_column: str = "id",
    counts: DecontamCounts | None = None,
) -> tuple[pa.Table, list[dict]]:
    """Decontaminate published rows (``schema.ROW``): query, positive and negatives.

    A matching negative drops the row, or under ``negative_policy: drop_negative`` is removed
    from the row together with its ``negative_scores`` entry.
    """
    hits: list[dict] = []
    out = list(
        iter_decontaminate(
            table.to_batches(max_chunksize=cfg.batch_size), ["query", "positive"], index=index, cfg=cfg,
            id_column=id_column, source=source, hits=hits, counts=counts,
            list_fields={"negatives": ["negative_scores"]},
        )
    )
    return pa.Table.from_batches(out, schema=table.schema), hits


# -- audit ----------------------------------------------------------------------------------
def _audit_mirror(manifest: dict, mirror: Path | None, where: Path) -> Path | None:
    """The mirror to audit against: ``mirror`` if given, else the one the build recorded (the
    bundled sample for a ``--sample`` build); None (the Hub) only for a build that used the Hub."""
    if mirror is not None:
        return Path(mirror)
    if manifest.get("sample"):
        from nvdata.paths import sample_mirror_dir

        return sample_mirror_dir()
    recorded = manifest.get("mirror")
    if recorded is None:
        return None
    if not Path(recorded).is_dir():
        raise NvdataError(f"audit: {where} was checked against the mirror {recorded}, which is not there; "
                          "give --mirror DIR (or --sample)")
    return Path(recorded)


def _require_mirrored(cfg: DecontamConfig, mirror: Path) -> None:
    """Every test set must be in ``mirror``: a missing one must not be fetched from the Hub unasked."""
    from nvdata.decontam.testsets import require_mirrored, resolve_test_sets

    require_mirrored(resolve_test_sets(cfg), mirror, what="audit")


def audit_build(
    out_dir: Path, *, mirror: Path | None, cache_dir: Path, cfg: DecontamConfig | None = None
) -> dict:
    """Re-check a finished build: manifest checksums and row counts, then every shard's rows.

    ``mirror`` None means the test sets the build was checked against: the mirror or sample its
    manifest records, else the Hub. A given (or recorded) mirror must hold every test set:
    one it lacks is an ``NvdataError`` naming it, never a silent Hub download.
    ``cfg`` defaults to the decontamination options the build recorded in its manifest
    (``recipe.decontamination``), else the defaults. ``ok`` is false on any checksum,
    row-count or listing mismatch and on any hit (under either negative policy a finished
    build must have none); the CLI exits non-zero then.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        shards = manifest["shards"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NvdataError(f"audit: cannot read {manifest_path}: {e}") from e
    if cfg is None:
        recorded = (manifest.get("recipe") or {}).get("decontamination")
        cfg = DecontamConfig.from_dict(recorded, "manifest.recipe.decontamination") if recorded else DecontamConfig()
    problems: list[dict] = []
    readable: list[Path] = []
    listed = set()
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not {"file", "rows", "sha256"} <= set(shard):
            raise NvdataError(f"audit: {manifest_path}: shards[{i}] needs file, rows, sha256")
        path = out_dir / shard["file"]
        listed.add(path.resolve())
        if not path.is_file():
            problems.append({"file": shard["file"], "problem": "missing"})
            continue
        actual = sha256_file(path)
        if actual != shard["sha256"]:
            problems.append({"file": shard["file"], "problem": "sha256 mismatch", "expected": shard["sha256"], "actual": actual})
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as e:
            problems.append({"file": shard["file"], "problem": f"unreadable: {e}"})
            continue
        if rows != shard["rows"]:
            problems.append({"file": shard["file"], "problem": "row count mismatch", "expected": shard["rows"], "actual": rows})
        readable.append(path)
    for extra in sorted((out_dir / "shards").glob("*.parquet")) if (out_dir / "shards").is_dir() else []:
        if extra.resolve() not in listed:
            problems.append({"file": extra.relative_to(out_dir).as_posix(), "problem": "not in manifest"})

    mirror = _audit_mirror(manifest, mirror, out_dir)
    if mirror is not None:
        _require_mirrored(cfg, mirror)
    index = build_test_index(cfg, mirror=mirror, cache_dir=cache_dir)
    hits: list[dict] = []
    counts = DecontamCounts()
    for path in readable:
        try:
            batches = parquet_file(path).iter_batches(batch_size=cfg.batch_size)
            for _ in iter_decontaminate(
                batches, ["query", "positive"], index=index, cfg=cfg, id_column="id", hits=hits,
                counts=counts, list_fields={"negatives": ["negative_scores"]},
            ):
                pass
        except (OSError, pa.ArrowException) as e:  # corrupted pages surface only when decoded
            problems.append({"file": path.relative_to(out_dir).as_posix(), "problem": f"unreadable: {e}"})
    summary = summarize(hits, counts.to_dict(), index.summary())
    return {
        "ok": not problems and not hits,
        "manifest": str(manifest_path),
        "shards_checked": len(readable),
        "rows_checked": summary["totals"]["raw_rows"],  # published rows, checked as given
        "file_problems": problems,
        "hits": hits,
        "totals": summary["totals"],
        "index_key": index.key,
        "mirror": str(mirror) if mirror is not None else None,
        "config": cfg.to_dict(),
    }
