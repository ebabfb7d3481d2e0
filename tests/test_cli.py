"""A few end-to-end CLI checks (the library functions are tested directly elsewhere)."""

from typer.testing import CliRunner

from nvdata.cli import app

runner = CliRunner()


def test_sources_table_filters_by_task_type():
    r = runner.invoke(app, ["sources", "--task-type", "sts"])
    assert r.exit_code == 0, r.output
    assert "stsbenchmark" in r.output and "msmarco" not in r.output


def test_download_from_a_mirror_then_cached(train_mirror, tmp_path):
    args = ["download", "banking77", "nq", "--mirror", str(train_mirror), "--cache", str(tmp_path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "banking77: 72 rows" in r.output
    r = runner.invoke(app, args)
    assert "(cached)" in r.output


def test_download_errors_exit_non_zero_with_the_reason(tmp_path):
    r = runner.invoke(app, ["download", "no_such", "--cache", str(tmp_path)])
    assert r.exit_code == 2 and "unknown source 'no_such'" in r.output
    r = runner.invoke(app, ["download", "nq", "--mirror", str(tmp_path / "missing"), "--cache", str(tmp_path)])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(app, ["download", "bioasq", "--cache", str(tmp_path)])
    assert r.exit_code == 1 and "licence-gated" in r.output


def test_build_with_a_bad_recipe_names_the_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nstage: 2\nsources: [banking77]\nshards: 3\n")
    r = runner.invoke(app, ["build", "--recipe", str(p), "--sample", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "shards" in r.output
    assert not (tmp_path / "o").exists()
