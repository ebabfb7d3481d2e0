"""`nvdata build --engine ray`: the same shards as the local engine, on a 2-CPU local Ray.

One Ray session for the whole module (starting Ray costs seconds): 2 CPUs, like the machines
this was measured on, and one *declared* GPU, so the encoder actors take the ``num_gpus=1``
placement path on a CPU-only machine (torch still finds no CUDA and runs on the CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ray  # the nvdata[ray] extra; `make test` installs it

from nvdata import build as build_mod
from nvdata.build import run_build
from nvdata.engine import ray as ray_engine
from nvdata.engine.ray import iter_row_range, plan_pool
from nvdata.recipe import load_recipe
from nvdata.stages import iter_batches

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    return run_build(load_recipe("stage2"), out=root / "out", sample=True, cache=root / "cache")


def _shard_bytes(res) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((res.out / "shards").iterdir())}


class _WorkerKiller(threading.Thread):
    """SIGKILLs the first dense encoder actor of this test's Ray (a descendant of this process)
    seen at work, once, as a node failure would."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: str | None = None
        self.stop = threading.Event()

    def run(self):
        import psutil

        me = psutil.Process()
        while not self.stop.is_set() and self.killed is None:
            for p in me.children(recursive=True):
                try:
                    title = (p.cmdline() or [""])[0]
                except psutil.Error:
                    continue
                if title.startswith("ray::_DenseWorker."):
                    os.kill(p.pid, signal.SIGKILL)
                    self.killed = title
                    return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def ray_build(ray_cluster, tmp_path_factory):
    """A Ray build whose driver first dies in the mine stage, then resumes; during the resumed
    run one encoder actor is SIGKILLed mid-work."""
    root = tmp_path_factory.mktemp("ray")
    recipe, out, cache = load_recipe("stage2"), root / "out", root / "cache"

    def crash(*a, **k):
        raise RuntimeError("simulated driver crash in the mine stage")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_engine._Run, "_mine_dense", crash)
        with pytest.raises(RuntimeError, match="simulated"):
            run_build(recipe, out=out, sample=True, cache=cache, engine="ray")
    crashed = {
        "published": out.exists(),
        "unfinished": [p.name for p in (cache / "mine").iterdir() if not (p / "done.json").is_file()],
        "formatted": {p.name: (p / "done.json").stat().st_mtime_ns for p in (cache / "format").iterdir()},
    }
    messages: list[tuple] = []
    killer = _WorkerKiller()
    killer.start()
    try:
        res = run_build(recipe, out=out, sample=True, cache=cache, engine="ray",
                        progress=lambda *m: messages.append(m))
    finally:
        killer.stop.set()
    formatted = {p.name: (p / "done.json").stat().st_mtime_ns for p in (cache / "format").iterdir()}
    return res, cache, crashed, formatted, messages, killer.killed


# -- every per-source feature: shared corpus, test-similarity filter, a custom source, dense STS ------

FAQ_INSTRUCTION = "Given a customer question, retrieve the FAQ answer that resolves it"
FEATURES_LIMIT = 40


@pytest.fixture(scope="module")
def features_recipe(tmp_path_factory):
    """A small recipe using each hook the local engine gained after the Ray engine was written:
    scifact (shared-corpus test ids), a recipe-declared local source with its own instruction,
    sts12 mined with ``mining.sts.method: dense``, emotion through the test-similarity filter."""
    import yaml

    root = tmp_path_factory.mktemp("features")
    (root / "faq.jsonl").write_text("".join(
        json.dumps({"question": f"how do I fix my {t} problem number {i}",
                    "answer": f"For {t} problems open settings, choose {t} and follow step {i}."}) + "\n"
        for i, t in enumerate(["invoice", "password", "delivery", "refund", "warranty"] * 4)))
    (root / "r.yaml").write_text(yaml.safe_dump({
        "name": "features", "stage": 2,
        "sources": {"scifact": {}, "sts12": {}, "emotion": {},
                    "support_faq": {"custom": {"path": "faq.jsonl", "task_type": "retrieval",
                                               "columns": {"query": "question", "positive": "answer"},
                                               "instruction": FAQ_INSTRUCTION}}},
        "mining": {"sts": {"method": "dense"}, "bm25": {"num_negatives": 2}, "dense": {"num_negatives": 3, "search_batch_size": 2}},
        "test_similarity_filter": {"threshold": 3.0, "sources": {"emotion": "EmotionClassification"}},
    }))
    return load_recipe(root / "r.yaml")


@pytest.fixture(scope="module")
def features_builds(ray_cluster, features_recipe, tmp_path_factory):
    from nvdata.mine import dense

    root = tmp_path_factory.mktemp("features-builds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dense, "_QUERY_BLOCK", 4)  # the dense sources' queries in several search blocks
        local = run_build(features_recipe, out=root / "local", sample=True, cache=root / "local-cache",
                          limit=FEATURES_LIMIT)
        on_ray = run_build(features_recipe, out=root / "ray", sample=True, cache=root / "ray-cache",
                           limit=FEATURES_LIMIT, engine="ray")
    return local, on_ray, root / "ray-cache"


def _same_build(res, ref) -> None:
    assert _shard_bytes(res) == _shard_bytes(ref)
    for key in ("shards", "sources", "decontamination", "total_rows"):
        assert json.dumps(res.manifest[key], sort_keys=True, indent=1) == \
            json.dumps(ref.manifest[key], sort_keys=True, indent=1), key
    for report in ("test_similarity.json", "decontamination.json"):  # mining.json has timings, cache hits
        got, want = (json.loads((r.out / "reports" / report).read_text()) for r in (res, ref))
        if report == "decontamination.json":  # the test index's path is in the build's own cache
            got["index"].pop("path"), want["index"].pop("path")
        assert got == want, report


def test_every_per_source_feature_is_byte_identical_on_ray(features_builds):
    local, on_ray, ray_cache = features_builds
    # the features are really in play (else the comparison proves nothing); the sample's
    # test-relevant SciFact documents are all caught by text already, so the shared-corpus step
    # drops nothing more here, but it ran on Ray (its stage folder; the next test resumes from it)
    sources = local.manifest["sources"]
    assert sources["emotion"]["test_similarity_dropped"] > 0
    mining = json.loads((local.out / "reports" / "mining.json").read_text())
    assert mining["sts12"]["method"] == "dense"
    assert mining["scifact"]["search"]["query_blocks"] > 1
    faq = pq.read_table(local.out / "shards", filters=[("source", "=", "support_faq")])
    assert faq.num_rows > 0 and set(faq.column("instruction").to_pylist()) == {FAQ_INSTRUCTION}
    _same_build(on_ray, local)
    assert list((ray_cache / "shared_corpus").glob("scifact-*/done.json"))


def test_the_local_engine_resumes_every_feature_from_a_ray_cache(features_builds, features_recipe, tmp_path,
                                                                  monkeypatch):
    """The Ray engine wrote every stage folder under the key the local engine computes, the
    shared-corpus, similarity-filter and dense-STS folders included: nothing is redone."""
    local, _, ray_cache = features_builds

    def redone(*a, **k):
        raise AssertionError("the local engine redid a stage the Ray engine had finished")

    from nvdata import shared_corpus
    from nvdata.engine import local as local_engine
    from nvdata.mine import bm25

    monkeypatch.setattr(local_engine.dstage, "decontaminate_source", redone)
    monkeypatch.setattr(local_engine.fstage, "format_rows", redone)
    for name in ("mine_dense", "mine_bm25", "no_mining"):
        monkeypatch.setattr(local_engine.mstage, name, redone)
    monkeypatch.setattr(shared_corpus, "drop_test_pairs", redone)
    monkeypatch.setattr(bm25, "filter_by_test_similarity", redone)
    monkeypatch.setattr(bm25, "mine_sts_dense_negatives", redone)
    res = run_build(features_recipe, out=tmp_path / "out", sample=True, cache=ray_cache, limit=FEATURES_LIMIT)
    _same_build(res, local)


def test_ray_shards_are_byte_identical_to_the_local_engines(ray_build, local_build):
    res = ray_build[0]
    assert _shard_bytes(res) == _shard_bytes(local_build)
    for key in ("shards", "sources", "decontamination", "total_rows"):
        assert json.dumps(res.manifest[key], sort_keys=True, indent=1) == \
            json.dumps(local_build.manifest[key], sort_keys=True, indent=1), key


def test_a_crashed_driver_resumes_from_the_stage_cache(ray_build, local_build):
    res, cache, crashed, formatted, _, _ = ray_build
    assert not crashed["published"] and crashed["unfinished"] == []
    assert len(crashed["formatted"]) == len(local_build.sources)
    assert formatted == crashed["formatted"]  # the resumed run did not redo formatting


def test_a_killed_worker_is_restarted_by_ray(ray_build, local_build):
    res, *_, killed = ray_build
    assert killed, "no dense worker was seen at work"
    assert _shard_bytes(res) == _shard_bytes(local_build)


def test_progress_and_gpu_placement(ray_build):
    res, *_, messages, _ = ray_build
    recipe = load_recipe("stage2")
    assert len([m for m in messages if m[0] == "download" and m[1] > 0]) == len(recipe.sources)  # skipped too
    for stage in ("download", "decontaminate", "format", "mine"):  # each bar's clock starts with its stage
        assert next(m for m in messages if m[0] == stage)[1] == 0, stage
    for stage in ("decontaminate", "format", "mine"):
        done = [m[1] for m in messages if m[0] == stage and m[1] > 0]
        assert sorted(done) == list(range(1, len(res.sources) + 1)), stage
    # The encoders took the declared GPU: one actor of 1 GPU (+ the one CPU left over).
    pool_line = next(m[3] for m in messages if m[0] == "mine" and "corpus embeddings" in m[3])
    assert "1 actor(s) of 1 CPU + 1 GPU" in pool_line and "1 GPU visible per actor" in pool_line


def test_the_local_engine_reads_a_cache_the_ray_engine_wrote(ray_build, local_build, tmp_path, monkeypatch):
    """Same stage folders under the same keys: switching engines resumes instead of redoing."""
    cache = ray_build[1]

    def redone(*a, **k):
        raise AssertionError("the local engine redid a stage the Ray engine had finished")

    from nvdata.engine import local
    monkeypatch.setattr(local.dstage, "decontaminate_source", redone)
    monkeypatch.setattr(local.fstage, "format_rows", redone)
    for name in ("mine_dense", "mine_bm25", "no_mining"):
        monkeypatch.setattr(local.mstage, name, redone)
    res = run_build(load_recipe("stage2"), out=tmp_path / "local-out", sample=True, cache=cache)
    assert _shard_bytes(res) == _shard_bytes(local_build)


@pytest.mark.parametrize("cpus,gpus,nodes,work", [(2, 0, 1, 100), (2, 0, 1, 1), (1, 0, 1, 5), (3, 0, 1, 7),
                                                   (64, 0, 4, 1000), (2, 1, 1, 10), (32, 4, 2, 10),
                                                   (8, 0.5, 1, 3)])
def test_an_actor_pool_always_leaves_cpus_for_its_input(cpus, gpus, nodes, work):
    for gpu in (False, True):
        pool = plan_pool(cpus, gpus, nodes, work, gpu=gpu)
        assert 1 <= pool.size <= work
        assert pool.size * pool.num_cpus <= cpus - min(nodes, cpus / 2) + 1e-9
        if gpu and gpus:
            assert pool.num_gpus == min(1.0, gpus) and pool.size * pool.num_gpus <= gpus
        else:
            assert pool.num_gpus == 0
    assert plan_pool(2, 0, 1, 100) == ray_engine.Pool(2, 0.5)  # the 2-CPU case
    assert plan_pool(32, 4, 2, 10, gpu=True) == ray_engine.Pool(4, 1.0, 1.0)


def test_a_planned_pool_runs_where_the_naive_one_deadlocks(ray_cluster, tmp_path):
    """The issue's repro: read_parquet -> map_batches(ActorPoolStrategy(size=2)) at 1 CPU per
    actor never finishes on 2 CPUs (the actors hold both, the read task waits); sized by
    plan_pool it does."""
    for i in range(4):
        pq.write_table(pa.table({"x": list(range(i * 100, (i + 1) * 100))}), tmp_path / f"p{i}.parquet")

    class AddOne:
        def __call__(self, b):
            return {"x": b["x"] + 1}

    pool = plan_pool(*ray_engine._cluster(ray), work=4)
    ds = ray.data.read_parquet(str(tmp_path)).map_batches(
        AddOne, batch_size=100, compute=ray.data.ActorPoolStrategy(size=pool.size), num_cpus=pool.num_cpus)
    done: list = []
    t = threading.Thread(target=lambda: done.append(ds.sum("x")), daemon=True)
    t.start()
    t.join(timeout=120)
    assert done == [sum(range(400)) + 400]


def test_row_ranges_read_the_local_engines_batches(tmp_path):
    path = tmp_path / "t.parquet"
    with pq.ParquetWriter(path, pa.schema([("x", pa.int64())])) as w:
        start = 0
        for n in (3, 5, 7, 2, 9):  # row groups that do not line up with the batches
            w.write_table(pa.table({"x": list(range(start, start + n))}))
            start += n
    whole = [b.column(0).to_pylist() for b in iter_batches(path, batch_rows=4)]
    parts = [b.column(0).to_pylist() for lo in range(0, 26, 8) for b in iter_row_range(path, lo, min(lo + 8, 26), 4)]
    assert parts == whole


def test_engine_ray_without_ray_installed_says_how_to_install_it(tmp_path):
    """A real absent module (``sys.modules['ray'] = None`` makes ``import ray`` fail), through
    the CLI: one line, exit 2, no traceback, nothing written, the cache left alone."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "keep.txt").write_text("mine")
    code = ("import sys; sys.modules['ray'] = None; from nvdata.cli import app; "
            f"sys.argv = ['nvdata', 'build', '--recipe', 'stage2', '--sample', '--engine', 'ray', '--force', "
            f"'--out', {str(tmp_path / 'out')!r}, '--cache', {str(cache)!r}]; app()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'ray[data]>=2.51,<2.61'" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert (cache / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("address,env,message", [
    ("127.0.0.1:1", None, "--ray-address 127.0.0.1:1: nothing answers there"),
    ("headnode", None, "expected HOST:PORT"),
    (None, "127.0.0.1:1", "RAY_ADDRESS=127.0.0.1:1: nothing answers there"),  # as ray.init reads it
])
def test_a_cluster_address_nothing_answers_at_is_one_line_at_once(tmp_path, address, env, message):
    """ray.init retried an unreachable address for minutes; RAY_ADDRESS was ignored. A fresh
    driver process, through the CLI: one line, exit 2, nothing written."""
    cmd = [sys.executable, "-m", "nvdata.cli", "build", "--recipe", "stage2", "--sample", "--engine", "ray",
           "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    if address:
        cmd += ["--ray-address", address]
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if env:
        environ["RAY_ADDRESS"] = env
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_address_that_answers_but_is_not_ray_is_refused_and_a_real_gcs_is_not(ray_cluster):
    """An open port that is not a Ray GCS (a web server, the dashboard) made ray.init retry for
    minutes; a running cluster's GCS address must pass the same check."""
    import http.server

    from nvdata.engine.ray import _check_reachable
    from nvdata.errors import NvdataError

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with pytest.raises(NvdataError, match="something answers there but it is not a Ray cluster's GCS"):
            _check_reachable(f"127.0.0.1:{web.server_port}", "--ray-address web")
    finally:
        web.shutdown()
    _check_reachable(ray.get_runtime_context().gcs_address, "--ray-address gcs")  # no error


def test_a_ray_outside_the_tested_range_is_refused_with_the_install_line(monkeypatch):
    from nvdata.engine import ray as ray_engine

    monkeypatch.setattr(ray, "__version__", "2.40.0")
    with pytest.raises(build_mod.NvdataError, match=r"Ray 2.40.0 is not a version nvdata is tested with.*ray\[data\]"):
        ray_engine.import_ray()


def test_ray_address_without_engine_ray_is_refused(tmp_path):
    with pytest.raises(build_mod.NvdataError, match="--ray-address needs --engine ray"):
        run_build(load_recipe("stage2"), out=tmp_path / "out", sample=True, ray_address="auto")


def test_bad_input_on_a_worker_is_one_clear_line(ray_cluster, local_build, tmp_path):
    """An NvdataError raised inside a Ray Data actor reaches the driver as itself (one line,
    exit 2 in the CLI), not as Ray's wrapper with a remote traceback."""
    from nvdata.decontam import build_test_index
    from nvdata.errors import NvdataError
    from nvdata.paths import sample_mirror_dir

    recipe = load_recipe("stage2")
    index = build_test_index(recipe.decontamination, mirror=sample_mirror_dir(),
                             cache_dir=local_build.out.parent / "cache" / "test-index")  # cached: fast
    raw = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"row_index": [0, 1], "positive": ["a", "b"]}), raw)  # no "query"
    item = {"source": "broken", "kind": "pairs", "path": str(raw), "part": 0, "start": 0, "stop": 2,
            "out": str(tmp_path)}
    with pytest.raises(NvdataError) as e:
        list(ray_engine._map_over_pool(ray, [item], ray_engine._Decontaminator, plan_pool(2, 0, 1, 1),
                                       index_path=str(index.path), cfg=recipe.decontamination, batch_rows=8))
    assert type(e.value) is NvdataError
    assert "broken" in str(e.value) and "missing column" in str(e.value) and "\n" not in str(e.value)

    @ray.remote(max_retries=0)
    def bad_task():
        raise NvdataError("source x, row 3: null text")

    with pytest.raises(NvdataError) as e:  # the same from a Ray task (download, format, BM25)
        ray_engine._wait_all(ray, {"x": bad_task.remote()}, lambda *a: None)
    assert type(e.value) is NvdataError and str(e.value) == "source x, row 3: null text"

