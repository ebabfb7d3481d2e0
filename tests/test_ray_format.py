"""Formatting on Ray: a per-batch map over parts on an actor pool, then an ordered merge per
source; the same rows, bytes and reports as the local engine and as one batch.

The sources here repeat rows across batches and parts (exact copies, case and punctuation
variants, STS pairs given in both orders), so the merge must see the parts in source order.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ray

from nvdata.build import run_build
from nvdata.engine import plan
from nvdata.engine import ray as ray_engine
from nvdata.instruct import BatchFormatter, FormatConfig
from nvdata.recipe import load_recipe
from nvdata.registry import load_registry
from nvdata.schema import FORMATTED, FORMATTED_KEYED
from nvdata.stages import format as fstage
from nvdata.stages.io import write_batches
from nvdata.text import content_id

pytestmark = pytest.mark.slow

SMALL_BATCH = 4


class _StopAfterFormat(Exception):
    pass


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dup_recipe(tmp_path_factory):
    """A retrieval, an STS and a classification source of the user's own, with repeats."""
    import yaml

    root = tmp_path_factory.mktemp("dup-recipe")
    faq = []
    for i in range(60):  # rows i and i + 36 are the same row, by normalize_text (case, punctuation)
        q = f"How do I reset device {i % 9}?" if i % 2 else f"how do i reset DEVICE {i % 9}"
        faq.append({"question": q, "answer": f"Hold the button for {i % 4} seconds."})
    faq[13]["question"] = "   "  # blank: dropped as empty_text, so row 49 is the first of its kind
    (root / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in faq))
    sts = [{"s1": f"a cat sits on mat {i % 6}", "s2": f"a kitten rests on rug {i % 4}", "gold": 3.0 + (i % 3)}
           for i in range(40)]
    sts += [{"s1": r["s2"], "s2": r["s1"], "gold": r["gold"]} for r in sts[:10]]  # both orders
    pq.write_table(pa.Table.from_pylist(sts), root / "sts.parquet")
    (root / "intents.jsonl").write_text("".join(
        json.dumps({"utterance": f"please {v} my order number {i}", "intent": v}) + "\n"
        for i, v in enumerate(["cancel", "track", "return", "change"] * 6)))
    (root / "r.yaml").write_text(yaml.safe_dump({
        "name": "dups", "stage": 2,
        "sources": {
            "faq": {"custom": {"path": "faq.jsonl", "task_type": "retrieval",
                               "columns": {"query": "question", "positive": "answer"},
                               "instruction": "Given a device question, retrieve the answer"},
                    "max_rows": 20},
            "pairs": {"custom": {"path": "sts.parquet", "task_type": "sts",
                                 "columns": {"sentence1": "s1", "sentence2": "s2", "score": "gold"},
                                 "instruction": "Retrieve semantically similar text."}},
            "intents": {"custom": {"path": "intents.jsonl", "task_type": "classification",
                                   "columns": {"text": "utterance", "label": "intent", "label_text": "intent"},
                                   "instruction": "Classify the intent of a shop customer's message"}},
        },
        "decontamination": {"benchmarks": [], "add_tasks": ["STSBenchmark"]},
    }))
    return load_recipe(root / "r.yaml")


def _formatted(recipe, cache: Path, monkeypatch, *, engine: str, batch_rows: int | None) -> dict[str, dict]:
    """Build up to the format stage (the mine stage is stopped before it starts); each source's
    format folder as {file name: bytes}."""
    if batch_rows is None:
        monkeypatch.delenv("NVDATA_BATCH_ROWS", raising=False)
    else:
        monkeypatch.setenv("NVDATA_BATCH_ROWS", str(batch_rows))

    def stop(*a, **k):
        raise _StopAfterFormat

    with monkeypatch.context() as mp:
        mp.setattr(plan, "mine_plan", stop)
        with pytest.raises(_StopAfterFormat):
            run_build(recipe, out=cache.parent / f"{cache.name}-out", sample=True, cache=cache, engine=engine)
    return {d.name: {f.name: f.read_bytes() for f in sorted(d.iterdir())} for d in sorted((cache / "format").iterdir())}


@pytest.fixture(scope="module")
def builds(ray_cluster, dup_recipe, tmp_path_factory):
    """The format stage folders of: local in one batch, local in batches of 4, Ray in batches
    of 4 (the parts the Ray engine handed its format actors recorded)."""
    root = tmp_path_factory.mktemp("dup-builds")
    pools: list[tuple[str, list[dict], int]] = []
    real = ray_engine._map_over_pool

    def spy(ray_, items, fn_class, pool, **kwargs):
        got = list(real(ray_, items, fn_class, pool, **kwargs))
        pools.append((fn_class.__name__, items, len(got)))
        yield from got

    with pytest.MonkeyPatch.context() as mp:
        one = _formatted(dup_recipe, root / "local-one", mp, engine="local", batch_rows=None)
        many = _formatted(dup_recipe, root / "local-many", mp, engine="local", batch_rows=SMALL_BATCH)
        mp.setattr(ray_engine, "_map_over_pool", spy)
        on_ray = _formatted(dup_recipe, root / "ray-many", mp, engine="ray", batch_rows=SMALL_BATCH)
    return one, many, on_ray, pools


def _report(folders: dict, source: str) -> dict:
    (folder,) = [f for name, f in folders.items() if name.startswith(f"{source}-")]
    return json.loads(folder["report.json"])


def test_repeats_across_batches_are_merged_the_same_everywhere(builds):
    one, many, on_ray, _ = builds
    faq, pairs = _report(one, "faq"), _report(one, "pairs")
    # the repeats are really there (else equality proves nothing): 36 identities, one blank row
    assert faq["rows_in"] == 60 and faq["dropped"]["empty_text"] == 1
    assert faq["rows_out"] == 36 and faq["duplicates_merged"] == 23 and faq["capped"] == 16
    assert pairs["duplicates_merged"] > 0 and pairs["dropped"]["below_min_score"] > 0
    # same folder names (cache keys) and files; the same rows and report in one batch as in
    # many; and the same bytes on Ray as locally (rows.parquet's row groups are the batches)
    assert list(one) == list(many) == list(on_ray)
    for name in one:
        assert set(one[name]) == set(on_ray[name]) == {"done.json", "report.json", "rows.parquet"}, name
        assert pq.read_table(pa.BufferReader(many[name]["rows.parquet"])).equals(
            pq.read_table(pa.BufferReader(one[name]["rows.parquet"]))), name
        assert many[name]["report.json"] == one[name]["report.json"], name
        for file in ("rows.parquet", "report.json"):
            assert on_ray[name][file] == many[name][file], (name, file)


def test_ray_formats_a_source_as_several_map_tasks(builds):
    """Retrieval and STS went through the format actor pool in several parts each (classification
    did not: its label pools need the whole source); every part came back."""
    *_, pools = builds
    fmt = [(items, got) for cls, items, got in pools if cls == "_Formatter"]
    assert len(fmt) == 1, [cls for cls, *_ in pools]
    items, got = fmt[0]
    assert got == len(items)
    parts = {s: sorted(it["part"] for it in items if it["source"] == s) for s in {it["source"] for it in items}}
    assert set(parts) == {"faq", "pairs"}
    for source, numbers in parts.items():
        assert len(numbers) > 1 and numbers == list(range(len(numbers))), source
        covered = sorted((it["start"], it["stop"]) for it in items if it["source"] == source)
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:])), source  # contiguous, no gap
        assert all(start % SMALL_BATCH == 0 for start, _ in covered), source  # whole batches


def _keyed_part(path: Path, entry, raw: pa.Table, batch_rows: int) -> dict:
    """One part of the map, as a format actor writes it; its counts as the actor returns them."""
    fmt = BatchFormatter(entry, FormatConfig())
    write_batches(path, FORMATTED_KEYED, (fmt.format_batch(b) for b in raw.to_batches(max_chunksize=batch_rows)))
    return asdict(fmt.counts)


def test_merging_parts_equals_formatting_in_one_process_and_survives_a_retry(tmp_path):
    entry = load_registry()["nq"]
    qs = [f"Question {i % 5}?" if i % 3 else f"question {i % 5}" for i in range(30)]
    raw = pa.table({"row_index": list(range(30)), "query_id": [content_id(q) for q in qs], "query": qs,
                    "positive_id": [content_id(f"a {i % 4}") for i in range(30)],
                    "positive": [f"answer {i % 4}" for i in range(30)]})
    pq.write_table(raw, tmp_path / "pairs.parquet")
    (tmp_path / "whole").mkdir()
    want = fstage.format_rows(entry, tmp_path / "pairs.parquet", cfg=FormatConfig(), seed=1, max_rows=12,
                              out=tmp_path / "whole", batch_rows=4)
    out = tmp_path / "merged"
    out.mkdir()
    parts = [fstage.unmerged_part(out, i) for i in range(3)]
    counts = [_keyed_part(p, entry, raw.slice(i * 12, 12), 4) for i, p in enumerate(parts)]
    assert pq.read_schema(parts[0]).names == FORMATTED_KEYED.names  # the keys travel with the rows
    got = fstage.merge_parts(entry, parts, counts, cfg=FormatConfig(), seed=1, max_rows=12, out=out, batch_rows=4)
    assert got == want and want["duplicates_merged"] == 30 - 20
    assert (out / "rows.parquet").read_bytes() == (tmp_path / "whole" / "rows.parquet").read_bytes()
    assert pq.read_schema(out / "rows.parquet").names == FORMATTED.names
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "rows.parquet"]  # parts deleted
    # a retried merge task (its worker died after the report) neither fails nor rewrites
    before = (out / "rows.parquet").stat().st_mtime_ns
    assert fstage.merge_parts(entry, parts, counts, cfg=FormatConfig(), seed=1, max_rows=12, out=out,
                              batch_rows=4) == want
    assert (out / "rows.parquet").stat().st_mtime_ns == before
