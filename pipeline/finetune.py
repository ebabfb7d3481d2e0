"""Fine-tune the mining encoder on the retrieval pairs (``nvdata finetune-miner``).

NV-Retriever (arXiv 2407.15831) shows that the teacher used for mining matters: a
retrieval-tuned encoder mines harder, cleaner negatives. This fine-tunes a sentence-transformers
encoder on (query, positive) pairs with in-batch negatives (``MultipleNegativesRankingLoss``,
the InfoNCE loss of Henderson et al. 2017 / van den Oord et al. 2018) and saves a model
directory that ``mine_dense_negatives(..., encoder=<that dir>)`` loads like any other.

Batches never hold the same text twice (``BatchSamplers.NO_DUPLICATES``): a repeated query or
positive would otherwise be scored as its own in-batch negative. "The same" is the project's
one identity (:func:`nvdata.text.normalize_text`): every spelling of a text is trained as its
first spelling, so the sampler sees "Which planets have rings?" and "which planets have rings"
as one query, and a repeated (query, positive) pair is trained once (``duplicates_merged``).

Example::

    >>> pairs = pq.read_table("cache/raw/msmarco/pairs.parquet")       # RAW_RETRIEVAL_PAIRS
    >>> finetune_miner(pairs, Path("miners/msmarco-minilm"), epochs=1)
    PosixPath('miners/msmarco-minilm')
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from nvdata import schema
from nvdata.dedup import FirstSeen, row_key
from nvdata.errors import NvdataError
from nvdata.text import text_hash

QUERY_PROMPTS = ("model", "instruction", "none")
MANIFEST = "nvdata_miner.json"


def finetune_miner(
    pairs: pa.Table | Sequence[pa.Table],
    out_dir: Path,
    *,
    encoder: str | None = None,
    epochs: int = 1,
    batch_size: int = 64,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    max_pairs: int | None = None,
    query_prompt: str = "model",
    device: str | None = None,
    seed: int = 0,
) -> Path:
    """Fine-tune ``encoder`` (None: bundled all-MiniLM-L6-v2) on ``pairs``; save to ``out_dir``.

    ``pairs``: one or more tables with ``query`` and ``positive`` columns (RAW_RETRIEVAL_PAIRS
    or FORMATTED rows, several sources concatenated). ``query_prompt="instruction"`` trains on
    ``Instruct: {instruction}\\nQuery: {query}`` anchors (needs an ``instruction`` column), to
    match mining with ``DenseConfig.query_prompt="instruction"``. ``max_pairs`` keeps a seeded
    random subset. Returns ``out_dir``, which holds the model and ``nvdata_miner.json``.
    """
    from nvdata.mine.encode import load_encoder

    tables = [pairs] if isinstance(pairs, pa.Table) else list(pairs)
    if query_prompt not in QUERY_PROMPTS:
        raise NvdataError(f"finetune_miner.query_prompt: {query_prompt!r} is not one of {', '.join(QUERY_PROMPTS)}")
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise NvdataError(f"finetune_miner.{name}: must be an integer >= {low}, got {value!r}")
    if not learning_rate > 0:
        raise NvdataError(f"finetune_miner.learning_rate: must be > 0, got {learning_rate!r}")
    anchors, positives = [], []
    for i, table in enumerate(tables):
        needed = ("query", "positive") + (("instruction",) if query_prompt == "instruction" else ())
        for col in needed:
            if col not in table.column_names:
                raise NvdataError(f"finetune_miner: pairs table {i} lacks column {col!r}")
        queries = table.column("query").to_pylist()
        if query_prompt == "instruction":
            instructions = table.column("instruction").to_pylist()
            queries = [schema.instructed_query(ins, q) for ins, q in zip(instructions, queries)]
        anchors += queries
        positives += table.column("positive").to_pylist()
    if not anchors:
        raise NvdataError("finetune_miner: no pairs to train on")
    anchors, positives, merged = _one_spelling_per_text(anchors, positives)
    if max_pairs is not None and len(anchors) > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(len(anchors), size=max_pairs, replace=False))
        anchors = [anchors[i] for i in pick]
        positives = [positives[i] for i in pick]

    base = load_encoder(encoder, device=device, dtype="float32")
    model = base.model
    on_cuda = base.device.type == "cuda"

    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.losses import MultipleNegativesRankingLoss
        from sentence_transformers.training_args import BatchSamplers

    train = Dataset.from_dict({"anchor": anchors, "positive": positives})
    prompt = model.prompts.get("query") if query_prompt == "model" else None
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="nvdata-finetune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            **_warmup_kwargs(warmup_ratio),
            seed=seed,
            data_seed=seed,
            bf16=on_cuda,
            use_cpu=not on_cuda,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            prompts={"anchor": prompt} if prompt else None,
            save_strategy="no",
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(model)
        )
        result = trainer.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    manifest = {
        "base_encoder": base.name,
        "base_identity": base.identity,
        "pairs": len(anchors),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "query_prompt": query_prompt,
        "seed": seed,
        "duplicates_merged": merged,
        "loss": "MultipleNegativesRankingLoss",
        "train_loss": float(result.training_loss),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _one_spelling_per_text(anchors: list[str], positives: list[str]) -> tuple[list[str], list[str], int]:
    """Each text as the first spelling seen of its identity; repeated pairs dropped (counted)."""
    first: dict[str, str] = {}

    def spelling(text: str) -> str:
        return first.setdefault(text_hash(text), text)

    dedup = FirstSeen()
    keep = dedup.keep_new([row_key(a, p) for a, p in zip(anchors, positives, strict=True)])
    kept_a = [spelling(a) for a, k in zip(anchors, keep) if k]
    kept_p = [spelling(p) for p, k in zip(positives, keep) if k]
    return kept_a, kept_p, dedup.merged


def _warmup_kwargs(ratio: float) -> dict:
    """Transformers v5 takes the warmup ratio as a float ``warmup_steps``; v4 as ``warmup_ratio``."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"warmup_steps": float(ratio)}
    return {"warmup_ratio": float(ratio)}
