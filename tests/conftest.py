"""Shared fixtures: a Hub-layout mirror of the training sources written once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["COLUMNS"] = "200"  # rich tables: wide enough that names are not cut

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
