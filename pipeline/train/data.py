"""Shards in, contrastive batches out: streaming reads, batch composition, negative masks.

Three small steps, each usable alone:

* :func:`iter_rows` streams ``ROW``-schema rows from ``BUILD_DIR/shards/*.parquet`` record batch
  by record batch (shard order shuffled per epoch, then a bounded shuffle buffer), so a build
  larger than memory trains with memory bounded by ``shuffle_buffer`` rows.
* :func:`iter_batches` groups rows: ``source`` (every batch from one source, as NV-Embed and
  most embedding trainers do so in-batch negatives come from the same task) or ``mixed``.
* :func:`collate` turns rows into a :class:`ContrastiveBatch`: the query texts, the distinct
  documents (positives and hard negatives), each row's positive, and the ``candidates`` mask
  saying which documents each query is scored against: its positive, its own hard negatives,
  and, only where the row says ``in_batch_negatives`` (stage 1), every other document of the
  batch. A document that is a positive of the row's query (of any row whose query is the same
  text by ``text_hash``), a copy of one, or the query itself is never its negative; those
  masked pairs are counted (``masked_duplicates``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch

from nvdata.errors import NvdataError
from nvdata.schema import ROW
from nvdata.text import text_hash

COLUMNS = (
    "id",
    "source",
    "task_type",
    "instruction",
    "query",
    "positive",
    "negatives",
    "in_batch_negatives",
    "document_instruction",
)
BATCH_MODES = ("source", "mixed")


def shard_files(data_dir: Path) -> list[Path]:
    """The shard files of a build (``data_dir/shards/*.parquet``), checked against ``ROW``."""
    data_dir = Path(data_dir)
    shard_dir = data_dir / "shards"
    files = sorted(shard_dir.glob("*.parquet"))
    if not files:
        raise NvdataError(f"train --data {data_dir}: no shards ({shard_dir}/*.parquet)")
    for f in files:
        schema = pads.dataset(f, format="parquet").schema
        for name in COLUMNS:
            if name not in schema.names:
                raise NvdataError(f"shard {f}: column {name!r} missing (expected schema.ROW)")
            want = ROW.field(name).type
            if not schema.field(name).type.equals(want) and not (
                str(want) == "string" and str(schema.field(name).type) == "large_string"
            ):
                raise NvdataError(f"shard {f}: column {name!r} is {schema.field(name).type}, expected {want}")
    return files


def iter_rows(
    files: Sequence[Path],
    *,
    seed: int,
    epoch: int,
    shuffle_buffer: int = 10_000,
    read_rows: int = 1024,
) -> Iterator[dict]:
    """Stream rows of ``files`` in a seeded order (same ``seed, epoch`` -> same order)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(files)
    rng.shuffle(order)
    buffer: list[dict] = []
    for f in order:
        for record_batch in pads.dataset(f, format="parquet").to_batches(columns=list(COLUMNS), batch_size=read_rows):
            for row in record_batch.to_pylist():
                _check_row(row, f)
                if shuffle_buffer <= 1:
                    yield row
                    continue
                if len(buffer) < shuffle_buffer:
                    buffer.append(row)
                    continue
                i = rng.randrange(len(buffer))
                buffer[i], row = row, buffer[i]
                yield row
    rng.shuffle(buffer)
    yield from buffer


def _check_row(row: dict, f: Path) -> None:
    for name in ("query", "positive", "instruction"):
        if not isinstance(row[name], str):
            raise NvdataError(f"shard {f}: row {row.get('id')!r} field {name!r} is {row[name]!r}")
    if row["negatives"] is None or row["in_batch_negatives"] is None:
        raise NvdataError(f"shard {f}: row {row.get('id')!r} has null negatives / in_batch_negatives")


def iter_batches(rows: Iterator[dict], *, batch_size: int, mode: str = "source") -> Iterator[list[dict]]:
    """Group rows into batches: one source per batch (``source``) or in arrival order (``mixed``).

    In ``source`` mode each source fills its own batch; the partly filled ones are emitted when
    the rows run out, so a small source still trains (with fewer in-batch negatives).
    """
    if mode not in BATCH_MODES:
        raise NvdataError(f"train.batch_mode: {mode!r} is not one of {BATCH_MODES}")
    if mode == "mixed":
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    pending: dict[str, list[dict]] = {}
    for row in rows:
        group = pending.setdefault(row["source"], [])
        group.append(row)
        if len(group) == batch_size:
            yield pending.pop(row["source"])
    for source in sorted(pending):
        yield pending[source]


def batch_stream(
    files: Sequence[Path],
    *,
    batch_size: int,
    mode: str,
    seed: int,
    shuffle_buffer: int,
    start_epoch: int = 0,
    skip_batches: int = 0,
) -> Iterator[tuple[int, int, list[dict]]]:
    """Endless ``(epoch, index_in_epoch, rows)``; resumes at ``(start_epoch, skip_batches)``.

    Resuming re-reads the skipped part of the epoch (cheap: no tokenization, no model) so the
    batches after a resume are exactly those an uninterrupted run would have seen.
    """
    epoch = start_epoch
    while True:
        produced = 0
        rows = iter_rows(files, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer)
        for index, batch in enumerate(iter_batches(rows, batch_size=batch_size, mode=mode)):
            produced += 1
            if epoch == start_epoch and index < skip_batches:
                continue
            yield epoch, index, batch
        if produced == 0:
            raise NvdataError("train: the shards hold no rows")
        epoch += 1


@dataclass
class ContrastiveBatch:
    """One batch, as the loss sees it.

    ``documents`` are distinct (text, document instruction) pairs; ``positives[i]`` indexes the
    positive of query ``i`` and ``candidates[i, j]`` is True where document ``j`` is scored for
    query ``i`` (the positive always is).
    """

    queries: list[str]
    query_instructions: list[str]
    documents: list[str]
    document_instructions: list[str | None]
    positives: torch.Tensor  # (B,) long
    candidates: torch.Tensor  # (B, D) bool
    sources: list[str]
    masked_duplicates: int  # (query, document) pairs masked: a positive of the query, or its own text

    @property
    def size(self) -> int:
        return len(self.queries)

    def negatives_per_query(self) -> float:
        return float(self.candidates.sum().item() - self.size) / max(self.size, 1)


def collate(rows: Sequence[dict], *, max_negatives: int | None = None) -> ContrastiveBatch:
    """Build the :class:`ContrastiveBatch` of ``rows`` (see the module docstring for the rules)."""
    doc_index: dict[tuple[str, str | None], int] = {}
    documents: list[str] = []
    doc_instructions: list[str | None] = []

    def index_of(text: str, instruction: str | None) -> int:
        key = (text, instruction)
        if key not in doc_index:
            doc_index[key] = len(documents)
            documents.append(text)
            doc_instructions.append(instruction)
        return doc_index[key]

    positives: list[int] = []
    own: list[list[int]] = []
    for row in rows:
        ins = row["document_instruction"]
        pos = index_of(row["positive"], ins)
        negs = list(row["negatives"])
        if max_negatives is not None:
            negs = negs[:max_negatives]
        positives.append(pos)
        own.append([pos] + [index_of(n, ins) for n in negs])

    b, d = len(rows), len(documents)
    candidates = torch.zeros(b, d, dtype=torch.bool)
    for i, row in enumerate(rows):
        if row["in_batch_negatives"]:
            candidates[i, :] = True
        else:
            candidates[i, own[i]] = True

    same = _same_query_positives(rows, documents, positives)
    pos_t = torch.tensor(positives, dtype=torch.long)
    same[torch.arange(b), pos_t] = False
    masked = int((candidates & same).sum().item())
    candidates &= ~same
    candidates[torch.arange(b), pos_t] = True

    return ContrastiveBatch(
        queries=[r["query"] for r in rows],
        query_instructions=[r["instruction"] for r in rows],
        documents=documents,
        document_instructions=doc_instructions,
        positives=pos_t,
        candidates=candidates,
        sources=[r["source"] for r in rows],
        masked_duplicates=masked,
    )


def _same_query_positives(rows: Sequence[dict], documents: list[str], positives: list[int]) -> torch.Tensor:
    """(B, D) bool: document ``j`` must not be a negative of row ``i``.

    It is a positive of row ``i``'s query (of any row in the batch whose query is the same text
    by ``text_hash``, so "Which planets have rings?" and "which planets have rings" share their
    positives), a copy of one (same ``text_hash``), or the query's own text.
    """
    ids: dict[str, int] = {}  # hashes as small integers
    doc_h = np.array([ids.setdefault(text_hash(t), len(ids)) for t in documents])
    query_h = np.array([ids.setdefault(text_hash(r["query"]), len(ids)) for r in rows])
    is_positive_of = doc_h[None, :] == doc_h[positives][:, None]  # (B, D): a copy of row k's positive
    same_query = query_h[:, None] == query_h[None, :]  # (B, B)
    same = (same_query.astype(np.int32) @ is_positive_of.astype(np.int32)) > 0
    return torch.from_numpy(same | (doc_h[None, :] == query_h[:, None]))
