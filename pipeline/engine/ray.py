"""The Ray executor (``nvdata build --engine ray``): the same stages, scheduled on a Ray cluster.

It calls the stage functions of :mod:`nvdata.stages` that :mod:`nvdata.engine.local` calls,
fills the same stage folders under the same keys, and hands the write step the same files, so
the shards are byte-identical to the local engine's and a build started on one engine resumes
on the other. What runs where:

=============  ===========================================================================
download       one Ray task per source.
decontaminate  Ray Data ``map_batches`` over the raw tables' parts (runs of whole
               ``batch_rows`` batches) on an actor pool: each actor opens the memory-mapped
               test index once. Part ``i`` of table ``T`` is written as ``T-0000i.parquet``;
               one task per table then joins the parts, in part order, into ``T.parquet``;
               then one task per source runs the steps after it
               (:func:`nvdata.engine.plan.after_decontamination`: shared corpus, the
               recipe's test-similarity filter).
format         retrieval, STS: Ray Data ``map_batches`` over the decontaminated table's parts
               (runs of whole ``batch_rows`` batches, as for decontamination) on an actor
               pool: each part's rows, ids and identity keys (the costly part) are written
               as ``unmerged-0000i.parquet``; when every part of a source is done, one task
               per source reads them in part order, keeps the first row of each identity,
               applies ``max_rows`` and writes the report
               (:func:`nvdata.stages.format.merge_parts`). Classification, clustering: one
               task per source (label / example negatives are drawn from the whole
               source's label pools).
mine           dense: one actor pool of encoders (``num_gpus=1`` each where the cluster has
               GPUs, a CPU share otherwise; the model is loaded once per actor) runs, each
               step spread over the pool: every corpus chunk, then every query chunk
               (:func:`nvdata.mine.dense.query_chunks`) embedded into the content-keyed cache;
               per source, row grouping and the side tables (:func:`~nvdata.mine.dense.
               group_queries`, :func:`~nvdata.mine.dense.prepare`) in a work folder in its
               stage folder; every source's query blocks (:func:`~nvdata.mine.dense.
               search_block`: exact search against all corpus chunks, filters, selection;
               block size from the recipe, never from the pool) on any actor; per source, the
               blocks merged in block order and the rows written (:func:`~nvdata.mine.dense.
               finish`). Dense STS (``mining.sts.method: dense``) is mined whole by one of
               the same actors. bm25: one task per STS source.
               none (classification, clustering): the driver copies the formatted rows.
               Which method a source gets and its key: :func:`nvdata.engine.plan.mine_plan`.
write          the driver, with the code the local engine uses (:func:`nvdata.build.run_build`).
=============  ===========================================================================

Determinism: every output is named by its input's position (source, table, part index, chunk
start) and results are gathered by those keys, never by arrival order.

Resources: actor pools are sized from ``ray.cluster_resources()`` (:func:`plan_pool`) so
that they always leave CPUs for the tasks feeding them. A fixed pool of 2 actors at the
default 1 CPU each on a 2-CPU machine holds both CPUs and waits forever for its input.

Failures: Ray re-runs a task whose worker died (``max_retries``) and Ray Data restarts a dead
actor and re-sends its batch. Part files are written under a temp name and renamed, so a
re-run overwrites a half-written part. A killed driver loses only unfinished stage folders;
the next build resumes from the stage cache like the local engine.

The cache folder (``--cache``, default beside ``--out``) must be on a filesystem every node
of the cluster reaches at the same path; so must the mirror and the encoder's files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nvdata import counts as named_counts
from nvdata import emit
from nvdata.engine import (
    BuildContext,
    SourceResult,
    StageOutputs,
    decontaminate_key,
    instructions_key,
    min_limit,
    plan,
    stage_folder,
)
from nvdata.errors import NvdataError
from nvdata.sources import RawSource, download_source, obtainable
from nvdata.stages import decontaminate as dstage
from nvdata.stages import format as fstage
from nvdata.stages import mine as mstage
from nvdata.stages.io import exact_batches, parquet_file, write_batches

RAY_TESTED = (">=2.51", "<2.61")  # pyproject's `ray` extra; map_batches' compute API moved twice before
INSTALL_HINT = (f"--engine ray needs Ray with Ray Data: pip install 'ray[data]{','.join(RAY_TESTED)}' "
                "(in a checkout: pip install -e '.[ray]')")
TASK_RETRIES = 3  # re-runs of a task whose worker died
PART_BATCHES_MAX = 16  # a decontamination or format part is at most this many batches


def import_ray():
    """``ray`` (with Ray Data), or an :class:`NvdataError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise NvdataError(INSTALL_HINT) from None
    from packaging.specifiers import SpecifierSet

    if ray.__version__ not in SpecifierSet(",".join(RAY_TESTED)):
        raise NvdataError(f"Ray {ray.__version__} is not a version nvdata is tested with; {INSTALL_HINT}")
    return ray


def _check_reachable(address: str | None, given: str, timeout: float = 10.0) -> None:
    """Refuse a ``host:port`` cluster address nothing answers at, in seconds: ``ray.init``
    retries an unreachable GCS for minutes, printing one log line every few seconds."""
    import socket

    if address in (None, "auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise NvdataError(f"{given}: expected HOST:PORT (the head's GCS, port 6379 by default), 'auto' or nothing")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as e:
        raise NvdataError(f"{given}: nothing answers there ({e.strerror or e}); "
                          "is `ray start --head` running on that node, and is the port open?") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0") in ("0", "") and not _speaks_http2(conn):
            raise NvdataError(f"{given}: something answers there but it is not a Ray cluster's GCS (a gRPC "
                              "server); the head's GCS port is 6379 by default (8265 is the dashboard)")


def _speaks_http2(conn, timeout: float = 5.0) -> bool:
    """Whether the server on ``conn`` answers an HTTP/2 client preface with a SETTINGS frame,
    as every gRPC server (Ray's GCS, the Ray Client server) does; an HTTP/1 server (the
    dashboard, a web app) or a silent one does not. Ray itself would retry such an address
    for minutes."""
    conn.settimeout(timeout)
    try:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        head = b""
        while len(head) < 9:
            got = conn.recv(9 - len(head))
            if not got:
                return False
            head += got
    except OSError:
        return False
    return head[3] == 0x04 and head[5:9] == b"\x00\x00\x00\x00"  # a SETTINGS frame on stream 0


@contextmanager
def ray_session(address: str | None):
    """Join the cluster at ``address`` (``HOST:PORT``; ``auto``: the one ``ray start`` set up on
    this node; None: ``RAY_ADDRESS`` if set), or start a local Ray on this machine's CPUs. A
    session already open in this process (a test's, a notebook's) is used as it is and left
    open. Errors (:class:`NvdataError`): Ray missing or outside ``RAY_TESTED``; an address
    nothing answers at (in seconds, not after Ray's minutes of retries)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # As `ray.init()` and `ray job submit` do: RAY_ADDRESS is the cluster when no address is given.
    given = f"--ray-address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    address = address or os.environ.get("RAY_ADDRESS") or None
    _check_reachable(address, given)
    try:  # "local": a new Ray on this machine's CPUs (as Ray counts them, cgroup limits included)
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    except ConnectionError as e:
        raise NvdataError(f"{given}: no Ray cluster there ({e}); start one with `ray start --head`") from None
    try:
        yield ray
    finally:
        ray.shutdown()


# -- resources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """An actor pool: ``size`` actors of ``num_cpus`` CPUs and ``num_gpus`` GPUs each."""

    size: int
    num_cpus: float
    num_gpus: float = 0.0

    def describe(self) -> str:
        gpu = f" + {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.size} actor(s) of {self.num_cpus:g} CPU{gpu}"


def plan_pool(cpus: float, gpus: float, nodes: int, work: int, *, gpu: bool = False) -> Pool:
    """Size a stage's actor pool so it can never starve its own input.

    ``cpus``/``gpus``/``nodes``: the cluster's totals (``ray.cluster_resources()``); ``work``:
    the number of input items (no more actors than that). One CPU per node (at most half the
    CPUs) stays outside the pool for the tasks that read and feed it. CPU stages get one actor
    per CPU with an equal share of the rest (2 CPUs: 2 actors of 0.5); GPU stages (``gpu``
    and the cluster has GPUs) one actor per GPU, ``num_gpus=1`` each (a declared fraction
    below 1 as it is), with up to one CPU each for tokenizing.
    """
    reserve = min(float(max(nodes, 1)), cpus / 2)
    budget = max(cpus - reserve, 0.0)
    work = max(int(work), 1)
    if gpu and gpus > 0:
        size = max(1, min(work, int(gpus)))
        num_gpus = 1.0 if gpus >= 1 else float(gpus)
    else:
        size = max(1, min(work, int(cpus)))
        num_gpus = 0.0
    num_cpus = math.floor(min(1.0, budget / size) * 1e4) / 1e4  # Ray's resource granularity
    return Pool(size, num_cpus, num_gpus)


def _cluster(ray) -> tuple[float, float, int]:
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), max(nodes, 1)


def _map_over_pool(ray, items: list[dict], fn_class, pool: Pool, **constructor_kwargs):
    """``(task, result)`` dicts of ``fn_class`` applied to each item (JSON) on an actor pool, in
    completion order (callers key the results by their task, never by position).

    Ray Data does not carry a UDF's exception class back to the driver, so the actors return
    bad input as ``{"error": message}`` and it is raised here as the NvdataError it was."""
    ds = ray.data.from_items([{"task": json.dumps(it)} for it in items], override_num_blocks=len(items))
    rows = ds.map_batches(
        fn_class, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs=constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=pool.size), num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
    ).iter_rows()
    try:
        for row in rows:
            task, result = json.loads(row["task"]), json.loads(row["result"])
            if "error" in result:
                raise NvdataError(result["error"])
            yield task, result
    except NvdataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _unwrap(e) from None


def _bounded_map(actor_pool, fn, items, window: int):
    """``ActorPool.map_unordered`` over an iterator, with at most ``window`` items submitted
    and not yet collected (``map_unordered`` submits them all first: every query chunk's
    texts would sit in the driver at once)."""
    pending = 0
    for item in items:
        if pending >= window:
            yield actor_pool.get_next_unordered()
            pending -= 1
        actor_pool.submit(fn, item)
        pending += 1
    while pending:
        yield actor_pool.get_next_unordered()
        pending -= 1


def _as_result(work) -> str:
    """``work()`` as a JSON result row of :func:`_map_over_pool`; bad input as ``{"error"}``."""
    try:
        return json.dumps(work())
    except NvdataError as e:
        return json.dumps({"error": str(e)})


def _configure_ray_data(ray) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # nvdata reports per source, like the local engine
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _unwrap(error: BaseException) -> BaseException:
    """The NvdataError a task or actor raised, out of Ray's wrappers (else ``error``), so bad
    input still ends as one line and exit 2, as on the local engine."""
    seen = error
    while seen is not None:
        cause = getattr(seen, "cause", None)  # RayTaskError keeps the original here
        if isinstance(cause, BaseException) and cause is not seen:
            seen = cause
        elif isinstance(seen, NvdataError):
            return NvdataError(*seen.args)
        else:
            seen = seen.__cause__ or seen.__context__
    return error


# -- staged folders that finish one by one ---------------------------------------------------------


class _OpenStages:
    """Stage folders (:func:`nvdata.engine.stage_folder`) open at once, each published as soon
    as its source's work is done; on an error the unfinished ones are deleted (finished ones
    stay, so the next run resumes from them)."""

    def __init__(self):
        self._open: dict[str, tuple[object, Path]] = {}

    def open(self, cache: Path, stage: str, name: str, key: str) -> tuple[Path, Path | None]:
        cm = stage_folder(cache, stage, name, key)
        final, tmp = cm.__enter__()
        if tmp is None:
            cm.__exit__(None, None, None)
        else:
            self._open[name] = (cm, final)
        return final, tmp

    def finish(self, name: str) -> Path:
        cm, final = self._open.pop(name)
        cm.__exit__(None, None, None)
        return final

    def abort(self, exc: BaseException) -> None:
        for cm, _ in self._open.values():
            try:
                cm.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException:  # noqa: BLE001 - the original error is what the user needs
                pass
        self._open.clear()


class _Launched:
    """A remote function whose calls are remembered (in ``inflight``), so that a stage that
    fails can stop the ones still running before it deletes their unfinished folders."""

    def __init__(self, fn, inflight: list):
        self.fn, self.inflight = fn, inflight

    def remote(self, *args, **kwargs):
        ref = self.fn.remote(*args, **kwargs)
        self.inflight.append(ref)
        return ref


def _stop(ray, refs: list, timeout: float = 60) -> None:
    """Cancel the tasks in ``refs`` that are still running and wait for them to end. Without
    it a failed stage deleted the folders of tasks still writing into them (a BM25 task
    re-created its stage folder after the abort, leaving a stray ``.tmp-*`` in the cache)."""
    pending, refs[:] = list(refs), []
    if not pending:
        return
    for ref in pending:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - finished, or already gone: nothing to stop
            pass
    ray.wait(pending, num_returns=len(pending), timeout=timeout)


@contextmanager
def _staged(ray=None, inflight: list | None = None):
    stages_ = _OpenStages()
    try:
        yield stages_
    except BaseException as e:
        if ray is not None and inflight is not None:
            _stop(ray, inflight)
        stages_.abort(e)
        raise
    if inflight is not None:
        inflight.clear()  # every task of the stage has ended: let go of their results


def _wait_all(ray, refs: dict, on_done) -> None:
    """``on_done(key, value)`` for each ``refs[key]`` as it finishes (any order)."""
    by_ref = {ref: key for key, ref in refs.items()}
    pending = list(by_ref)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            try:
                value = ray.get(ref)
            except Exception as e:  # noqa: BLE001
                raise _unwrap(e) from None
            on_done(by_ref[ref], value)


# -- reading a row range in the local engine's batches ----------------------------------------------


def iter_row_range(path: Path, start: int, stop: int, batch_rows: int):
    """Rows ``[start, stop)`` of a Parquet file as record batches of ``batch_rows`` rows.

    With ``start`` a multiple of ``batch_rows`` the batches are exactly the ones the local
    engine's :func:`nvdata.stages.iter_batches` yields for the same rows, so a per-batch map
    gives the same output (and the same order of hits) on either engine.
    """
    pf = parquet_file(path)
    groups, first, pos = [], None, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if pos + n > start and pos < stop:
            groups.append(i)
            first = pos if first is None else first
        pos += n
    if not groups:
        return

    def sliced():
        skip, left = start - first, stop - start
        for b in pf.iter_batches(batch_size=batch_rows, row_groups=groups):
            if skip >= b.num_rows:
                skip -= b.num_rows
                continue
            b = b.slice(skip, left)
            skip, left = 0, left - b.num_rows
            yield b
            if left <= 0:
                return

    for table in exact_batches(sliced(), batch_rows):
        yield from table.combine_chunks().to_batches()


def part_name(table: str, part: int) -> str:
    return f"{table}-{part:05d}.parquet"


def _write_part(dest: Path, schema: pa.Schema, batches) -> int:
    """Write a part under a temp name, then rename: a retried task never sees half a file."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    rows = write_batches(tmp, schema, batches)
    os.replace(tmp, dest)
    return rows


# -- remote work ------------------------------------------------------------------------------------


def _run_tasks(batch: pa.Table, run_part) -> pa.Table:
    """A :func:`_map_over_pool` batch of JSON tasks -> the same tasks with ``run_part``'s results."""
    results = [_as_result(lambda: run_part(json.loads(t))) for t in batch.column("task").to_pylist()]
    return pa.table({"task": batch.column("task"), "result": pa.array(results, pa.string())})


class _Decontaminator:
    """Ray Data actor: the test index opened once, then one raw part per call."""

    def __init__(self, index_path: str, cfg, batch_rows: int):
        from nvdata.decontam import TestIndex

        self.index = TestIndex.load(Path(index_path))
        self.cfg, self.batch_rows = cfg, batch_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_tasks(batch, self.decontaminate_part)

    def decontaminate_part(self, t: dict) -> dict:
        from nvdata.decontam import DecontamCounts

        path = Path(t["path"])
        hits: list[dict] = []
        texts = DecontamCounts()
        kept = _write_part(
            Path(t["out"]) / part_name(path.stem, t["part"]), pq.read_schema(path),
            dstage.decontaminate_batches(
                iter_row_range(path, t["start"], t["stop"], self.batch_rows), kind=t["kind"],
                source=t["source"], index=self.index, cfg=self.cfg, hits=hits, counts=texts))
        return {"kept": kept, "hits": hits,
                "texts": texts.sources.get(t["source"], {}).get("texts_checked", 0)}


class _Formatter:
    """Ray Data actor: the instruction files read once, then one part of a retrieval / STS
    source's decontaminated table per call, formatted batch by batch (the map of
    :mod:`nvdata.stages.format`) into ``unmerged-<part>.parquet``."""

    def __init__(self, entries: dict, cfg, batch_rows: int):
        from nvdata.instruct import load_instructions

        self.entries, self.cfg, self.batch_rows = entries, cfg, batch_rows
        self.instructions = load_instructions()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_tasks(batch, self.format_part)

    def format_part(self, t: dict) -> dict:
        from dataclasses import asdict

        from nvdata.instruct import BatchFormatter
        from nvdata.schema import FORMATTED_KEYED

        fmt = BatchFormatter(self.entries[t["source"]], self.cfg, self.instructions)
        rows = _write_part(fstage.unmerged_part(Path(t["out"]), t["part"]), FORMATTED_KEYED,
                           (fmt.format_batch(b) for b in iter_row_range(Path(t["path"]), t["start"], t["stop"],
                                                                         self.batch_rows)))
        return {"rows": rows, "counts": asdict(fmt.counts)}


@dataclass
class _EncodeTally:
    """One dense source's chunks embedded on the pool ahead of its miner (query and corpus)."""

    hits: int = 0
    misses: int = 0
    texts_loaded: int = 0
    texts_encoded: int = 0
    batches: int = 0
    seconds: float = 0.0
    workers: int = 0
    busy_seconds: float = 0.0  # actor time spent on the source, every phase

    def add(self, got: dict) -> None:
        if got["cached"]:
            self.hits, self.texts_loaded = self.hits + 1, self.texts_loaded + got["texts"]
        else:
            self.misses, self.texts_encoded = self.misses + 1, self.texts_encoded + got["texts"]
        self.batches += got["batches"]
        self.seconds += got["seconds"]
        self.workers = max(self.workers, got["workers"])
        self.busy_seconds += got["wall"]

    def merged(self, in_miner: dict) -> dict:
        """The source's ``encode`` figures in the local miner's schema: each text block
        counted once, a hit if it was in the cache before the stage. ``in_miner``: what the
        miner's prepare phase did itself (it loads every block embedded ahead, so its
        hits beyond those, and all its misses, are blocks the pool did not embed: the
        positives the corpus lacks)."""
        calls = self.hits + self.misses
        texts = self.texts_loaded + self.texts_encoded
        return {
            "hits": self.hits + max(0, in_miner.get("hits", 0) - calls),
            "misses": self.misses + in_miner.get("misses", 0),
            "texts_loaded": self.texts_loaded + max(0, in_miner.get("texts_loaded", 0) - texts),
            "texts_encoded": self.texts_encoded + in_miner.get("texts_encoded", 0),
            "batches": self.batches + in_miner.get("batches", 0),
            "seconds": round(self.seconds + in_miner.get("seconds", 0.0), 3),
            "workers": self.workers,  # tokenizer threads per actor
        }


class _DenseWorker:
    """Ray actor serving the whole dense mine stage: the encoder is loaded once, then it embeds
    corpus chunks and query chunks into the content-keyed cache and runs the dense miner's
    phases (:mod:`nvdata.mine.dense`: prepare, one query block's search, finish) on work
    folders in the stage cache, which every node reaches."""

    def __init__(self, stage: mstage.DenseEncoder, cache_dir: str):
        import ray

        self.stage, self.enc = stage, stage.setup()
        self.cache_dir = Path(cache_dir)
        self.gpus = len(ray.get_gpu_ids())
        self._memo: tuple[str, object] | None = None  # (work folder, its corpus text codes)

    @property
    def workers(self) -> int:
        """Tokenizer threads of this actor's encoder."""
        from nvdata.mine.encode import default_num_workers

        cfg = self.stage.cfg
        return cfg.num_workers if cfg.num_workers is not None else default_num_workers(self.enc.device)

    @contextmanager
    def _cache(self):
        from nvdata.mine.encode import EmbeddingCache

        cfg = self.stage.cfg
        with EmbeddingCache(self.cache_dir, self.enc, batch_size=cfg.batch_size, num_workers=self.workers) as cache:
            yield cache

    def _embed(self, texts: list[str], prompt: str | None) -> dict:
        t0, before = time.perf_counter(), self.enc.stats.to_dict()
        with self._cache() as cache:
            cached = cache.path_for(texts, prompt).exists()
            if not cached:
                cache.embed(texts, prompt=prompt)
        after = self.enc.stats.to_dict()
        return {"texts": len(texts), "cached": cached, "gpus": self.gpus, "workers": self.workers,
                "batches": after["batches"] - before["batches"], "seconds": after["seconds"] - before["seconds"],
                "wall": time.perf_counter() - t0}

    def embed_chunk(self, path: str, start: int, stop: int) -> dict:
        """Rows ``[start, stop)`` of a corpus table, embedded as one cache file (kept if there)."""
        cfg = self.stage.cfg
        prompt = self.enc.prompt("document") if cfg.document_prompt == "model" else None
        texts = [s for b in iter_row_range(Path(path), start, stop, cfg.chunk_size)
                 for s in b.column("text").to_pylist()]
        return self._embed(texts, prompt)

    def embed_queries(self, source: str, instruction: str | None, texts: list[str]) -> dict:
        """One chunk of :func:`nvdata.mine.dense.query_chunks` of ``source``, embedded as one cache file."""
        from nvdata.mine import dense

        return {**self._embed(texts, dense.query_prompt(self.enc, self.stage.cfg, instruction)), "source": source}

    def group(self, job: plan.MinePlan, work: str, batch_rows: int) -> tuple[str, float]:
        from nvdata.mine import dense

        t0 = time.perf_counter()
        dense.group_queries(job.rows_file, Path(work), batch_rows)
        return job.name, time.perf_counter() - t0

    def prepare(self, job: plan.MinePlan, seed: int, work: str, batch_rows: int, block: int) -> tuple[str, list, float]:
        """The dense miner's prepare phase (its queries and corpus chunks found in the cache)."""
        from nvdata.mine import dense

        t0 = time.perf_counter()
        with self._cache() as cache:
            meta = dense.prepare(job.rows_file, job.corpus, Path(work), self.stage.cfg, enc=self.enc, cache=cache,
                                 seed=seed, batch_rows=batch_rows, block=block)
        return job.name, meta["blocks"], time.perf_counter() - t0

    def search_block(self, name: str, work: str, start: int) -> tuple[str, float]:
        """One query block of a source against all its corpus chunks; results into ``work``."""
        from nvdata.mine import dense

        t0 = time.perf_counter()
        if self._memo is None or self._memo[0] != work:
            self._memo = (work, dense.doc_hash_memo(dense.corpus_size(Path(work))))
        got = dense.search_block(Path(work), start, self.stage.cfg, device=self.enc.device, doc_hash=self._memo[1])
        return name, time.perf_counter() - t0

    def finish(self, job: plan.MinePlan, work: str, out: str, batch_rows: int) -> tuple[str, dict, float]:
        """The blocks merged, the rows and report written into the stage folder ``out``."""
        t0, self._memo = time.perf_counter(), None
        report = mstage.finish_dense(job.rows_file, Path(work), cfg=self.stage.cfg, out=Path(out),
                                     batch_rows=batch_rows)
        return job.name, report, time.perf_counter() - t0

    def mine(self, job: plan.MinePlan, recipe, cache: str, out, batch_rows: int) -> tuple[str, dict]:
        """One source's mine plan that needs the encoder on this actor alone (dense STS)
        (:func:`nvdata.engine.plan.mine_source`), with this actor's loaded model."""
        return job.name, plan.mine_source(job, recipe, self.stage, Path(cache), out, batch_rows)


def _remote_functions(ray):
    @ray.remote(max_retries=TASK_RETRIES)
    def download(entry, cache, mirror, limit):
        return download_source(entry, cache=cache, mirror=mirror, limit=limit)

    @ray.remote(max_retries=TASK_RETRIES)
    def join_parts(parts: list[str], dest: str) -> int:
        """The parts of one table, in part order, as one file (the name the local engine writes)."""
        if Path(dest).exists() and not all(Path(p).exists() for p in parts):  # a re-run of a finished join
            return pq.ParquetFile(dest).metadata.num_rows
        if len(parts) == 1:
            os.replace(parts[0], dest)
            return pq.ParquetFile(dest).metadata.num_rows
        schema = pq.read_schema(parts[0])
        rows = _write_part(Path(dest), schema, (b for p in parts for b in parquet_file(p).iter_batches()))
        for p in parts:
            Path(p).unlink()
        return rows

    @ray.remote(max_retries=TASK_RETRIES)
    def format_source(entry, clean_raw, cfg, seed, max_rows, out, batch_rows):
        return fstage.format_rows(entry, clean_raw, cfg=cfg, seed=seed, max_rows=max_rows, out=out,
                                  batch_rows=batch_rows)

    @ray.remote(max_retries=TASK_RETRIES)
    def merge_formatted(entry, parts, part_counts, cfg, seed, max_rows, out, batch_rows):
        return fstage.merge_parts(entry, parts, part_counts, cfg=cfg, seed=seed, max_rows=max_rows, out=out,
                                  batch_rows=batch_rows)

    @ray.remote(max_retries=TASK_RETRIES)
    def after_decontamination(entry, folder, key, recipe, cache, mirror):
        return plan.after_decontamination(entry, folder, key, recipe, cache, mirror)

    @ray.remote(max_retries=TASK_RETRIES)
    def mine_source(job, recipe, cache, out, batch_rows):
        """A mine plan that needs no encoder (BM25, none)."""
        return plan.mine_source(job, recipe, None, cache, out, batch_rows)

    return download, join_parts, format_source, merge_formatted, after_decontamination, mine_source


# -- the executor -----------------------------------------------------------------------------------


def run_stages(ctx: BuildContext) -> StageOutputs:
    """Run download -> decontaminate -> format -> mine on Ray (see the module docstring)."""
    with ray_session(ctx.ray_address) as ray:
        _configure_ray_data(ray)
        return _Run(ray, ctx).stages()


class _Run:
    def __init__(self, ray, ctx: BuildContext):
        self.ray, self.ctx = ray, ctx
        self.cpus, self.gpus, self.nodes = _cluster(ray)
        self.inflight: list = []  # every task launched, so a failing stage can stop them first
        (self.download_task, self.join_task, self.format_task, self.merge_format_task,
         self.after_decontamination_task, self.mine_task) = (
            _Launched(fn, self.inflight) for fn in _remote_functions(ray))
        self.results: dict[str, SourceResult] = {}
        self.skipped: dict[str, str] = {}

    def stages(self) -> StageOutputs:
        ctx = self.ctx

        def started(stage: str, total: int) -> None:  # each bar and its clock start with the stage
            ctx.say(stage, 0, total, f"{total} source(s) on Ray")

        with ctx.timer("download"):
            started("download", len(ctx.recipe.sources))
            raws = self.download()
        if not raws:
            raise NvdataError(f"recipe {ctx.recipe.name!r}: no source could be built")
        with ctx.timer("decontaminate"):
            started("decontaminate", len(raws))
            index, decontam_dirs, hits = self.decontaminate(raws)
        with ctx.timer("format"):
            started("format", len(raws))
            fmt = self.format(raws, decontam_dirs)
        with ctx.timer("mine"):
            started("mine", len(raws))
            mine_reports = self.mine(raws, decontam_dirs, fmt)
        return StageOutputs(self.results, self.skipped, index, hits, mine_reports)

    # 1. download: a task per source
    def download(self) -> dict[str, RawSource]:
        ctx, reg = self.ctx, self.ctx.registry
        refs, order = {}, [s.name for s in ctx.recipe.sources]
        total, done = len(order), 0
        for spec in ctx.recipe.sources:
            entry = reg[spec.name]
            if not obtainable(entry, ctx.mirror):
                self.skipped[entry.name] = f"not publicly available: {entry.unavailable_reason}"
                done += 1
                ctx.say("download", done, total, f"{entry.name}: SKIPPED ({self.skipped[entry.name]})")
                continue
            limit = min_limit(ctx.limit, spec.limit)
            refs[entry.name] = self.download_task.remote(entry, ctx.cache, ctx.mirror, limit)
        got: dict[str, RawSource] = {}

        def done_one(name, raw):
            nonlocal done
            done += 1
            got[name] = raw
            ctx.say("download", done, total, f"{name}: {raw.rows} rows{' (cached)' if raw.cached else ''}")

        _wait_all(self.ray, refs, done_one)
        raws = {n: got[n] for n in order if n in got}  # recipe order, not arrival order
        for name, raw in raws.items():
            self.results[name] = SourceResult(name, raw.task_type, raw_rows=raw.rows,
                                              details={"download_cached": raw.cached})
        return raws

    # 2. decontaminate: map_batches over the raw parts on an actor pool
    def decontaminate(self, raws: dict[str, RawSource]):
        from nvdata import decontam

        ctx, recipe = self.ctx, self.ctx.recipe
        index = decontam.build_test_index(recipe.decontamination, mirror=ctx.mirror,
                                          cache_dir=ctx.cache / "test-index")
        folders: dict[str, tuple[Path, str]] = {}  # text decontamination
        after: dict[str, object] = {}  # the per-source steps after it (plan.after_decontamination)
        with _staged(self.ray, self.inflight) as staged:
            todo: dict[str, list[tuple[str, Path, Path]]] = {}  # source -> (table, raw file, stage tmp)
            for name, raw in raws.items():
                key = decontaminate_key(raw.path.name, recipe, index.key)
                final, tmp = staged.open(ctx.cache, "decontaminate", name, key)
                folders[name] = (final, key)
                if tmp is None:
                    after[name] = self._after_decontamination(name, final, key)
                else:
                    todo[name] = [(kind, path, tmp) for kind, path in dstage.raw_tables(raw)]
            items = self._parts(todo)
            if items:
                pool = self._pool(len(items))
                outcome: dict[tuple, dict] = {}
                left = {name: sum(1 for it in items if it["source"] == name) for name in todo}
                joins: dict[tuple[str, str], object] = {}
                for t, result in _map_over_pool(self.ray, items, _Decontaminator, pool, index_path=str(index.path),
                                                cfg=recipe.decontamination, batch_rows=ctx.batch_rows):
                    outcome[(t["source"], t["kind"], t["part"])] = result
                    left[t["source"]] -= 1
                    if left[t["source"]] == 0:  # every part of this source is clean: join them
                        for kind, path, tmp in todo[t["source"]]:
                            parts = [str(Path(it["out"]) / part_name(path.stem, it["part"]))
                                     for it in items if it["source"] == t["source"] and it["kind"] == kind]
                            joins[(t["source"], kind)] = self.join_task.remote(parts, str(tmp / path.name))
                joined: dict[str, set] = {name: set() for name in todo}

                def table_joined(key, _rows):
                    name, kind = key
                    joined[name].add(kind)
                    if len(joined[name]) == len(todo[name]):
                        self._finish_decontaminate(name, todo[name], items, outcome, staged)
                        after[name] = self._after_decontamination(name, *folders[name])

                _wait_all(self.ray, joins, table_joined)
        final: dict[str, tuple[Path, str]] = {}
        said = 0

        def done_after(name, got: plan.Decontaminated):
            nonlocal said
            said += 1
            final[name] = (got.folder, got.key)
            r = self.results[name]
            r.details.update(got.details)
            ctx.say("decontaminate", said, len(raws),
                    f"{name}: {named_counts.decontamination_line(got.details['decontam_counts'])}")

        _wait_all(self.ray, after, done_after)
        final = {name: final[name] for name in raws}  # recipe order
        hits: list[dict] = []
        for name in raws:
            hits.extend(json.loads((final[name][0] / "hits.json").read_text()))
        return index, final, hits

    def _after_decontamination(self, name: str, folder: Path, key: str):
        """The per-source steps after text decontamination, as one Ray task (a reference)."""
        ctx = self.ctx
        return self.after_decontamination_task.remote(ctx.registry[name], folder, key, ctx.recipe, ctx.cache,
                                                      ctx.mirror)

    def _parts(self, todo) -> list[dict]:
        """Each table cut into parts of whole batches (``batch_rows``), enough parts to
        keep every CPU busy, at most ``PART_BATCHES_MAX`` batches each."""
        br = self.ctx.batch_rows
        sizes = {(name, kind): pq.ParquetFile(path).metadata.num_rows
                 for name, tables in todo.items() for kind, path, _ in tables}
        batches = sum(max(1, math.ceil(n / br)) for n in sizes.values())
        per_part = min(PART_BATCHES_MAX, max(1, math.ceil(batches / (4 * max(self.cpus, 1)))))
        items = []
        for name, tables in todo.items():
            for kind, path, tmp in tables:
                n = sizes[(name, kind)]
                step = per_part * br
                for part, start in enumerate(range(0, max(n, 1), step)):
                    items.append({"source": name, "kind": kind, "path": str(path), "part": part,
                                  "start": start, "stop": min(start + step, n), "out": str(tmp)})
        return items

    def _finish_decontaminate(self, name, tables, items, outcome, staged) -> None:
        from nvdata import emit

        tmp = tables[0][2]
        hits, counts = [], {}
        for kind, path, _ in tables:
            mine = sorted((it for it in items if it["source"] == name and it["kind"] == kind),
                          key=lambda it: it["part"])
            kept = texts = 0
            for it in mine:
                o = outcome[(name, kind, it["part"])]
                hits.extend(o["hits"])
                kept += o["kept"]
                texts += o["texts"]
            checked = pq.ParquetFile(path).metadata.num_rows
            counts[kind] = {"checked": checked, "kept": kept, "dropped": checked - kept, "texts": texts}
        emit.write_json(tmp / "hits.json", hits)
        emit.write_json(tmp / "counts.json", counts)
        staged.finish(name)

    def _pool(self, work: int, *, gpu: bool = False) -> Pool:
        return plan_pool(self.cpus, self.gpus, self.nodes, work, gpu=gpu)

    # 3. format: retrieval / STS as map_batches over parts + an ordered merge task per source;
    #    classification / clustering as a task per source
    def format(self, raws, decontam_dirs) -> dict[str, tuple[Path, str]]:
        ctx, recipe, reg = self.ctx, self.ctx.recipe, self.ctx.registry
        instr_key, specs = instructions_key(), ctx.specs
        fmt: dict[str, tuple[Path, str]] = {}
        total, done = len(raws), 0

        def formatted(name):
            nonlocal done
            done += 1
            fdir = fmt[name][0]
            self.results[name].details["format_report"] = json.loads((fdir / "report.json").read_text())
            rows = pq.ParquetFile(fdir / "rows.parquet").metadata.num_rows
            ctx.say("format", done, total, f"{name}: {rows} rows")

        with _staged(self.ray, self.inflight) as staged:
            streamed: dict[str, tuple[Path, Path]] = {}  # source -> (decontaminated table, stage tmp)
            labelled: dict[str, tuple[Path, Path]] = {}
            for name in raws:
                d, dkey = decontam_dirs[name]
                key = plan.source_format_key(reg[name], dkey, recipe, instr_key, specs[name].max_rows)
                fdir, tmp = staged.open(ctx.cache, "format", name, key)
                fmt[name] = (fdir, key)
                clean = d / raws[name].data_file.name
                if tmp is None:
                    formatted(name)
                elif reg[name].task_type in fstage.STREAMED:
                    streamed[name] = (clean, tmp)
                else:
                    labelled[name] = (clean, tmp)
            refs = self._format_parts(streamed)
            for name, (clean, tmp) in labelled.items():
                refs[name] = self.format_task.remote(reg[name], clean, recipe.format, recipe.seed,
                                                     specs[name].max_rows, tmp, ctx.batch_rows)

            def done_one(name, _report):
                staged.finish(name)
                formatted(name)

            _wait_all(self.ray, refs, done_one)
        return fmt

    def _format_parts(self, streamed: dict[str, tuple[Path, Path]]) -> dict:
        """Retrieval / STS formatting of the ``streamed`` sources (name -> (decontaminated
        table, stage tmp)): the map over every part of every source on one actor pool, and
        each source's merge task, started as soon as its last part is done. Returns the merge
        tasks' references by source."""
        ctx, reg = self.ctx, self.ctx.registry
        items = self._parts({name: [(reg[name].task_type, clean, tmp)] for name, (clean, tmp) in streamed.items()})
        refs: dict[str, object] = {}
        if not items:
            return refs
        pool = self._pool(len(items))
        ctx.say("format", 0, len(self.results), f"{len(items)} part(s) of {len(streamed)} source(s) on {pool.describe()}")
        counts: dict[tuple[str, int], dict] = {}
        left = {name: sum(1 for it in items if it["source"] == name) for name in streamed}
        for t, result in _map_over_pool(self.ray, items, _Formatter, pool, entries={n: reg[n] for n in streamed},
                                        cfg=ctx.recipe.format, batch_rows=ctx.batch_rows):
            name = t["source"]
            counts[(name, t["part"])] = result["counts"]
            left[name] -= 1
            if left[name] == 0:  # every part of this source is formatted: merge them, in part order
                parts = sorted(it["part"] for it in items if it["source"] == name)
                tmp = streamed[name][1]
                refs[name] = self.merge_format_task.remote(
                    reg[name], [fstage.unmerged_part(tmp, p) for p in parts], [counts[(name, p)] for p in parts],
                    ctx.recipe.format, ctx.recipe.seed, ctx.specs[name].max_rows, tmp, ctx.batch_rows)
        return refs

    # 4. mine: dense (encoder pool + search tasks), BM25 tasks, the rest on the driver
    def mine(self, raws, decontam_dirs, fmt) -> dict[str, dict]:
        ctx, recipe, reg = self.ctx, self.ctx.recipe, self.ctx.registry
        sts_names = [n for n in raws if reg[n].task_type == "sts"]
        total, done = len(raws), 0
        mdirs: dict[str, Path] = {}

        def mined(name):
            nonlocal done
            done += 1
            r = self.results[name]
            plan.summarize_mined(r, mdirs[name] / "rows.parquet", ctx.batch_rows)
            ctx.say("mine", done, total, f"{name}: {r.rows} rows, {r.mean_negatives:.2f} negatives/row")

        encoder = None
        with _staged(self.ray, self.inflight) as staged:
            on_actors, refs = {}, {}
            for name in raws:
                entry = reg[name]
                if encoder is None and plan.needs_encoder(entry, recipe):
                    encoder = mstage.DenseEncoder(ctx.encoder, ctx.device, recipe.dense)
                job = plan.mine_plan(entry, fmt[name], recipe, decontam_dirs, sts_names,
                                     encoder.fingerprint if encoder is not None else None)
                mdirs[name], tmp = staged.open(ctx.cache, "mine", name, job.key)
                if tmp is None:
                    continue
                if job.needs_encoder:  # dense retrieval, dense STS: on the encoder actors
                    on_actors[name] = (job, tmp)
                elif job.method == plan.NONE:  # a copy: not worth a task
                    plan.mine_source(job, recipe, None, ctx.cache, tmp, ctx.batch_rows)
                    staged.finish(name)
                else:  # BM25: a per-source reduction, one task
                    refs[name] = self.mine_task.remote(job, recipe, ctx.cache, tmp, ctx.batch_rows)

            def done_one(name, _report):
                staged.finish(name)

            if on_actors:
                self._mine_dense(encoder, on_actors, total, done_one)
            _wait_all(self.ray, refs, done_one)
        for name in raws:  # report in recipe order, as the local engine does
            mined(name)
        return {name: json.loads((mdirs[name] / "report.json").read_text()) for name in raws}

    def _mine_dense(self, encoder: mstage.DenseEncoder, jobs: dict, total: int, done_one) -> None:
        """The sources whose mining needs the encoder (``jobs``: name -> (MinePlan, stage tmp)),
        on one actor pool of encoders, each step a fan-out over the pool:

        1. every corpus chunk the dense miners will search, embedded into the cache (chunks of
           ``chunk_size`` in corpus order: the miner's chunks, so it finds them there);
        2. each dense source's queries grouped (:func:`nvdata.mine.dense.group_queries`) into a
           work folder in its stage folder, then its query chunks
           (:func:`nvdata.mine.dense.query_chunks`) embedded into the cache;
        3. each source prepared (:func:`nvdata.mine.dense.prepare`: every embedding is cached);
        4. every source's query blocks searched, filtered and selected on whichever actor is
           free (:func:`nvdata.mine.dense.search_block`; the block size comes from the recipe,
           not from the pool, and each block's results are files named by its first query);
        5. each source's blocks merged in block order and its rows written
           (:func:`nvdata.mine.dense.finish`). Dense STS sources are mined whole by one actor.
        """
        from ray.util import ActorPool

        from nvdata.mine import dense

        ray, cfg = self.ray, encoder.cfg
        def spread(job: plan.MinePlan) -> bool:  # an empty source is mined whole (nothing to search)
            return job.method == plan.DENSE and pq.ParquetFile(job.rows_file).metadata.num_rows > 0

        dense_jobs = {n: jt for n, jt in jobs.items() if spread(jt[0])}
        whole = [jt for n, jt in jobs.items() if n not in dense_jobs]
        work = {n: str(tmp / ".dense-work") for n, (_, tmp) in dense_jobs.items()}
        chunks, of_chunk = [], {}
        for job, _ in dense_jobs.values():
            n = pq.ParquetFile(job.corpus).metadata.num_rows
            for s in range(0, n, cfg.chunk_size):
                chunks.append((str(job.corpus), s, min(s + cfg.chunk_size, n)))
                of_chunk.setdefault(chunks[-1], []).append(job.name)  # a corpus two sources share counts for both
        ahead = {name: _EncodeTally() for name in dense_jobs}
        rows = sum(pq.ParquetFile(job.rows_file).metadata.num_rows for job, _ in dense_jobs.values())
        block = dense.query_block_size(cfg)
        pool = self._pool(max(len(chunks), len(jobs), -(-rows // block)), gpu=True)
        worker = ray.remote(_DenseWorker).options(
            num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, max_restarts=-1, max_task_retries=TASK_RETRIES)
        actors = [worker.remote(encoder, str(self.ctx.cache / "embeddings")) for _ in range(pool.size)]
        recipe, batch_rows = self.ctx.recipe, self.ctx.batch_rows
        self.ctx.say("mine", 0, total, f"{len(jobs)} source(s) on the encoder pool ({pool.describe()}): "
                     f"{len(chunks)} corpus chunk(s), {rows:,} rows")
        try:
            actor_pool = ActorPool(actors)
            texts = encoded = 0
            visible: set[int] = set()

            def embedded(got, names=()):
                nonlocal texts, encoded
                texts += got["texts"]
                encoded += 0 if got["cached"] else got["texts"]
                visible.add(got["gpus"])
                for name in names:
                    ahead[name].add(got)

            for c, got in zip(chunks, actor_pool.map(lambda a, c: a.embed_chunk.remote(*c), chunks)):
                embedded(got, of_chunk[c])
            if chunks:
                gpus = f", {max(visible)} GPU visible per actor" if max(visible, default=0) else ""
                self.ctx.say("mine", 0, total, f"corpus embeddings: {encoded} of {texts} texts encoded "
                             f"({texts - encoded} cached) on {pool.describe()}{gpus}")
            for name, seconds in actor_pool.map_unordered(
                    lambda a, jt: a.group.remote(jt[0], work[jt[0].name], batch_rows), list(dense_jobs.values())):
                ahead[name].busy_seconds += seconds
            texts = encoded = 0
            query_chunks = ((job.name, key, qt) for job, _ in dense_jobs.values()
                            for key, _, qt in dense.query_chunks(job.rows_file, dense.first_rows(Path(work[job.name])),
                                                                 cfg, batch_rows))
            for got in _bounded_map(actor_pool, lambda a, c: a.embed_queries.remote(c[0], c[1], c[2]), query_chunks,
                                    2 * pool.size):
                embedded(got, (got["source"],))
            blocks = []
            for name, starts, seconds in actor_pool.map_unordered(
                    lambda a, jt: a.prepare.remote(jt[0], recipe.seed, work[jt[0].name], batch_rows, block),
                    list(dense_jobs.values())):
                blocks += [(name, s) for s in starts]
                ahead[name].busy_seconds += seconds
            for name, seconds in actor_pool.map_unordered(lambda a, b: a.search_block.remote(b[0], work[b[0]], b[1]),
                                                          sorted(blocks)):
                ahead[name].busy_seconds += seconds  # the results are files in the work folder, named by block
            for name, report, seconds in actor_pool.map_unordered(
                    lambda a, jt: a.finish.remote(jt[0], work[jt[0].name], str(jt[1]), batch_rows),
                    list(dense_jobs.values())):
                # The report covers the whole source as the local miner's does (same schema): its
                # chunks were embedded on the pool ahead of the miner, which found them cached;
                # total_seconds is the actor time spent on it, every phase (local: its wall time).
                report["encode"] = ahead[name].merged(report["encode"])
                report.setdefault("timing", {})["total_seconds"] = round(ahead[name].busy_seconds + seconds, 3)
                emit.write_json(dense_jobs[name][1] / "report.json", report)
                done_one(name, report)
            for name, report in actor_pool.map_unordered(
                    lambda a, jt: a.mine.remote(jt[0], recipe, str(self.ctx.cache), jt[1], batch_rows), whole):
                done_one(name, report)
        except Exception as e:  # noqa: BLE001
            raise _unwrap(e) from None
        finally:
            for a in actors:
                ray.kill(a)
