"""The build's stages as plain functions over Arrow record batches and Parquet files.

A stage here never knows how it is scheduled: it reads its inputs (paths or batches), writes
its outputs under the folder it is given, and returns what it counted. Which stage runs when,
where its cache folder is and whether it runs in this process or on a Ray worker is the
executors' business (:mod:`nvdata.engine`, whose docstring lists every stage's inputs and
outputs). datatrove's steps vs executors is the model.

* :mod:`nvdata.stages.decontaminate`  per-batch map: raw rows -> rows without test-set text
* :mod:`nvdata.stages.format`         per-batch map + ordered merge (retrieval, STS) or
                                      per-source reduction (classification, clustering label pools)
* :mod:`nvdata.stages.mine`           dense (model stage + per-source search), BM25, none
"""

from nvdata.stages.io import BATCH_ROWS, iter_batches, table_parts, write_batches

__all__ = ["BATCH_ROWS", "iter_batches", "table_parts", "write_batches"]
