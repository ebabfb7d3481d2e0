"""Exact top-k inner-product search over a corpus that arrives in chunks.

The miner never builds the full query x corpus score matrix: it hands the searcher one corpus
chunk of embeddings at a time, the searcher scores every query against that chunk, keeps the
chunk's top-k and merges it into a running top-k per query. Memory is ``queries x k`` plus
one chunk, whatever the corpus size.

Two backends, both exact (embeddings are L2-normalized, so inner product = cosine):

* ``faiss``: ``IndexFlatIP`` per chunk, on the GPU when ``faiss.get_num_gpus() > 0`` (where
  faiss can return at most 2048 neighbours per query), else on the CPU.
* ``torch``: a chunked matmul + ``torch.topk``, on any torch device (CUDA included); no limit
  on k.

Example::

    >>> import numpy as np
    >>> q = np.eye(2, dtype=np.float32); c = np.eye(2, dtype=np.float32)[::-1]
    >>> s = make_searcher("torch", q, k=1, device="cpu")
    >>> s.add(c, offset=0); s.result()[1]
    array([[1],
           [0]])
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from nvdata.errors import NvdataError

BACKENDS = ("auto", "faiss", "torch")
FAISS_GPU_MAX_K = 2048  # faiss's GPU k-selection limit


class ChunkedSearcher(Protocol):
    """Running exact top-k of fixed queries over corpus chunks added in order."""

    backend: str
    k: int

    def add(self, chunk: np.ndarray | torch.Tensor, offset: int) -> None:
        """Score all queries against ``chunk`` (rows are corpus items ``offset ...``)."""

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32 (n, k), indices int64 (n, k))``, best first; ``-inf`` / ``-1`` pad."""


def faiss_gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


def resolve_backend(backend: str, device: str | torch.device, k: int) -> str:
    """Pick the concrete backend: ``faiss`` or ``torch``.

    ``auto`` takes faiss on the GPU where faiss has GPU support and ``k`` fits its limit, torch
    on any other CUDA device, and faiss (or torch, if faiss is missing) on the CPU.
    """
    if backend not in BACKENDS:
        raise NvdataError(f"dense.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "torch":
        return "torch"
    try:
        import faiss  # noqa: F401

        have_faiss = True
    except ImportError:
        have_faiss = False
    if backend == "faiss":
        if not have_faiss:
            raise NvdataError("dense.backend: 'faiss' requested but faiss is not installed")
        if on_cuda and faiss_gpu_count() > 0 and k > FAISS_GPU_MAX_K:
            raise NvdataError(
                f"dense.backend: faiss on GPU returns at most {FAISS_GPU_MAX_K} neighbours per query "
                f"but {k} are needed; use backend 'torch'"
            )
        return "faiss"
    if on_cuda:
        return "faiss" if faiss_gpu_count() > 0 and k <= FAISS_GPU_MAX_K else "torch"
    return "faiss" if have_faiss else "torch"


def make_searcher(
    backend: str,
    queries: np.ndarray,
    k: int,
    *,
    device: str | torch.device = "cpu",
    query_batch_size: int = 8192,
) -> ChunkedSearcher:
    """A searcher for ``queries`` (``(n, d)`` float32, normalized); ``backend`` as resolved."""
    backend = resolve_backend(backend, device, k)
    if backend == "torch":
        return TorchSearcher(queries, k, device=device, query_batch_size=query_batch_size)
    use_gpu = torch.device(device).type == "cuda" and faiss_gpu_count() > 0
    return FaissSearcher(queries, k, use_gpu=use_gpu, query_batch_size=query_batch_size)


class TorchSearcher:
    """Exact search with ``torch.matmul`` + ``torch.topk``; state stays on ``device``."""

    backend = "torch"

    def __init__(
        self,
        queries: np.ndarray,
        k: int,
        *,
        device: str | torch.device = "cpu",
        query_batch_size: int = 8192,
    ):
        self.k = int(k)
        self.device = torch.device(device)
        self.query_batch_size = int(query_batch_size)
        self.queries = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        n = self.queries.shape[0]
        self.best_scores = torch.full((n, self.k), float("-inf"), device=self.device)
        self.best_indices = torch.full((n, self.k), -1, dtype=torch.int64, device=self.device)

    @torch.inference_mode()
    def add(self, chunk: np.ndarray | torch.Tensor, offset: int) -> None:
        if isinstance(chunk, np.ndarray) and not chunk.flags.writeable:
            chunk = np.array(chunk)  # a memory-mapped cache file: torch wants writable memory
        corpus = torch.as_tensor(chunk).to(self.device, dtype=torch.float32, non_blocking=True)
        if corpus.shape[0] == 0:
            return
        kk = min(self.k, corpus.shape[0])
        for start in range(0, self.queries.shape[0], self.query_batch_size):
            stop = start + self.query_batch_size
            scores = self.queries[start:stop] @ corpus.T
            top_scores, top_idx = torch.topk(scores, kk, dim=1, sorted=False)
            merged_scores = torch.cat([self.best_scores[start:stop], top_scores], dim=1)
            merged_idx = torch.cat([self.best_indices[start:stop], top_idx + offset], dim=1)
            keep_scores, keep_pos = torch.topk(merged_scores, self.k, dim=1, sorted=False)
            self.best_scores[start:stop] = keep_scores
            self.best_indices[start:stop] = torch.gather(merged_idx, 1, keep_pos)
        if self.device.type == "cuda":
            # Once per chunk, so the caller's timing of the search is the search's.
            torch.cuda.synchronize(self.device)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        scores = self.best_scores.float().cpu().numpy()
        indices = self.best_indices.cpu().numpy()
        return canonical_order(scores, indices)


class FaissSearcher:
    """Exact search with a faiss ``IndexFlatIP`` per chunk (GPU index where available)."""

    backend = "faiss"

    def __init__(
        self, queries: np.ndarray, k: int, *, use_gpu: bool = False, query_batch_size: int = 8192
    ):
        import faiss

        self._faiss = faiss
        self.k = int(k)
        self.query_batch_size = int(query_batch_size)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        n, self.dim = self.queries.shape
        self.best_scores = np.full((n, self.k), -np.inf, dtype=np.float32)
        self.best_indices = np.full((n, self.k), -1, dtype=np.int64)
        self.use_gpu = use_gpu
        self._gpu_resources = faiss.StandardGpuResources() if use_gpu else None

    def _index(self):
        faiss = self._faiss
        if self.use_gpu:
            config = faiss.GpuIndexFlatConfig()
            config.device = torch.cuda.current_device() if torch.cuda.is_available() else 0
            return faiss.GpuIndexFlatIP(self._gpu_resources, self.dim, config)
        return faiss.IndexFlatIP(self.dim)

    def add(self, chunk: np.ndarray | torch.Tensor, offset: int) -> None:
        if isinstance(chunk, torch.Tensor):
            chunk = chunk.detach().float().cpu().numpy()
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.shape[0] == 0:
            return
        index = self._index()
        index.add(chunk)
        kk = min(self.k, chunk.shape[0])
        for start in range(0, self.queries.shape[0], self.query_batch_size):
            stop = start + self.query_batch_size
            scores, idx = index.search(self.queries[start:stop], kk)
            idx = np.where(idx >= 0, idx + offset, -1)
            scores = np.where(idx >= 0, scores, -np.inf).astype(np.float32)
            self.best_scores[start:stop], self.best_indices[start:stop] = merge_topk(
                self.best_scores[start:stop], self.best_indices[start:stop], scores, idx, self.k
            )
        index.reset()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return canonical_order(self.best_scores, self.best_indices)


RESCORE_SLACK = 16  # candidates searched beyond k, so rescoring can reorder across the cut
_RESCORE_BYTES = 16 << 20  # gathered candidate embeddings held at a time (as float64)


def exact_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Row-wise inner products ``queries[i] . docs[i]`` (or ``docs[i, j]``), float32, computed
    as float64 sums in a fixed order: the same bits whatever the thread count, the BLAS or the
    machine. A GEMM's float32 rounding depends on how its threads split the work (faiss/BLAS
    on 1 vs 2 threads, 8,192 queries x 70,000 documents: scores up to 4e-7 apart and 504
    neighbours reordered, so shards depended on the core count); every score nvdata writes
    comes from here instead.

    ``queries`` ``(n, d)``; ``docs`` ``(n, d)`` -> ``(n,)`` or ``(n, m, d)`` -> ``(n, m)``.
    """
    q = np.asarray(queries, dtype=np.float64)
    c = np.asarray(docs, dtype=np.float64)
    if c.ndim == 3:
        q = q[:, None, :]
    return (q * c).sum(axis=-1).astype(np.float32)


def rescore(queries: np.ndarray, idx: np.ndarray, gather, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's searched candidates ``idx`` (``(n, k')``, -1 padded,
    ``k' >= k``; searched with :data:`RESCORE_SLACK` extra) by :func:`exact_scores`, in
    :func:`canonical_order`. ``gather(rows)`` returns the corpus embeddings of global corpus
    indices ``rows`` (``(len(rows), d)``). Deterministic given the candidate set; the set
    itself can differ only where more than the slack's worth of candidates sit within the
    search's float32 error (~1e-6) of the cut."""
    n, kk = idx.shape
    scores = np.full((n, kk), -np.inf, dtype=np.float32)
    d = queries.shape[1] if n else 1
    step = max(1, _RESCORE_BYTES // (8 * max(kk, 1) * d))
    for s in range(0, n, step):
        block = idx[s : s + step]
        ok = block >= 0
        if ok.any():
            emb = np.zeros(block.shape + (d,), dtype=np.float32)
            emb[ok] = gather(block[ok])
            scores[s : s + step] = np.where(ok, exact_scores(queries[s : s + step], emb), -np.inf)
    return canonical_order(scores, idx, k)


def merge_topk(
    scores_a: np.ndarray, idx_a: np.ndarray, scores_b: np.ndarray, idx_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of two per-row candidate lists (any order in, best first out)."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    idx = np.concatenate([idx_a, idx_b], axis=1)
    return canonical_order(scores, idx, k)


def canonical_order(
    scores: np.ndarray, idx: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, ties by corpus index ascending; missing (-1) last.

    Both backends end here, so equal inputs give equal, run-to-run stable outputs.
    """
    tie_key = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((tie_key, -scores.astype(np.float64)), axis=-1)
    if k is not None:
        order = order[:, :k]
    return (
        np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=False),
        np.take_along_axis(idx, order, axis=1).astype(np.int64, copy=False),
    )
