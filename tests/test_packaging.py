"""A non-editable install (a wheel) carries the code and every data folder the code reads."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_with_data_folders_and_they_resolve(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(tmp_path / "whl"), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    # the sample mirror's folders are data, not undeclared packages: no setuptools warning each
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr
    wheel = next((tmp_path / "whl").glob("nvdata-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    mirror_files = sum(1 for p in (ROOT / "pipeline" / "sample_mirror").rglob("*") if p.is_file())
    assert sum(1 for n in names if n.startswith("nvdata/sample_mirror/")) == mirror_files
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = (
        "import nvdata.paths as p, nvdata.recipe as r, nvdata.instruct as i, nvdata.registry as g;"
        "print(p.data_dir('recipes')); print(sorted(r.builtin_recipes()));"
        "print(len(g.load_registry())); print(i.instruction_for_source('banking77')[:10]);"
        "print(p.sample_mirror_dir())"
    )
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(target), "PATH": "/usr/bin"},
                         cwd=tmp_path, check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0] == str(target / "nvdata" / "recipes")
    assert out[1] == "['stage1', 'stage2', 'stage2-v2']"
    assert out[2] == "29"
    assert out[4] == str(target / "nvdata" / "sample_mirror")
