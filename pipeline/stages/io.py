"""Reading and writing a stage's tables in record batches.

A stage's table ``T`` is stored in its folder as ``T.parquet`` or as ordered parts
``T-00000.parquet``, ``T-00001.parquet``, ... (a distributed executor writes one part per input
part, named by the input part's index, never by arrival order). Readers see one stream of
batches either way, in file-name order, so a downstream stage does not care which executor
wrote its input.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nvdata.errors import NvdataError

# Rows per record batch a stage holds at a time (recipe-independent; ``NVDATA_BATCH_ROWS``
# lowers it, which the tests use to prove a stage's output does not depend on it).
BATCH_ROWS = 8192


def batch_rows(default: int = BATCH_ROWS) -> int:
    """The batch size stages stream with: ``NVDATA_BATCH_ROWS`` if set, else ``default``."""
    value = os.environ.get("NVDATA_BATCH_ROWS")
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise NvdataError(f"NVDATA_BATCH_ROWS must be a positive integer, got {value!r}") from None
    if n < 1:
        raise NvdataError(f"NVDATA_BATCH_ROWS must be a positive integer, got {value!r}")
    return n


def release_memory() -> None:
    """Hand memory freed by finished batches back to the OS.

    Arrow's pool (mimalloc) and glibc's heap keep what a batch freed for reuse; over thousands
    of batches of varying sizes that retained memory grows with the rows processed (measured:
    ~100 MiB more per 150k rows through decontamination, all of it given back by this). Called
    between stages and every few batches; costs a few milliseconds.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


RELEASE_EVERY = 16  # batches between release_memory() calls in long streams


def table_parts(folder: Path, name: str) -> list[Path]:
    """The files holding table ``name`` in a stage folder, in reading order."""
    folder = Path(folder)
    whole = folder / f"{name}.parquet"
    parts = sorted(folder.glob(f"{name}-[0-9][0-9][0-9][0-9][0-9].parquet"))
    if whole.is_file():
        if parts:
            raise NvdataError(f"{folder}: both {whole.name} and {len(parts)} part(s) of {name!r}")
        return [whole]
    return parts


def parquet_file(path: Path | str) -> pq.ParquetFile:
    """A Parquet file opened for streaming: ``pre_buffer=False``.

    pyarrow's ``ParquetFile`` pre-buffers by default, and ``iter_batches`` over a whole file
    then reads every row group's column chunks ahead in one go: each streamed stage held its
    input file's whole compressed bytes (211 MiB of an 800k-row table in the format stage;
    ``bench/bench_scale.py``). Without it a row group's column chunks are read when reached.
    """
    return pq.ParquetFile(path, pre_buffer=False)


def num_rows(files: Iterable[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def iter_batches(
    files: Path | Iterable[Path], *, batch_rows: int | None = None, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Every row of ``files`` in order, as record batches of at most ``batch_rows`` rows."""
    files = [files] if isinstance(files, (str, Path)) else list(files)
    size = batch_rows or BATCH_ROWS
    for f in files:
        yield from parquet_file(f).iter_batches(batch_size=size, columns=columns)


def exact_batches(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly ``size`` rows (the last may be shorter).

    For steps whose result depends on where the input is cut (embedding cache keys, seeded
    draws per block): the cut then depends only on the rows, not on the file layout.
    """
    pending: list[pa.RecordBatch] = []
    have = 0
    for b in batches:
        while b.num_rows:
            take = min(size - have, b.num_rows)
            pending.append(b.slice(0, take))
            have += take
            b = b.slice(take)
            if have == size:
                yield pa.Table.from_batches(pending)
                pending, have = [], 0
    if have:
        yield pa.Table.from_batches(pending)


def write_batches(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]) -> int:
    """Write a stream of batches as one zstd Parquet file; returns the number of rows."""
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for i, b in enumerate(batches, 1):
            if i % RELEASE_EVERY == 0:
                release_memory()
            if b.num_rows:
                t = b if isinstance(b, pa.Table) else pa.Table.from_batches([b])
                w.write_table(t.cast(schema) if not t.schema.equals(schema) else t)
                rows += b.num_rows
    return rows


def take_chunked(chunks: pa.ChunkedArray | list[pa.Array] | list[pa.RecordBatch], rows) -> pa.Array | pa.Table:
    """``rows`` (positions over the chunks laid end to end, any order) as one array, or one
    table when the chunks are record batches: equal to ``concatenate(chunks).take(rows)``.

    Taken chunk by chunk. Arrow's ``take`` on a many-chunk array or table concatenates every
    chunk first: on a memory-mapped corpus or shuffle bucket that copied the whole column into
    memory on every call (the dense miner's corpus texts: ~350 MiB per query block at 800k
    documents; ``bench/bench_scale.py``). Here only the rows taken are copied.
    """
    import numpy as np

    chunks = list(chunks.chunks) if isinstance(chunks, pa.ChunkedArray) else list(chunks)
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.cumsum([0] + [len(c) for c in chunks])
    which = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(which, kind="stable")
    by_chunk, of_chunk = rows[order], which[order]
    cuts = np.flatnonzero(np.diff(of_chunk)) + 1
    pieces = [chunks[int(ks[0])].take(pa.array(rs - starts[ks[0]]))
              for rs, ks in zip(np.split(by_chunk, cuts), np.split(of_chunk, cuts)) if len(rs)]
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    if chunks and isinstance(chunks[0], pa.RecordBatch):
        grouped = pa.Table.from_batches(pieces, schema=chunks[0].schema).combine_chunks()
    else:
        dtype = chunks[0].type if chunks else pa.null()
        grouped = pa.concat_arrays(pieces) if pieces else pa.array([], type=dtype)
    return grouped.take(pa.array(back))
