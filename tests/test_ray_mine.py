"""Dense mining spread over the Ray engine's actor pool: one source's query blocks searched on
several actors give the local engine's shards byte for byte.

A Ray session of its own (2 CPUs, no GPU): the encoder pool is then 2 actors of 0.5 CPU
(:func:`nvdata.engine.ray.plan_pool`), where tests/test_ray_engine.py's declared GPU makes it one.
"""

from __future__ import annotations

import json

import pytest
import yaml

import ray  # the nvdata[ray] extra; `make test` installs it

from nvdata.build import run_build
from nvdata.mine import dense
from nvdata.recipe import load_recipe

pytestmark = pytest.mark.slow
LIMIT = 24


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """A retrieval source mined in blocks of 4 queries (search batches of 2), locally and on Ray."""
    root = tmp_path_factory.mktemp("ray-mine")
    (root / "r.yaml").write_text(yaml.safe_dump({
        "name": "ray-mine", "stage": 2, "sources": {"scifact": {}},
        "mining": {"dense": {"num_negatives": 3, "search_batch_size": 2}},
    }))
    recipe = load_recipe(root / "r.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dense, "_QUERY_BLOCK", 4)  # read by the driver; the block size travels to the actors
        local = run_build(recipe, out=root / "local", sample=True, cache=root / "local-cache", limit=LIMIT)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            on_ray = run_build(recipe, out=root / "ray", sample=True, cache=root / "ray-cache", limit=LIMIT,
                               engine="ray")
        finally:
            ray.shutdown()
    return local, on_ray, root / "ray-cache"


def _mining(res) -> dict:
    return json.loads((res.out / "reports" / "mining.json").read_text())


def test_one_sources_query_blocks_run_on_several_actors_and_give_the_local_shards(builds):
    local, on_ray, _ = builds
    shards = {p.name: p.read_bytes() for p in sorted((local.out / "shards").iterdir())}
    assert shards == {p.name: p.read_bytes() for p in sorted((on_ray.out / "shards").iterdir())}
    for name in ("scifact",):
        here, there = _mining(local)[name], _mining(on_ray)[name]
        assert here["search"]["query_blocks"] == there["search"]["query_blocks"] > 2, name
        assert (here["search"]["processes"], there["search"]["processes"]) == (1, 2), name
        for key in ("removed", "candidates", "negatives", "scores", "score_histograms"):
            assert here[key] == there[key], (name, key)


def test_the_ray_miner_leaves_no_work_folder(builds):
    _, on_ray, cache = builds
    assert not list((cache / "mine").rglob(".dense-work"))


def test_the_ray_report_counts_the_encoding_and_time_as_the_local_one_does(builds):
    local, on_ray, _ = builds
    for name in ("scifact",):
        here, there = _mining(local)[name], _mining(on_ray)[name]
        assert set(here["encode"]) == set(there["encode"]) and set(here["timing"]) == set(there["timing"])
        for key in ("hits", "misses", "texts_loaded", "texts_encoded", "batches", "workers"):
            assert here["encode"][key] == there["encode"][key], (name, key)
        assert there["encode"]["texts_encoded"] > 0
        assert 0 < there["timing"]["total_seconds"]
