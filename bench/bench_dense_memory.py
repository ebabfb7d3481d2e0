"""Dense mining memory vs corpus size: flat apart from the embeddings themselves.

The miner streams the corpus: it loads (or encodes) one chunk of embeddings, searches it,
merges the chunk's top-k into a running ``queries x k`` result and lets the chunk go. So its
working memory should not grow with the corpus, apart from the corpus texts the caller
already holds. This benchmark checks that at growing corpus sizes.

Encoding is not what is measured here (``bench_dense.py`` times it against
sentence-transformers), and a 2-core CPU would need hours to encode a million passages. So
each size's embedding cache is filled first with synthetic unit vectors written under the
exact keys the miner looks up (a query is its positive's vector plus noise, so positives
score high and the margin filter has work to do); then the real ``mine_dense_negatives``
runs end to end on that cache: cache loads, search, positive bookkeeping, filters,
selection, assembly. Each size runs in its own process; its peak resident memory during
mining (``VmHWM`` after resetting it, minus the resident memory just before) is reported
next to what the corpus embeddings alone would take, which is what a miner that encodes
the whole corpus into one array (as sentence-transformers' ``mine_hard_negatives`` does)
holds at the very least.

    python bench/bench_dense_memory.py                         # 100k, 400k, 1.6M passages
    python bench/bench_dense_memory.py --sizes 50000 200000 --queries 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout too
sys.path.insert(0, str(HERE))

from bench_dense import formatted_rows, synthetic  # noqa: E402
from memstat import reset_peak, rss_mib  # noqa: E402

from nvdata import schema  # noqa: E402
from nvdata.mine.dense import DenseConfig, _query_prompt, mine_dense_negatives  # noqa: E402
from nvdata.mine.encode import EmbeddingCache, load_encoder  # noqa: E402
from nvdata.text import content_id  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def prefill(cache: EmbeddingCache, cfg: DenseConfig, rows: pa.Table, corpus: pa.Table, positives: np.ndarray, seed: int) -> None:
    """Write synthetic embeddings under the keys the miner will ask for (see module doc)."""
    enc = cache.enc
    rng = np.random.default_rng(seed)
    doc_prompt = enc.prompt("document") if cfg.document_prompt == "model" else None
    need = {int(p): q for q, p in enumerate(positives)}
    pos_vec = np.empty((len(positives), enc.dim), dtype=np.float32)
    cache.dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, corpus.num_rows, cfg.chunk_size):
        texts = corpus.column("text").slice(start, cfg.chunk_size).to_pylist()
        emb = _unit(rng.standard_normal((len(texts), enc.dim), dtype=np.float32))
        for j in range(len(texts)):
            q = need.get(start + j)
            if q is not None:
                pos_vec[q] = emb[j]
        np.save(cache.path_for(texts, doc_prompt), emb)
    qids = rows.column("query_id").to_pylist()
    if len(set(qids)) != len(qids) or len(qids) != len(positives):
        raise SystemExit("prefill expects one row per distinct query")
    texts = rows.column("query").to_pylist()
    noise = rng.standard_normal(pos_vec.shape, dtype=np.float32) / np.sqrt(enc.dim)
    q_vec = _unit(pos_vec + 0.8 * noise)  # cosine to its positive ~0.78; to a random passage ~0 +- 0.05
    prompt = _query_prompt(enc, cfg.query_prompt, rows.column("instruction")[0].as_py())
    for start in range(0, len(texts), cfg.chunk_size):
        block = texts[start : start + cfg.chunk_size]
        np.save(cache.path_for(block, prompt), q_vec[start : start + cfg.chunk_size])


def one(n_passages: int, n_queries: int, seed: int, backend: str) -> dict:
    """Generate, prefill, then mine one size and measure the mining call's memory."""
    t0 = time.perf_counter()
    passages, queries = synthetic(n_passages, n_queries, seed)
    rows = formatted_rows(passages, queries)
    corpus = pa.table(
        {"doc_id": [content_id(p) for p in passages], "text": passages}, schema=schema.RAW_RETRIEVAL_CORPUS
    )
    positives = np.array([p for _, p in queries])
    del passages, queries
    enc = load_encoder(None, device="cpu")
    cfg = DenseConfig(num_negatives=7, backend=backend)
    with tempfile.TemporaryDirectory(prefix="nvdata-bench-mem-") as cache_dir:
        with EmbeddingCache(Path(cache_dir), enc) as cache:
            prefill(cache, cfg, rows, corpus, positives, seed)
        setup_s = time.perf_counter() - t0
        reset_peak()
        before = rss_mib("VmRSS")
        t1 = time.perf_counter()
        mined, report = mine_dense_negatives(rows, corpus, cfg, encoder=enc, device=None, cache_dir=Path(cache_dir), seed=seed)
        mine_s = time.perf_counter() - t1
        peak = rss_mib("VmHWM")
    if report["encode"]["texts_encoded"]:
        raise SystemExit(f"cache miss: {report['encode']['texts_encoded']} texts were encoded")
    return {
        "passages": n_passages,
        "queries": n_queries,
        "chunk_size": cfg.chunk_size,
        "backend": report["search"]["backend"],
        "setup_seconds": round(setup_s, 1),
        "mining_seconds": round(mine_s, 1),
        "rss_before_mib": round(before, 1),
        "mining_peak_above_before_mib": round(peak - before, 1),
        "corpus_embeddings_mib": round(n_passages * enc.dim * 4 / 2**20, 1),
        "corpus_text_arrow_mib": round(corpus.nbytes / 2**20, 1),
        "rows_out": report["rows_out"],
        "removed": report["removed"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.queries, args.seed, args.backend)))
        return

    results = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--queries", str(args.queries),
               "--seed", str(args.seed), "--backend", args.backend]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{n:>10,} passages: mining peak +{r['mining_peak_above_before_mib']:,.0f} MiB above its inputs "
            f"({r['mining_seconds']:.1f} s, {r['backend']}); the corpus embeddings alone: "
            f"{r['corpus_embeddings_mib']:,.0f} MiB",
            flush=True,
        )
    first, last = results[0], results[-1]
    growth = last["mining_peak_above_before_mib"] / max(first["mining_peak_above_before_mib"], 1e-9)
    print(
        f"\ncorpus x{last['passages'] / first['passages']:.0f}: mining working memory x{growth:.2f}; "
        f"corpus embeddings x{last['corpus_embeddings_mib'] / first['corpus_embeddings_mib']:.0f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
