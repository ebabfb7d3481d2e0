"""Exact chunked top-k search: both backends agree with brute force and with each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvdata.errors import NvdataError
from nvdata.mine.search import (
    FaissSearcher,
    TorchSearcher,
    canonical_order,
    make_searcher,
    merge_topk,
    resolve_backend,
)


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q, c, k):
    s = q @ c.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def _run(searcher, corpus, chunk):
    for start in range(0, len(corpus), chunk):
        searcher.add(corpus[start : start + chunk], offset=start)
    return searcher.result()


@pytest.mark.parametrize("chunk", [7, 50, 1000])
@pytest.mark.parametrize("k", [1, 10, 60])
def test_faiss_and_torch_match_brute_force(chunk, k):
    rng = np.random.default_rng(chunk * 100 + k)
    q, c = _unit(rng, 37), _unit(rng, 300)
    want_s, want_i = _brute(q, c, k)
    for searcher in (TorchSearcher(q, k, query_batch_size=16), FaissSearcher(q, k, query_batch_size=16)):
        s, i = _run(searcher, c, chunk)
        assert np.array_equal(i, want_i), searcher.backend
        np.testing.assert_allclose(s, want_s, atol=1e-5)


def test_k_beyond_corpus_is_padded_not_invented():
    rng = np.random.default_rng(1)
    q, c = _unit(rng, 4), _unit(rng, 5)
    for searcher in (TorchSearcher(q, 8), FaissSearcher(q, 8)):
        s, i = _run(searcher, c, 2)
        assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all()
        assert np.isneginf(s[:, 5:]).all()
        assert sorted(i[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_ties_break_by_corpus_index_in_both_backends():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    c = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    for searcher in (TorchSearcher(q, 3), FaissSearcher(q, 3)):
        _, i = _run(searcher, c, 1)
        assert i.tolist() == [[1, 2, 3]]


def test_merge_and_canonical_order():
    s1, i1 = np.array([[0.9, 0.1]], np.float32), np.array([[4, 2]])
    s2, i2 = np.array([[0.5, -np.inf]], np.float32), np.array([[7, -1]])
    s, i = merge_topk(s1, i1, s2, i2, 3)
    assert i.tolist() == [[4, 7, 2]] and s.dtype == np.float32
    s, i = canonical_order(np.array([[0.2, 0.2, -np.inf]], np.float32), np.array([[9, 3, -1]]))
    assert i.tolist() == [[3, 9, -1]]


def test_backend_resolution_on_cpu():
    assert resolve_backend("torch", "cpu", 5000) == "torch"
    assert resolve_backend("faiss", "cpu", 5000) == "faiss"  # faiss on CPU has no k limit
    assert resolve_backend("auto", "cpu", 10) == "faiss"
    with pytest.raises(NvdataError, match="dense.backend"):
        resolve_backend("annoy", "cpu", 10)
    rng = np.random.default_rng(0)
    assert make_searcher("auto", _unit(rng, 3), 2).backend == "faiss"
    assert make_searcher("torch", _unit(rng, 3), 2).backend == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_on_cuda_matches_brute_force():
    rng = np.random.default_rng(3)
    q, c = _unit(rng, 300, 64), _unit(rng, 5000, 64)
    want_s, want_i = _brute(q, c, 50)
    s, i = _run(TorchSearcher(q, 50, device="cuda", query_batch_size=128), c, 1024)
    assert np.array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-5)
    assert resolve_backend("auto", "cuda", 5000) == "torch"  # beyond faiss-GPU's k limit
