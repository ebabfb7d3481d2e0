"""The miner's candidate scores do not depend on the machine's thread count.

A float32 GEMM's rounding depends on how BLAS splits it over threads: faiss on 1 vs 2 OpenMP
threads (8,192 queries x 70,000 documents, d=32) gave ~37k scores up to 4e-7 apart and 504
different neighbours, so shards built on a laptop and on a Ray actor (1 thread) differed.
Each side runs in its own process, because BLAS reads OMP_NUM_THREADS once at start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import sys, numpy as np
from nvdata.mine.dense import DenseConfig, search_candidates
rng = np.random.default_rng(0)
def clustered(n, d=32):  # a tiny random encoder's embeddings: all near one direction
    x = rng.normal(size=(n, d)).astype(np.float32) * 0.15 + 1.0
    return x / np.linalg.norm(x, axis=1, keepdims=True)
corpus, queries = clustered(70_000), clustered(8_192)
chunks = [(corpus[o : o + 65_536], o) for o in range(0, len(corpus), 65_536)]
cfg = DenseConfig.from_dict({"backend": sys.argv[1]}, "test")
scores, idx, _ = search_candidates(queries, chunks, 101, cfg, device="cpu")
np.save(sys.argv[2], scores); np.save(sys.argv[3], idx)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_candidates_and_scores_are_the_same_on_one_and_two_threads(tmp_path, backend):
    pytest.importorskip(backend)
    got = []
    for threads in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        s, i = tmp_path / f"s{threads}.npy", tmp_path / f"i{threads}.npy"
        subprocess.run([sys.executable, "-c", SCRIPT, backend, str(s), str(i)], env=env, check=True, timeout=600)
        got.append((np.load(s), np.load(i)))
    assert np.array_equal(got[0][1], got[1][1])
    assert got[0][0].tobytes() == got[1][0].tobytes()
