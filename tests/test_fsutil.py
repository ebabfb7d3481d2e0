"""What an output may replace (check_output_dir) and how folders are published (staged_dir)."""

import os
import stat
import tempfile
from pathlib import Path

import pytest

from nvdata.errors import NvdataError
from nvdata.fsutil import check_output_dir, removed_on_failure, staged_dir


def test_an_output_replaces_only_its_own_kind_or_an_empty_folder(tmp_path):
    assert check_output_dir(tmp_path / "new", "build") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "build")
    (tmp_path / "old_build").mkdir()
    (tmp_path / "old_build" / "manifest.json").write_text("{}")
    check_output_dir(tmp_path / "old_build", "build")
    with pytest.raises(NvdataError, match="not an earlier nvdata export"):
        check_output_dir(tmp_path / "old_build", "export")  # a build is not an export
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "notes.tex").write_text("keep")
    with pytest.raises(NvdataError, match=r"mydata is not empty.*--overwrite"):
        check_output_dir(tmp_path / "mydata", "build")
    check_output_dir(tmp_path / "mydata", "build", overwrite=True)  # forced on purpose
    assert (tmp_path / "mydata" / "notes.tex").read_text() == "keep"


def test_never_a_file_the_current_directory_the_cache_or_the_input(tmp_path, monkeypatch):
    (tmp_path / "existing.txt").write_text("mine")
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    (tmp_path / "home" / "me").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "me"))
    cases = [
        (tmp_path / "existing.txt", {}, "is a file"),
        (tmp_path / "proj" / "sub", {}, "current directory"),
        (tmp_path / "proj", {}, "current directory"),  # a parent of CWD
        (tmp_path / "c", {"cache": tmp_path / "c" / "cache"}, "cache folder"),
        (tmp_path / "b", {"inputs": [tmp_path / "b"]}, "would replace"),
        (tmp_path / "b" / "shards", {"inputs": [tmp_path / "b"]}, "would replace"),  # inside the input
        (tmp_path / "home", {}, "home folder"),
    ]
    for path, kw, message in cases:
        with pytest.raises(NvdataError, match=message):
            check_output_dir(path, "build", overwrite=True, **kw)
    assert (tmp_path / "existing.txt").read_text() == "mine"


def test_staged_dir_publishes_with_the_umask_permissions_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
            fd, private = tempfile.mkstemp(dir=tmp)  # how safetensors-style atomic writers leave files: 0600
            os.close(fd)
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / Path(private).name).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out" / "sub").stat().st_mode) == 0o755


def test_staged_dir_never_replaces_a_file(tmp_path):
    (tmp_path / "existing.txt").write_text("mine")
    with pytest.raises(NvdataError, match="is a file"):
        with staged_dir(tmp_path / "existing.txt"):
            pass
    assert (tmp_path / "existing.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]


def test_a_failed_command_leaves_no_folder_it_created_unless_it_can_resume(tmp_path):
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "run", keep="ckpt-*"):
        (tmp_path / "run").mkdir()
        raise RuntimeError
    assert not (tmp_path / "run").exists()
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "run", keep="ckpt-*"):
        (tmp_path / "run" / "ckpt-1").mkdir(parents=True)
        raise RuntimeError
    assert (tmp_path / "run" / "ckpt-1").is_dir()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "mine"):
        raise RuntimeError
    assert (tmp_path / "mine").is_dir()  # existed before: never removed
