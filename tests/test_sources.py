"""download: the real load_dataset path on Hub-layout mirrors, and bad inputs."""

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nvdata.errors import NvdataError
from nvdata.mirror import write_hub_repo
from nvdata.registry import SourceEntry
from nvdata.schema import RAW_RETRIEVAL_CORPUS, RAW_RETRIEVAL_PAIRS, RAW_STS
from nvdata.sources import download_key, download_source


def test_every_available_source_downloads_into_its_canonical_schema(train_mirror, registry, tmp_path):
    for name, entry in registry.items():
        if not entry.available:
            continue
        raw = download_source(entry, cache=tmp_path, mirror=train_mirror)
        table = raw.read()
        assert table.num_rows == raw.rows > 0, name
        if entry.task_type == "retrieval":
            assert table.schema.equals(RAW_RETRIEVAL_PAIRS), name
            corpus = raw.read_corpus()
            assert corpus.schema.equals(RAW_RETRIEVAL_CORPUS)
            # every positive is in the candidate pool
            assert set(table.column("positive_id").to_pylist()) <= set(corpus.column("doc_id").to_pylist())


def test_beir_source_keeps_only_positive_train_qrels_and_multi_positive_queries(train_mirror, registry, tmp_path):
    raw = download_source(registry["msmarco"], cache=tmp_path, mirror=train_mirror)
    pairs = raw.read()
    qrels = pq.read_table(next((train_mirror / "mteb/msmarco").rglob("train-*.parquet")))
    assert pairs.num_rows == sum(1 for s in qrels.column("score").to_pylist() if s > 0)
    qids = pairs.column("query_id").to_pylist()
    assert len(set(qids)) < len(qids)  # some queries have two positives


def test_pair_source_pool_is_the_distinct_positives(train_mirror, registry, tmp_path):
    raw = download_source(registry["nq"], cache=tmp_path, mirror=train_mirror)
    pairs, corpus = raw.read(), raw.read_corpus()
    assert corpus.num_rows == len(set(pairs.column("positive").to_pylist()))


def test_cached_download_is_reused_and_limit_is_a_different_entry(train_mirror, registry, tmp_path):
    first = download_source(registry["banking77"], cache=tmp_path, mirror=train_mirror)
    again = download_source(registry["banking77"], cache=tmp_path, mirror=train_mirror)
    assert again.cached and again.path == first.path
    limited = download_source(registry["banking77"], cache=tmp_path, mirror=train_mirror, limit=5)
    assert limited.rows == 5 and limited.path != first.path
    forced = download_source(registry["banking77"], cache=tmp_path, mirror=train_mirror, force=True)
    assert not forced.cached and forced.rows == first.rows


def _entry(**kw):
    base = dict(name="toy", task_type="sts", hf_id="toy/sts", layout="table", split="train",
                licence="x", citation="x",
                columns={"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"})
    base.update(kw)
    return SourceEntry(**base)


def _toy_sts(mirror, rows, types=None):
    cols = {k: [r[k] for r in rows] for k in ("sentence1", "sentence2", "score")}
    write_hub_repo(mirror / "toy/sts", {"default": {"train": pa.table(cols) if types is None else pa.table(cols, schema=types)}})


@pytest.mark.parametrize(
    "rows, schema, message",
    [
        ([{"sentence1": "a", "sentence2": None, "score": 1.0}], None, r"row 0: field 'sentence2' is null"),
        ([{"sentence1": "a", "sentence2": "b", "score": float("nan")}], None, "row 0: field 'score' is NaN"),
        ([{"sentence1": "a", "sentence2": "b", "score": "4.5"}],
         pa.schema([("sentence1", pa.string()), ("sentence2", pa.string()), ("score", pa.string())]),
         r"row 0: field 'score' must be a number"),
    ],
)
def test_bad_rows_fail_naming_source_row_and_field_and_leave_cache_intact(tmp_path, rows, schema, message):
    mirror = tmp_path / "m"
    cache = tmp_path / "cache"
    good = [{"sentence1": "a", "sentence2": "b", "score": 4.0}]
    _toy_sts(mirror, good)
    ok = download_source(_entry(), cache=cache, mirror=mirror)
    before = sorted(p.name for p in (cache / "raw").iterdir())
    _toy_sts(mirror, rows, schema)
    with pytest.raises(NvdataError, match=f"source 'toy'.*{message}"):
        download_source(_entry(), cache=cache, mirror=mirror, force=True)
    assert sorted(p.name for p in (cache / "raw").iterdir()) == before  # no temp left, old kept
    assert ok.read().num_rows == 1


def test_missing_column_names_the_column_and_what_exists(tmp_path):
    mirror = tmp_path / "m"
    _toy_sts(mirror, [{"sentence1": "a", "sentence2": "b", "score": 4.0}])
    bad = _entry(columns={"sentence1": "s1", "sentence2": "sentence2", "score": "score"})
    with pytest.raises(NvdataError, match=r"column 's1'.*missing.*\['sentence1', 'sentence2', 'score'\]"):
        download_source(bad, cache=tmp_path / "c", mirror=mirror)


def test_empty_split_is_an_error(tmp_path):
    mirror = tmp_path / "m"
    empty = pa.table({"sentence1": pa.array([], pa.string()), "sentence2": pa.array([], pa.string()),
                      "score": pa.array([], pa.float64())})
    write_hub_repo(mirror / "toy/sts", {"default": {"train": empty}})
    with pytest.raises(NvdataError, match="empty"):
        download_source(_entry(), cache=tmp_path / "c", mirror=mirror)
    assert not any((tmp_path / "c" / "raw").iterdir())


def test_missing_mirror_and_missing_repo_are_clear_errors(tmp_path, registry):
    with pytest.raises(NvdataError, match="mirror directory .* does not exist"):
        download_source(registry["nq"], cache=tmp_path, mirror=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NvdataError, match="sentence-transformers/natural-questions is not in the mirror"):
        download_source(registry["nq"], cache=tmp_path, mirror=tmp_path / "empty")


def test_gated_source_says_why(tmp_path, registry):
    with pytest.raises(NvdataError, match="not publicly available.*licence-gated"):
        download_source(registry["bioasq"], cache=tmp_path)


def test_meta_records_what_was_downloaded(train_mirror, registry, tmp_path):
    raw = download_source(registry["sts22"], cache=tmp_path, mirror=train_mirror, limit=10)
    meta = json.loads((raw.path / "meta.json").read_text())
    assert meta["hf_id"] == "mteb/sts22-crosslingual-sts" and meta["config"] == "en"
    assert meta["limit"] == 10 and meta["rows"] == 10
    assert raw.read().schema.equals(RAW_STS)


def test_sts_scores_on_another_scale_are_mapped_onto_0_to_5(tmp_path):
    mirror = tmp_path / "m"
    _toy_sts(mirror, [{"sentence1": "a", "sentence2": "b", "score": 4.0},
                      {"sentence1": "c", "sentence2": "d", "score": 1.0}])
    raw = download_source(_entry(score_range=(1.0, 4.0)), cache=tmp_path / "c", mirror=mirror)
    assert raw.read().column("score").to_pylist() == [5.0, 0.0]
    _toy_sts(mirror, [{"sentence1": "a", "sentence2": "b", "score": 4.5}])
    with pytest.raises(NvdataError, match="outside the registry's score_range"):
        download_source(_entry(score_range=(1.0, 4.0)), cache=tmp_path / "c", mirror=mirror, force=True)


def test_a_mirror_updated_in_place_is_read_again(tmp_path):
    """The cache keys on the mirror's files (size, mtime), not only its path."""
    mirror, entry = tmp_path / "m", _entry(score_range=(0.0, 5.0))
    _toy_sts(mirror, [{"sentence1": "a", "sentence2": "b", "score": 1.0}])
    first = download_source(entry, cache=tmp_path / "c", mirror=mirror)
    _toy_sts(mirror, [{"sentence1": "new", "sentence2": "snapshot", "score": 2.0},
                      {"sentence1": "c", "sentence2": "d", "score": 3.0}])
    again = download_source(entry, cache=tmp_path / "c", mirror=mirror)
    assert not again.cached and again.rows == 2
    assert again.read().column("sentence1").to_pylist() == ["new", "c"]
    assert download_source(entry, cache=tmp_path / "c", mirror=mirror).cached  # unchanged: reused
    assert first.path != again.path


def test_the_source_revision_keys_the_cache(registry):
    entry = registry["banking77"]
    assert download_key(entry, None, None) != download_key(dataclasses.replace(entry, revision="abc123"), None, None)
