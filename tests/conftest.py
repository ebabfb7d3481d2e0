"""Shared fixtures: a Hub-layout mirror of the training sources written once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["COLUMNS"] = "200"  # rich tables: wide enough that names are not cut
if "NVDATA_CACHE" not in os.environ:  # commands without --cache must not write to ~/.cache
    import tempfile

    os.environ["NVDATA_CACHE"] = tempfile.mkdtemp(prefix="nvdata-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def train_mirror(tmp_path_factory):
    """The training-source half of the sample mirror, generated fresh (not the bundled copy)."""
    from nvdata.mirror import write_hub_repo
    from nvdata.samplegen import training_repos

    root = tmp_path_factory.mktemp("mirror")
    for repo, configs in training_repos().items():
        write_hub_repo(root / repo, configs)
    return root


@pytest.fixture(scope="session")
def registry():
    from nvdata.registry import load_registry

    return load_registry()


TINY_RECIPE = """\
name: tiny
stage: 2
seed: 7
sources:
  fiqa: {limit: 6}        # retrieval: 3 dense-mined negatives per row
  banking77: {limit: 12}  # classification: 1 label negative
  sts12: {limit: 12}      # sts: 1 bm25 negative
  bioasq: {}              # licence-gated: skipped
format: {classification_mode: label}
mining:
  dense: {num_negatives: 3}
  bm25: {num_negatives: 1}
output: {dir: out}
"""


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """A small --sample build of every negative method (seconds): (recipe path, build, cache)."""
    from nvdata.build import run_build
    from nvdata.recipe import load_recipe

    root = tmp_path_factory.mktemp("tiny")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    res = run_build(load_recipe(str(recipe)), out=root / "build", sample=True, cache=root / "cache")
    return recipe, res.out, root / "cache"
