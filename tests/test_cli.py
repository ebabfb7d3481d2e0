"""End-to-end CLI checks: exit codes, early checks, outputs that never destroy what is not ours."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from nvdata.cli import app
from nvdata.paths import sample_mirror_dir

runner = CliRunner()
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")


def test_sources_table_filters_by_task_type():
    r = runner.invoke(app, ["sources", "--task-type", "sts"])
    assert r.exit_code == 0, r.output
    assert "stsbenchmark" in r.output and "msmarco" not in r.output


def test_an_unknown_task_type_is_an_error():
    r = runner.invoke(app, ["sources", "--task-type", "foo"])
    assert r.exit_code == 2 and "--task-type must be one of" in r.output


def test_piped_sources_and_instructions_hold_every_id_in_full(registry, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal must not cut piped rows
    r = runner.invoke(app, ["sources"])
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in r.output.splitlines()[1:]]
    assert {row[0]: row[2] for row in rows} == {e.name: e.hf_id for e in registry.values()}
    r = runner.invoke(app, ["instructions"])
    assert r.exit_code == 0, r.output
    from nvdata.instruct import instruction_rows

    lines = set(r.output.splitlines())
    for row in instruction_rows():
        assert any(line.split("\t")[1:3] == [row["name"], row["instruction"]] for line in lines), row["name"]
    r = runner.invoke(app, ["sources", "--format", "json", "--task-type", "sts"])
    assert {s["name"] for s in json.loads(r.output)} == {"sts12", "sts22", "stsbenchmark"}


def test_download_from_a_mirror_then_cached(train_mirror, tmp_path):
    args = ["download", "banking77", "nq", "--mirror", str(train_mirror), "--cache", str(tmp_path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "banking77: 72 rows" in r.output
    r = runner.invoke(app, args)
    assert "(cached)" in r.output


def test_download_exit_codes(tmp_path):
    r = runner.invoke(app, ["download", "no_such", "--cache", str(tmp_path)])
    assert r.exit_code == 2 and "unknown source 'no_such'" in r.output
    r = runner.invoke(app, ["download", "nq", "--mirror", str(tmp_path / "missing"), "--cache", str(tmp_path)])
    assert r.exit_code == 2 and "does not exist" in r.output
    # a licence-gated source is skipped and said, as `build` does: not a failure
    r = runner.invoke(app, ["download", "bioasq", "--cache", str(tmp_path)])
    assert r.exit_code == 0 and "skipped bioasq" in r.output and "licence-gated" in r.output


def test_download_then_build_share_one_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVDATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["download", "banking77", "--sample", "--limit", "5"])
    assert r.exit_code == 0, r.output
    (tmp_path / "r.yaml").write_text("name: b\nstage: 2\nsources:\n  banking77: {}\noutput: {dir: o}\n")
    r = runner.invoke(app, ["build", "--recipe", "r.yaml", "--sample", "--limit", "5", "--out", "runs/b"])
    assert r.exit_code == 0, r.output
    assert "banking77: 5 rows (cached)" in r.output


def test_build_with_a_bad_recipe_names_the_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nstage: 2\nsources: [banking77]\nshards: 3\n")
    r = runner.invoke(app, ["build", "--recipe", str(p), "--sample", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "shards" in r.output
    assert not (tmp_path / "o").exists()


def test_build_refuses_an_output_that_is_not_its_own_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "notes.tex").write_text("keep")
    (tmp_path / "existing.txt").write_text("mine")
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    cache = tmp_path / "cache"
    for out, extra in [(tmp_path / "mydata", []), (tmp_path / "existing.txt", ["--overwrite"]),
                       (tmp_path / "proj", ["--overwrite"]), (".", []), (tmp_path, ["--overwrite"])]:
        r = runner.invoke(app, ["build", "--recipe", "stage1", "--sample", "--out", str(out),
                                "--cache", str(cache), *extra])
        assert r.exit_code == 2, (out, r.output)
        assert "nothing was written" in r.output
    assert (tmp_path / "mydata" / "notes.tex").read_text() == "keep"
    assert (tmp_path / "existing.txt").read_text() == "mine"
    assert not cache.exists()  # refused before the download
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt", "mydata", "proj"]


@no_gpu
def test_build_checks_the_device_before_any_work(tmp_path):
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["build", "--recipe", "stage1", "--sample", "--device", "cuda",
                            "--out", str(tmp_path / "o"), "--cache", str(cache)])
    assert r.exit_code == 2 and "CUDA is not available" in r.output
    assert not cache.exists() and not (tmp_path / "o").exists()


def test_build_checks_the_encoder_path_before_any_work(tmp_path):
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["build", "--recipe", "stage1", "--sample", "--encoder", str(tmp_path / "no-model"),
                            "--out", str(tmp_path / "o"), "--cache", str(cache)])
    assert r.exit_code == 2 and "no-model" in r.output and "no such model directory" in r.output
    assert not cache.exists()


def test_build_republishes_over_its_own_output_with_normal_permissions(tiny_build, tmp_path):
    recipe, build, cache = tiny_build
    out = tmp_path / "b"
    shutil.copytree(build, out)
    (out / "manifest.json").write_text((build / "manifest.json").read_text())
    r = runner.invoke(app, ["build", "--recipe", str(recipe), "--sample", "--out", str(out), "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file()
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch):
    import nvdata.sources

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(nvdata.sources, "stream_split", interrupted)  # Ctrl-C while reading a source
    r = runner.invoke(app, ["build", "--recipe", "stage1", "--sample", "--out", str(tmp_path / "o"),
                            "--cache", str(tmp_path / "c")])
    assert r.exit_code == 130 and "interrupted; re-run to resume" in r.output


def test_export_never_replaces_the_build_or_a_folder_of_other_files(tiny_build, tmp_path):
    _, build, _ = tiny_build
    before = sorted(p.name for p in build.iterdir())
    r = runner.invoke(app, ["export", str(build), "--to", str(build)])
    assert r.exit_code == 2 and sorted(p.name for p in build.iterdir()) == before
    r = runner.invoke(app, ["export", str(build), "--to", str(build), "--overwrite"])
    assert r.exit_code == 2 and "would replace" in r.output
    assert sorted(p.name for p in build.iterdir()) == before
    shards = sorted(p.name for p in (build / "shards").iterdir())
    r = runner.invoke(app, ["export", str(build), "--to", str(build / "shards"), "--overwrite"])
    assert r.exit_code == 2 and "would replace" in r.output  # a folder inside the build is the build
    assert sorted(p.name for p in (build / "shards").iterdir()) == shards
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("keep")
    r = runner.invoke(app, ["export", str(build), "--to", str(tmp_path / "x")])
    assert r.exit_code == 2 and (tmp_path / "x" / "keep.txt").read_text() == "keep"
    for _ in range(2):  # an earlier export is replaced
        r = runner.invoke(app, ["export", str(build), "--to", str(tmp_path / "e")])
        assert r.exit_code == 0, r.output


def test_train_never_writes_into_the_build(tiny_build):
    _, build, _ = tiny_build
    card = (build / "README.md").read_text()
    for extra in ([], ["--overwrite"]):
        r = runner.invoke(app, ["train", "--recipe", "stage2", "--data", str(build), "--model", "unused",
                                "--out", str(build), "--max-steps", "1", *extra])
        assert r.exit_code == 2 and "would replace" in r.output, r.output
    assert (build / "README.md").read_text() == card
    assert not (build / "checkpoints").exists()


@no_gpu
def test_train_checks_the_device_first_and_leaves_no_empty_out(tiny_build, tmp_path):
    _, build, _ = tiny_build
    r = runner.invoke(app, ["train", "--recipe", "stage2", "--data", str(build), "--model", "unused",
                            "--out", str(tmp_path / "run"), "--device", "cuda", "--max-steps", "1"])
    assert r.exit_code == 2 and "CUDA is not available" in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_ctrl_c_in_train_says_what_is_lost_and_leaves_no_empty_out(tiny_build, tmp_path, monkeypatch):
    import nvdata.train.loop
    from nvdata.mine.encode import default_encoder_path

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(nvdata.train.loop, "batch_stream", interrupted)  # after the model loaded
    _, build, _ = tiny_build
    r = runner.invoke(app, ["train", "--recipe", "stage2", "--data", str(build), "--model", str(default_encoder_path()),
                            "--out", str(tmp_path / "run"), "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 130 and "interrupted before the first checkpoint" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_audit_with_no_flags_rechecks_what_the_build_used_and_catches_tampering(tiny_build, tmp_path):
    _, build, cache = tiny_build
    r = runner.invoke(app, ["audit", str(build), "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "audit passed" in r.output and str(sample_mirror_dir()) in r.output
    bad = tmp_path / "bad"
    shutil.copytree(build, bad)
    shard = bad / json.loads((bad / "manifest.json").read_text())["shards"][0]["file"]
    t = pq.read_table(shard)
    pq.write_table(t.slice(1), shard)  # one row removed
    r = runner.invoke(app, ["audit", str(bad), "--cache", str(cache)])
    assert r.exit_code == 1 and "sha256 mismatch" in r.output


def test_audit_against_a_mirror_without_the_test_sets_names_them(tiny_build, train_mirror):
    _, build, cache = tiny_build
    r = runner.invoke(app, ["audit", str(build), "--mirror", str(train_mirror), "--cache", str(cache)])
    assert r.exit_code == 2 and "lacks" in r.output and "test set" in r.output, r.output


def test_build_never_replaces_the_mirror_it_reads(tmp_path):
    mirror = tmp_path / "mir"
    shutil.copytree(sample_mirror_dir(), mirror)
    before = sorted(p.name for p in mirror.iterdir())
    for out in (mirror, mirror / "out"):
        r = runner.invoke(app, ["build", "--recipe", "stage1", "--mirror", str(mirror), "--out", str(out),
                                "--overwrite", "--cache", str(tmp_path / "cache")])
        assert r.exit_code == 2 and "would replace" in r.output, r.output
    assert sorted(p.name for p in mirror.iterdir()) == before and not (tmp_path / "cache").exists()


def test_a_build_whose_filters_leave_no_negatives_says_so(tmp_path):
    """Exit 0 with empty negative lists and no word (a fresh-user trial: the paper's 5% margin
    under a random encoder): the summary now names the filter, the manifest keeps the line."""
    (tmp_path / "r.yaml").write_text("name: w\nstage: 1\nsources:\n  scifact: {}\n"
                                     "mining:\n  dense:\n    num_negatives: 2\n    max_score: -1.0\n")
    r = runner.invoke(app, ["build", "--recipe", str(tmp_path / "r.yaml"), "--sample", "--limit", "20",
                            "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "warning: scifact: 20 of 20 rows got no negatives; max_score removed the most candidates" in " ".join(r.output.split())
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["warnings"] and manifest["warnings"][0].startswith("scifact: 20 of 20 rows got no negatives")
