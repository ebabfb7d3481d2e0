"""Decontamination scan throughput: nvdata's vectorized scan vs a plain Python set-of-n-grams scan.

The test side is one MTEB task in a throwaway mirror (Banking77Classification's repo with
``--test-size`` synthetic texts, a mix of short queries and long passages), indexed once by
``build_test_index`` (build time printed, not counted). The training side is ``--size``
synthetic texts streamed in record batches, with a few planted copies and 13-grams.

Peer: the straightforward scan, ``normalize_text`` + ``split`` + a Python ``set`` of 13-gram
tuples from the test texts, one training text at a time. It checks 13-grams only, so the
ratio is given for nvdata with the n-gram method alone and with all three methods.

    python bench/bench_decontam.py                 # default size, under 2 minutes here
    python bench/bench_decontam.py --small         # seconds
    python bench/bench_decontam.py --size 10000000 --no-baseline   # the 10M streaming check
    python bench/bench_decontam.py --test-size 2000000 --size 2000000 --no-baseline   # an index at scale

The index build's peak memory is measured in the main process; the all-methods scan runs in a
fresh process that loads the cached index, so its peak RSS is the scan's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from memstat import reset_peak, rss_mib  # noqa: E402

from nvdata.decontam import DecontamConfig, build_test_index, iter_decontaminate  # noqa: E402
from nvdata.mirror import write_hub_repo  # noqa: E402
from nvdata.text import normalize_text  # noqa: E402

N = 13
BATCH = 8192


class TextSource:
    """Zipf-distributed pseudo-words, so token frequencies look like real text."""

    def __init__(self, seed: int, vocab: int = 50_000) -> None:
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        lens = rng.integers(2, 10, vocab)
        self.words = ["".join(letters[rng.integers(0, 26, n)]) for n in lens]
        p = 1.0 / np.arange(1, vocab + 1) ** 1.05
        self.p = p / p.sum()
        self.rng = rng

    def texts(self, n: int) -> list[str]:
        long = self.rng.random(n) < 0.5  # half queries (5-15 words), half passages (40-160)
        lengths = np.where(long, self.rng.integers(40, 160, n), self.rng.integers(5, 15, n))
        ids = self.rng.choice(len(self.words), size=int(lengths.sum()), p=self.p)
        out, pos = [], 0
        w = self.words
        for length in lengths.tolist():
            out.append(" ".join(w[i] for i in ids[pos : pos + length]).capitalize() + ".")
            pos += length
        return out


def training_batches(size: int, tests: list[str], seed: int):
    """``size`` training texts in record batches; one in 2,000 is contaminated."""
    src = TextSource(seed)
    rng = np.random.default_rng(seed + 1)
    done = 0
    while done < size:
        n = min(BATCH, size - done)
        texts = src.texts(n)
        for i in np.flatnonzero(rng.random(n) < 0.0005):
            t = tests[rng.integers(len(tests))]
            words = t.split()
            texts[i] = t.upper() if len(words) < 30 else "Intro words here. " + " ".join(words[3 : 3 + N + 2])
        yield pa.record_batch({"row_index": pa.array(np.arange(done, done + n)), "text": pa.array(texts)})
        done += n


def _du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def baseline_scan(batches, test_texts: list[str]) -> tuple[int, int, float]:
    grams = set()
    for t in test_texts:
        w = normalize_text(t).split()
        grams.update(tuple(w[i : i + N]) for i in range(len(w) - N + 1))
    texts = hits = 0
    elapsed = 0.0
    for b in batches:
        col = b.column("text").to_pylist()
        t0 = time.perf_counter()
        for t in col:
            w = normalize_text(t).split()
            if any(tuple(w[i : i + N]) in grams for i in range(len(w) - N + 1)):
                hits += 1
        elapsed += time.perf_counter() - t0
        texts += len(col)
    return texts, hits, elapsed


def nvdata_scan(batches, index, cfg) -> tuple[int, int, float]:
    """Scan time only: the time spent making the synthetic batches is measured and taken off."""
    hits: list[dict] = []
    made = {"texts": 0, "seconds": 0.0}

    def timed(it):
        it = iter(it)
        while True:
            t0 = time.perf_counter()
            b = next(it, None)
            made["seconds"] += time.perf_counter() - t0
            if b is None:
                return
            made["texts"] += b.num_rows
            yield b

    t0 = time.perf_counter()
    for _ in iter_decontaminate(timed(batches), ["text"], index=index, cfg=cfg, id_column="row_index", source="bench", hits=hits):
        pass
    elapsed = time.perf_counter() - t0 - made["seconds"]
    return made["texts"], len({h["row_id"] for h in hits}), elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=300_000, help="training texts scanned")
    ap.add_argument("--test-size", type=int, default=20_000, help="test texts indexed")
    ap.add_argument("--small", action="store_true", help="20k training texts, 5k test texts")
    ap.add_argument("--no-baseline", action="store_true", help="only the all-methods scan (for big --size runs)")
    ap.add_argument("--work", type=Path, default=None, help="keep the mirror and index here (default: a temp dir)")
    ap.add_argument("--scan-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.small:
        args.size, args.test_size = 20_000, 5_000
    if args.scan_child:
        print("RESULT " + json.dumps(scan_child(args, args.work)))
        return
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        run(args, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="bench-decontam-") as tmp:
        run(args, Path(tmp))


CFG_ALL = DecontamConfig(benchmarks=(), add_tasks=("Banking77Classification",))
CFG_NGRAM = DecontamConfig(benchmarks=(), add_tasks=("Banking77Classification",), methods=("ngram",))


def scan_child(args: argparse.Namespace, work: Path) -> dict:
    """The all-methods scan in a fresh process: its peak RSS is the scan's own (index loaded from cache)."""
    plants = json.loads((work / "plants.json").read_text())
    index = build_test_index(CFG_ALL, mirror=work / "mirror", cache_dir=work / "cache")
    start = rss_mib("VmRSS")
    n, hits, seconds = nvdata_scan(training_batches(args.size, plants, 1), index, CFG_ALL)
    return {"texts": n, "hits": hits, "seconds": seconds, "rss_at_start_mib": start, "peak_rss_mib": rss_mib("VmHWM"),
            # at the end: anonymous memory vs pages of the memory-mapped index (the kernel can drop those)
            "rss_anon_mib": rss_mib("RssAnon"), "rss_file_mib": rss_mib("RssFile")}


def run(args: argparse.Namespace, work: Path) -> None:
    tests = TextSource(seed=7).texts(args.test_size)
    marker = work / f"mirror-written-{args.test_size}"
    if not marker.exists():  # rewriting an identical mirror would change its fingerprint: a new index
        shutil.rmtree(work / "mirror", ignore_errors=True)
        for old in work.glob("mirror-written-*"):
            old.unlink()
        table = pa.table({"text": tests, "label": np.zeros(len(tests), np.int64), "label_text": ["x"] * len(tests)})
        write_hub_repo(work / "mirror" / "mteb" / "banking77", {"default": {"test": table}})
        del table
        marker.touch()
    # contamination is planted from a sample of the test texts, so the scan process needs no more
    plants = tests[:: max(1, len(tests) // 10_000)]
    (work / "plants.json").write_text(json.dumps(plants))
    if args.no_baseline:
        del tests
    reset_peak()
    before = rss_mib("VmRSS")
    t0 = time.perf_counter()
    index = build_test_index(CFG_ALL, mirror=work / "mirror", cache_dir=work / "cache")
    build_s = time.perf_counter() - t0
    build_peak = rss_mib("VmHWM") - before
    print(f"index: {len(index)} test texts, {index.meta['sizes']['ngram']:,} 13-grams, built in {build_s:.1f} s "
          f"(incl. mteb import); build peak {build_peak:,.0f} MiB above the process before it; "
          f"index on disk {_du_mib(index.path):,.0f} MiB")
    del index
    print(f"scan: {args.size} training texts (half 5-15 words, half 40-160), batches of {BATCH}, 2 cores shared")

    if not args.no_baseline:
        index_ngram = build_test_index(CFG_NGRAM, mirror=work / "mirror", cache_dir=work / "cache")
        n, h, s = nvdata_scan(training_batches(args.size, plants, 1), index_ngram, CFG_NGRAM)
        ours_ngram = n / s
        print(f"nvdata (ngram only)      : {ours_ngram:12,.0f} texts/s   ({h} rows hit, {s:.1f} s)")
    cmd = [sys.executable, __file__, "--scan-child", "--work", str(work), "--size", str(args.size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"scan process failed ({proc.returncode})")
    child = json.loads(lines[-1][len("RESULT "):])
    ours_all = child["texts"] / child["seconds"]
    print(f"nvdata (all 3 methods)   : {ours_all:12,.0f} texts/s   ({child['hits']} rows hit, {child['seconds']:.1f} s); "
          f"scan process peak RSS {child['peak_rss_mib']:,.0f} MiB ({child['rss_at_start_mib']:,.0f} MiB after "
          f"imports and index load; at the end {child['rss_anon_mib']:,.0f} MiB anonymous + "
          f"{child['rss_file_mib']:,.0f} MiB of mapped index files)")
    if args.no_baseline:
        return
    n, hb, s = baseline_scan(training_batches(args.size, plants, 1), tests)
    base = n / s
    print(f"python set-of-13-grams   : {base:12,.0f} texts/s   ({hb} rows hit, {s:.1f} s)")
    print(f"ratio nvdata/baseline    : ngram only {ours_ngram / base:.1f}x, all 3 methods {ours_all / base:.1f}x")
    if hb > h:
        print("WARNING: the baseline found rows nvdata did not", file=sys.stderr)


if __name__ == "__main__":
    main()
