"""Every Arrow schema of nvdata, defined once.

Raw schemas (one per task type) are what ``download`` caches: the Hub's many column layouts
mapped into one shape per task type. ``FORMATTED`` is what ``instruct.format_source`` emits
and the miners fill in. ``ROW`` is the published contract of the output shards.
"""

from __future__ import annotations

import pyarrow as pa

TASK_TYPES = ("retrieval", "classification", "clustering", "sts")
NEGATIVE_METHODS = ("dense", "bm25", "label", "example", "none")

# -- raw (download cache) -----------------------------------------------------------------
# Retrieval sources are cached as two tables: the (query, positive) pairs of the train split,
# and the candidate pool the dense miner searches (the BEIR corpus, or for pair-only sources
# every distinct positive).
RAW_RETRIEVAL_PAIRS = pa.schema(
    [
        pa.field("row_index", pa.int64(), nullable=False),  # position in the source split
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive_id", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
    ]
)
RAW_RETRIEVAL_CORPUS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)
RAW_CLASSIFICATION = pa.schema(
    [
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),  # the raw label, as a string
        pa.field("label_text", pa.string(), nullable=False),  # its human-readable name
    ]
)
RAW_CLUSTERING = pa.schema(
    [
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # title (S2S) or abstract (P2P)
        pa.field("categories", pa.list_(pa.string()), nullable=False),
    ]
)
RAW_STS = pa.schema(
    [
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("sentence1", pa.string(), nullable=False),
        pa.field("sentence2", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),  # gold similarity, 0-5
    ]
)

RAW_SCHEMAS: dict[str, pa.Schema] = {
    "retrieval": RAW_RETRIEVAL_PAIRS,
    "classification": RAW_CLASSIFICATION,
    "clustering": RAW_CLUSTERING,
    "sts": RAW_STS,
}

# -- output rows --------------------------------------------------------------------------
# The contract other trainers rely on. ``instruction`` and ``query`` are kept apart so a
# trainer can mask the instruction out of pooling (NV-Embed) or prepend it; the query a model
# sees is ``Instruct: {instruction}\nQuery: {query}``. ``document_instruction`` is null unless
# the task puts the instruction on documents too (STS, symmetric pairs).
ROW = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("negatives", pa.list_(pa.string()), nullable=False),
        pa.field("negative_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("positive_score", pa.float32(), nullable=True),
        pa.field("negative_method", pa.string(), nullable=False),
        pa.field("in_batch_negatives", pa.bool_(), nullable=False),
        pa.field("document_instruction", pa.string(), nullable=True),
    ]
)

# Between formatting and emit, rows also carry the ids the miners need to exclude positives.
FORMATTED = pa.schema(
    list(ROW)
    + [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("positive_id", pa.string(), nullable=False),
    ]
)

# Format's per-batch map hands its ordered reduction the FORMATTED rows plus each row's identity
# key (nvdata.dedup.row_key, KEY_BYTES = 12 bytes); the reduction drops the column
# (nvdata.instruct.BatchFormatter, FirstRows).
ROW_KEY = "row_key"
FORMATTED_KEYED = pa.schema(list(FORMATTED) + [pa.field(ROW_KEY, pa.binary(12), nullable=False)])

QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"


def instructed_query(instruction: str, query: str) -> str:
    """The query string a model sees: NV-Embed's template."""
    return QUERY_TEMPLATE.format(instruction=instruction, query=query)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def to_row_table(formatted: pa.Table) -> pa.Table:
    """Drop the internal columns and cast to the published ``ROW`` schema."""
    return formatted.select(ROW.names).cast(ROW)
