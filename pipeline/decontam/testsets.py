"""Which texts are "the MTEB test sets": resolved from mteb's task metadata, never hand-listed.

``resolve_test_sets`` turns the recipe's benchmarks / add_tasks / drop_tasks into one
``TestSetSpec`` per task (aggregates such as CQADupstackRetrieval expand into their subtasks;
multilingual tasks keep only their English subsets). ``iter_test_texts`` loads one spec with
``datasets.load_dataset`` (from the mirror folder when it has the repo, else from the Hub at
the pinned revision) and yields every text of every eval split:

- retrieval and reranking: the queries of the eval qrels, and the title and text of every
  corpus document the eval qrels judge relevant (score > 0);
- classification: the input text (label names are not content);
- clustering: every sentence of every cluster set;
- STS and pair classification: both sentences;
- summarization: the source text and every human and machine summary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from nvdata.errors import NvdataError
from nvdata.fsutil import mirror_fingerprint  # noqa: F401  (re-exported: index.py keys on it)

if TYPE_CHECKING:
    from nvdata.decontam import DecontamConfig

log = logging.getLogger(__name__)

# mteb loads these tasks from raw columns and renames them in dataset_transform.
_RAW_COLUMN_ALIASES = {"sentence1": ("sent1",), "sentence2": ("sent2",)}
_SUMMARY_COLUMNS = ("human_summaries", "machine_summaries")
_BATCH = 10_000


@dataclass(frozen=True)
class TestSetSpec:
    """One MTEB task's test data: where it lives and which subsets/splits count."""

    task: str
    task_type: str  # mteb's metadata.type: Retrieval, Reranking, Classification, STS, ...
    kind: str  # how to read it: retrieval | columns
    path: str
    revision: str | None
    subsets: tuple[str, ...]  # hf subsets ("default" when the task has none)
    splits: tuple[str, ...]
    columns: tuple[str, ...]  # content columns (kind == "columns")
    parent: str | None = None  # the aggregate task it belongs to, e.g. CQADupstackRetrieval

    def to_dict(self) -> dict:
        return {
            "task": self.task, "task_type": self.task_type, "kind": self.kind, "path": self.path,
            "revision": self.revision, "subsets": list(self.subsets), "splits": list(self.splits),
            "columns": list(self.columns), "parent": self.parent,
        }


def _english_subsets(task: Any) -> tuple[str, ...]:
    meta = task.metadata
    subsets = list(getattr(task, "hf_subsets", None) or meta.hf_subsets)
    if not meta.is_multilingual:
        return tuple(subsets)
    langs = meta.hf_subsets_to_langscripts
    return tuple(s for s in subsets if langs.get(s) and all(x.startswith("eng-") for x in langs[s]))


def _content_columns(task: Any) -> tuple[str, ...]:
    from mteb.abstasks.text.summarization import AbsTaskSummarization

    declared = getattr(task, "_get_content_columns", lambda: {})()
    cols = list(declared)
    if isinstance(task, AbsTaskSummarization):
        cols += [getattr(task, f"{c}_column_name", c) for c in _SUMMARY_COLUMNS]
    if not cols:
        raise NvdataError(f"decontam: mteb task {task.metadata.name!r} declares no content columns")
    return tuple(cols)


def _spec(task: Any, parent: str | None) -> TestSetSpec | None:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    meta = task.metadata
    subsets = _english_subsets(task)
    if not subsets:
        return None
    retrieval = isinstance(task, AbsTaskRetrieval)
    return TestSetSpec(
        task=meta.name,
        task_type=str(meta.type),
        kind="retrieval" if retrieval else "columns",
        path=meta.dataset["path"],
        revision=meta.dataset.get("revision"),
        subsets=subsets,
        # metadata's eval splits (validation too where declared), not just the benchmark's
        splits=tuple(dict.fromkeys([*meta.eval_splits, *task.eval_splits])),
        columns=() if retrieval else _content_columns(task),
        parent=parent,
    )


def resolve_test_sets(cfg: DecontamConfig) -> list[TestSetSpec]:
    """The test sets of ``cfg.benchmarks`` + ``cfg.add_tasks`` - ``cfg.drop_tasks``, by task name."""
    import mteb
    from mteb.abstasks.aggregated_task import AbsTaskAggregate

    tasks: dict[str, Any] = {}
    for name in cfg.benchmarks:
        try:
            bench = mteb.get_benchmark(name)
        except (KeyError, ValueError) as e:
            raise NvdataError(f"decontam.benchmarks: unknown mteb benchmark {name!r} ({e})") from e
        for t in bench.tasks:
            tasks.setdefault(t.metadata.name, t)
    for name in cfg.add_tasks:
        try:
            tasks.setdefault(name, mteb.get_task(name))
        except (KeyError, ValueError) as e:
            raise NvdataError(f"decontam.add_tasks: unknown mteb task {name!r} ({e})") from e

    specs: dict[str, TestSetSpec] = {}
    parents: dict[str, str] = {}
    for name, t in tasks.items():
        members = [(s, name) for s in t.metadata.tasks] if isinstance(t, AbsTaskAggregate) else [(t, None)]
        for sub, parent in members:
            spec = _spec(sub, parent)
            if spec is None:
                log.info("decontam: %s has no English subset; skipped", sub.metadata.name)
                continue
            specs.setdefault(spec.task, spec)
            if parent:
                parents[spec.task] = parent
    known = set(specs) | set(parents.values())
    unknown = [d for d in cfg.drop_tasks if d not in known]
    if unknown:
        raise NvdataError(f"decontam.drop_tasks: {unknown} not among the resolved test sets")
    drop = set(cfg.drop_tasks)
    return [s for s in specs.values() if s.task not in drop and s.parent not in drop]


# -- loading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestText:
    task: str
    subset: str
    split: str
    item_id: str
    field: str
    text: str


def repo_location(spec: TestSetSpec, mirror: Path | None) -> Path | None:
    """The mirror folder holding ``spec``'s repo, or None to load it from the Hub."""
    if mirror is not None and (Path(mirror) / spec.path).is_dir():
        return Path(mirror) / spec.path
    return None


class _Loader:
    def __init__(self, spec: TestSetSpec, mirror: Path | None, hf_cache: Path | None) -> None:
        self.spec = spec
        self.local = repo_location(spec, mirror)
        self.hf_cache = hf_cache

    @property
    def repo(self) -> str:
        return str(self.local) if self.local else self.spec.path

    def _kwargs(self) -> dict:
        if self.local:  # a mirror is one snapshot: no revision; keep its cache out of ~/.cache
            return {"cache_dir": str(self.hf_cache)} if self.hf_cache else {}
        return {"revision": self.spec.revision}

    def configs(self) -> list[str]:
        from datasets import get_dataset_config_names

        try:
            return list(get_dataset_config_names(self.repo, **self._kwargs()))
        except Exception as e:  # noqa: BLE001 - any loader failure is a bad test-set source
            raise NvdataError(f"decontam: cannot list configs of test set {self.spec.task} ({self.repo}): {e}") from e

    def split_name(self, config: str | None, split: str) -> str:
        """mteb's rule: the eval split if the config has it, else the config's only split."""
        from datasets import get_dataset_split_names

        try:
            names = get_dataset_split_names(self.repo, config_name=config, **self._kwargs())
        except Exception as e:  # noqa: BLE001
            raise NvdataError(f"decontam: test set {self.spec.task}: no config {config!r} in {self.repo}: {e}") from e
        if split in names:
            return split
        if len(names) == 1:
            return names[0]
        raise NvdataError(f"decontam: test set {self.spec.task}: split {split!r} not in {config!r} ({names})")

    def batches(self, config: str | None, split: str) -> Iterator[pa.Table]:
        from datasets import load_dataset

        try:
            ds = load_dataset(self.repo, config, split=self.split_name(config, split), **self._kwargs())
        except NvdataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NvdataError(
                f"decontam: cannot load test set {self.spec.task} ({self.repo}, config {config!r}, split {split!r}): {e}"
            ) from e
        yield from ds.with_format("arrow").iter(batch_size=_BATCH)


def iter_test_texts(spec: TestSetSpec, mirror: Path | None, hf_cache: Path | None = None) -> Iterator[TestText]:
    """Every text of every eval split (English subsets) of one test set."""
    loader = _Loader(spec, mirror, hf_cache)
    for subset in spec.subsets:
        for split in spec.splits:
            if spec.kind == "retrieval":
                yield from _retrieval_texts(loader, subset, split)
            else:
                yield from _column_texts(loader, subset, split)


def _strings(col: pa.ChunkedArray | pa.Array) -> list:
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return col.to_pylist()
    return col.cast(pa.string()).to_pylist()


def _column_texts(loader: _Loader, subset: str, split: str) -> Iterator[TestText]:
    spec = loader.spec
    config = None if subset == "default" else subset
    row = 0
    for batch in loader.batches(config, split):
        ids = _strings(batch["id"]) if "id" in batch.column_names else None
        present = []
        for col in spec.columns:
            name = next((c for c in (col, *_RAW_COLUMN_ALIASES.get(col, ())) if c in batch.column_names), None)
            if name is None:
                raise NvdataError(
                    f"decontam: test set {spec.task} {subset}/{split} has no column {col!r} ({batch.column_names})"
                )
            present.append((col, _strings(batch[name])))
        for r in range(batch.num_rows):
            rid = str(ids[r]) if ids is not None and ids[r] is not None else str(row + r)
            for col, values in present:
                v = values[r]
                if isinstance(v, list):
                    for j, s in enumerate(v):
                        if s:
                            yield TestText(spec.task, subset, split, f"{rid}[{j}]", col, s)
                elif v:
                    yield TestText(spec.task, subset, split, rid, col, v)
        row += batch.num_rows


def _id_column(batch: pa.Table) -> str:
    for c in ("_id", "id"):
        if c in batch.column_names:
            return c
    raise NvdataError(f"no _id/id column among {batch.column_names}")


def _retrieval_texts(loader: _Loader, subset: str, split: str) -> Iterator[TestText]:
    spec = loader.spec
    prefix = "" if subset == "default" else f"{subset}-"
    configs = loader.configs()
    qrels_cfg = f"{prefix}qrels" if prefix else ("default" if "default" in configs else "qrels")
    queries_cfg = f"{prefix}queries" if prefix else ("query" if "query" in configs else "queries")
    corpus_cfg = f"{prefix}corpus"

    query_ids: set[str] = set()
    doc_ids: set[str] = set()
    for b in loader.batches(qrels_cfg, split):
        q = b["query-id"].cast(pa.string()).to_pylist()
        d = b["corpus-id"].cast(pa.string()).to_pylist()
        s = b["score"].cast(pa.float64()).to_pylist()
        query_ids.update(q)
        doc_ids.update(di for di, si in zip(d, s, strict=True) if si is not None and si > 0)

    def _pick(config: str, wanted: set[str], fields: tuple[str, ...]) -> Iterator[TestText]:
        value_set = pa.array(sorted(wanted), pa.string())
        for b in loader.batches(config, split):
            ids = b[_id_column(b)].cast(pa.string())
            b = b.filter(pc.is_in(ids, value_set=value_set))
            if b.num_rows == 0:
                continue
            ids = b[_id_column(b)].cast(pa.string()).to_pylist()
            cols = [(f, _strings(b[f])) for f in fields if f in b.column_names]
            for r, item in enumerate(ids):
                for f, values in cols:
                    if values[r]:
                        yield TestText(spec.task, subset, split, item, f, values[r])

    for t in _pick(queries_cfg, query_ids, ("text",)):
        yield TestText(t.task, t.subset, t.split, t.item_id, "query", t.text)
    yield from _pick(corpus_cfg, doc_ids, ("title", "text"))
