"""Mine stage: negatives for the formatted rows of one source.

* retrieval -> :func:`mine_dense`: a model stage (:class:`DenseEncoder`, ``setup()`` loads the
  model once per process or actor, ``__call__`` embeds a list of texts) feeding a per-source
  search (:func:`nvdata.mine.dense.mine_dense_negatives`: corpus embeddings from the
  content-keyed cache, queries in blocks, each block's rows written as it goes);
* sts -> :func:`mine_bm25`: a per-source reduction over the STS pools (BM25 index per pool);
* classification / clustering -> :func:`no_mining`: their negatives came at formatting.

Each writes ``rows.parquet`` and ``report.json`` into the stage folder it is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from nvdata import emit


class DenseEncoder:
    """The dense miner's model as a stage: cheap to construct, ``setup()`` loads it once.

    ``fingerprint`` (a hash of the model's files) keys the cache without loading the model, so
    a build whose mining is cached never loads it. ``__call__(texts, prompt)`` returns float32
    ``(len(texts), dim)`` L2-normalized embeddings (:func:`nvdata.mine.encode.encode_texts`).
    A Ray executor runs the same class as an actor (model loaded once per actor).
    """

    def __init__(self, name: str | None, device: str | None, cfg):
        from nvdata.mine.encode import model_fingerprint

        self.name, self.device, self.cfg, self._enc = name, device, cfg, None
        self.fingerprint = model_fingerprint(name)

    def setup(self):
        """Load the model (idempotent); returns the :class:`~nvdata.mine.encode.Encoder`."""
        if self._enc is None:
            from nvdata.mine.encode import load_encoder

            self._enc = load_encoder(self.name, device=self.device, dtype=self.cfg.dtype,
                                     max_seq_length=self.cfg.max_seq_length)
        return self._enc

    get = setup  # the name the build used before the stage split

    def __call__(self, texts: list[str], prompt: str | None = None) -> np.ndarray:
        from nvdata.mine.encode import default_num_workers, encode_texts

        enc = self.setup()
        workers = self.cfg.num_workers if self.cfg.num_workers is not None else default_num_workers(enc.device)
        return encode_texts(enc, texts, prompt=prompt, batch_size=self.cfg.batch_size, num_workers=workers)


def mine_dense(rows_file: Path, corpus_file: Path, *, cfg, encoder: DenseEncoder, cache_dir: Path,
               seed: int, out: Path, batch_rows: int) -> dict:
    """Dense negatives for one retrieval source: ``out/rows.parquet`` + report."""
    from nvdata.mine.dense import mine_dense_files

    report = mine_dense_files(rows_file, corpus_file, Path(out) / "rows.parquet", cfg, encoder=encoder.setup(),
                              device=encoder.device, cache_dir=Path(cache_dir), seed=seed,
                              batch_rows=batch_rows, work_dir=Path(out))
    emit.write_json(Path(out) / "report.json", report)
    return report


def finish_dense(rows_file: Path, work: Path, *, cfg, out: Path, batch_rows: int) -> dict:
    """The last phase of :func:`mine_dense` run apart (a distributed executor ran the others,
    :mod:`nvdata.mine.dense`, in the work folder ``work``): ``out/rows.parquet`` + report;
    the work folder is removed."""
    import json

    from nvdata.mine.dense import finish

    if not (Path(work) / "plan.json").is_file() and (Path(out) / "report.json").is_file():
        return json.loads((Path(out) / "report.json").read_text())  # a retry after the work folder went
    report = finish(rows_file, Path(out) / "rows.parquet", Path(work), cfg, batch_rows=batch_rows)
    emit.write_json(Path(out) / "report.json", report)
    shutil.rmtree(work, ignore_errors=True)
    return report


def mine_bm25(rows_file: Path, pools: dict[str, Path], *, cfg, out: Path) -> dict:
    """BM25 negatives for one STS source against its pools (raw STS tables): rows + report."""
    from nvdata.mine.bm25 import mine_bm25_negatives

    rows = pq.read_table(rows_file)
    pool_tables = {name: pq.read_table(p) for name, p in pools.items()}
    mined, report = mine_bm25_negatives(rows, pool_tables, cfg)
    pq.write_table(mined, Path(out) / "rows.parquet", compression="zstd")
    emit.write_json(Path(out) / "report.json", report)
    return report


def no_mining(rows_file: Path, *, out: Path) -> dict:
    """Classification / clustering rows got their label negatives at formatting time."""
    shutil.copy(rows_file, Path(out) / "rows.parquet")
    report = {"method": "label (at formatting)"}
    emit.write_json(Path(out) / "report.json", report)
    return report
