"""Write Hub-layout dataset snapshots: the bundled sample mirror and test fixtures.

A mirror folder ``DIR/<org>/<name>/`` looks as ``huggingface-cli download --repo-type dataset``
leaves it: data files plus a ``README.md`` whose YAML header declares the ``configs`` and their
``data_files`` per split. ``datasets.load_dataset(DIR/<org>/<name>, config, split=...)`` reads
it with the same code path as the Hub repo.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml


def write_hub_repo(
    repo_dir: str | Path,
    configs: dict[str, dict[str, pa.Table]],
    *,
    default_config: str | None = None,
    card: str = "",
) -> Path:
    """Write ``configs`` ({config: {split: table}}) as Parquet + README.md configs header.

    Files go to ``data/<config>/<split>-00000-of-00001.parquet`` (the Hub's own Parquet layout).
    Written deterministically: same tables in, same bytes out.
    """
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    header: list[dict] = []
    for config, splits in configs.items():
        data_files = []
        for split, table in splits.items():
            rel = f"data/{config}/{split}-00000-of-00001.parquet"
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, repo / rel, compression="zstd")
            data_files.append({"split": split, "path": rel})
        entry = {"config_name": config, "data_files": data_files}
        if config == default_config or (default_config is None and config == "default"):
            entry["default"] = True
        header.append(entry)
    text = "---\n" + yaml.safe_dump({"configs": header}, sort_keys=False) + "---\n" + card
    (repo / "README.md").write_text(text, encoding="utf-8")
    return repo
