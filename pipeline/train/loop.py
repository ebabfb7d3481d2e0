"""``nvdata train``: the training loop, its config, checkpoints and resume.

One function, :func:`train`, reads a build's shards and trains either stage of NV-Embed's
two-stage contrastive instruction tuning (Lee et al. 2024, arXiv:2405.17428, Section 3.3):
stage 1 on retrieval rows with in-batch and hard negatives, stage 2 on retrieval plus
non-retrieval rows without in-batch negatives. Which negatives a row gets is the row's own
``in_batch_negatives`` flag; the stage only chooses the defaults below (learning rate, steps).
Stage 2 continues from the stage-1 output with ``init``.

Writes into ``out``: the model (a SentenceTransformer folder for encoders, an nvdata folder for
decoders; see ``model.load_model``), ``metrics.jsonl`` (one object per optimizer step with
``loss``, real ``tokens``, ``padded_tokens`` and their ``padding_ratio``, ``tokens_per_s``,
``chunks``, ``grad_cache``), ``train_summary.json``, and ``checkpoints/checkpoint-NNNNNNN/``
(model + optimizer, scheduler, RNG and data position) from which an interrupted run resumes on
its own. Ctrl-C (SIGINT) writes such a checkpoint of the last finished step before it stops.
Memory per step is bounded by ``token_budget`` (see ``loss.contrastive_backward``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import resource
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nvdata.errors import NvdataError, reject_unknown_keys
from nvdata.fsutil import normalize_permissions, staged_dir
from nvdata.preflight import preflight
from nvdata.train.data import BATCH_MODES, batch_stream, collate, shard_files
from nvdata.train.loss import InfoNCELoss, contrastive_backward
from nvdata.train.model import build_model, checkpoint_base_model, count_parameters, resolve_model_name, same_model
from nvdata.train.progress import TrainProgress

log = logging.getLogger(__name__)

# NV-Embed's hyper-parameters that differ by stage (arXiv:2405.17428, Table 7 / Appendix: learning
# rate 2e-5 in stage 1, 1.5e-5 in stage 2; 20k and 18k steps).
STAGE_DEFAULTS = {
    1: {"lr": 2e-5, "max_steps": 20_000},
    2: {"lr": 1.5e-5, "max_steps": 18_000},
}
STATE_FILE = "trainer_state.pt"
# Keys that may change between a run and its resume (everything else must match).
RESUMABLE_CHANGES = {"max_steps", "save_every", "keep_checkpoints", "log_every"}
ALIASES = {"learning_rate": "lr", "warmup_steps": "warmup"}


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``nvdata train`` (a recipe's ``train:`` mapping). Defaults: NV-Embed's.

    ``None`` for ``lr`` / ``max_steps`` means the stage's paper value (``STAGE_DEFAULTS``).
    ``from_dict`` also accepts ``learning_rate`` / ``warmup_steps`` for ``lr`` / ``warmup``.
    """

    stage: int = 1  # 1: retrieval + in-batch negatives; 2: all tasks, no in-batch (rows decide)
    temperature: float = 0.01  # InfoNCE temperature
    lr: float | None = None  # 2e-5 (stage 1) / 1.5e-5 (stage 2)
    weight_decay: float = 0.0
    warmup: int = 500  # linear warm-up steps (NV-Embed); capped at max_steps // 10 for short runs
    lr_schedule: str = "linear"  # linear decay to 0 after warm-up | constant
    batch_size: int = 128  # rows (queries) per batch, NV-Embed's
    max_steps: int | None = None  # optimizer steps; 20k (stage 1) / 18k (stage 2)
    grad_accum: int = 1  # batches per optimizer step
    token_budget: int = 4096  # most padded tokens (texts x longest) per forward pass: bounds memory; raise on GPUs
    grad_cache: bool | None = None  # GradCache: None = when a batch exceeds token_budget; true: always; false: never
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0  # 0 = no clipping
    finetune: str = "auto"  # auto (LoRA for decoders, full for encoders) | lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    pooling: str = "auto"  # auto (latent for decoders, mean for encoders) | mean | latent
    latents: int = 512  # latent attention: number of latents (r)
    heads: int = 8  # latent attention: heads
    latent_mlp_ratio: int = 4  # latent attention MLP width / hidden size (released NV-Embed code: 4)
    batch_mode: str = "source"  # source (one source per batch) | mixed
    max_length: int = 512  # tokens per text, instruction included
    max_negatives: int | None = None  # hard negatives used per row; None = all the row carries
    shuffle_buffer: int = 10_000  # rows held for shuffling while streaming
    seed: int = 42
    save_every: int = 1000  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (0 = all)
    log_every: int = 10  # a plain progress line every N steps when stderr is not a terminal
    bf16: bool | None = None  # None: bf16 on CUDA only; true: on CPU too (checks that path, slowly); false: never

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name), "TrainConfig"))

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "train") -> TrainConfig:
        """Validate a recipe mapping; errors name ``{where}.{key}``."""
        d = dict(d or {})
        for alias, key in ALIASES.items():  # recipes may spell the Hugging Face way
            if alias in d:
                if key in d:
                    raise NvdataError(f"{where}.{alias}: give either {alias} or {key}, not both")
                d[key] = d.pop(alias)
        reject_unknown_keys(d, (f.name for f in dataclasses.fields(cls)), where)
        return cls(**{k: _check(k, v, where) for k, v in d.items()})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["lora_target_modules"], tuple):
            d["lora_target_modules"] = list(d["lora_target_modules"])
        return d

    def resolved(self, stage: int | None = None) -> TrainConfig:
        """This config with the stage's paper defaults filled in for ``lr`` and ``max_steps``."""
        stage = self.stage if stage is None else _check("stage", stage, "train")
        defaults = STAGE_DEFAULTS[stage]
        return dataclasses.replace(
            self,
            stage=stage,
            lr=self.lr if self.lr is not None else defaults["lr"],
            max_steps=self.max_steps if self.max_steps is not None else defaults["max_steps"],
        )


_CHOICES = {
    "stage": (1, 2),
    "lr_schedule": ("linear", "constant"),
    "finetune": ("auto", "lora", "full"),
    "pooling": ("auto", "mean", "latent"),
    "batch_mode": BATCH_MODES,
}
_POSITIVE = {"batch_size", "grad_accum", "lora_r", "latents", "heads", "latent_mlp_ratio", "max_length", "max_steps",
             "token_budget", "log_every"}
_NON_NEGATIVE = {"warmup", "save_every", "keep_checkpoints", "max_negatives", "shuffle_buffer",
                 "weight_decay", "max_grad_norm", "lora_alpha", "seed"}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _check(key: str, value, where: str):
    """Type / range check of one option; returns the value normalised (ints to float, lists to tuple)."""
    kind = _FIELD_TYPES[key]
    name = f"{where}.{key}"
    if value is None:
        if "None" in kind:
            return None
        raise NvdataError(f"{name}: must not be null")
    if kind.startswith("str | tuple"):
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise NvdataError(f"{name}: expected a string or a list of strings, got {value!r}")
    base = kind.split(" |")[0]
    if base == "bool":
        if not isinstance(value, bool):
            raise NvdataError(f"{name}: expected true/false, got {value!r}")
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise NvdataError(f"{name}: expected an integer, got {value!r}")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise NvdataError(f"{name}: expected a number, got {value!r}")
        value = float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise NvdataError(f"{name}: expected a string, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise NvdataError(f"{name}: {value!r} is not one of {list(_CHOICES[key])}")
    if key in _POSITIVE and value <= 0:
        raise NvdataError(f"{name}: must be > 0, got {value!r}")
    if key in _NON_NEGATIVE and value < 0:
        raise NvdataError(f"{name}: must be >= 0, got {value!r}")
    if key in ("temperature", "lr") and value <= 0:
        raise NvdataError(f"{name}: must be > 0, got {value!r}")
    if key == "lora_dropout" and not 0 <= value < 1:
        raise NvdataError(f"{name}: must be in [0, 1), got {value!r}")
    return value


# -- schedule, optimizer -----------------------------------------------------------------------


def lr_factor(step: int, *, warmup: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def effective_warmup(cfg: TrainConfig) -> int:
    # NV-Embed warms up 500 steps of 20k; a 50-step smoke run keeps the same proportion instead
    # of never reaching its learning rate
    return min(cfg.warmup, cfg.max_steps // 10)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "latents" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


# -- checkpoints -------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((Path(out) / "checkpoints").glob("checkpoint-*"))
    ckpts = [c for c in ckpts if (c / STATE_FILE).is_file()]
    return ckpts[-1] if ckpts else None


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict, keep: int, rng: dict | None = None) -> Path:
    """Write ``out/checkpoints/checkpoint-{step}`` atomically (a folder renamed into place).

    ``rng``: the RNG state to record (default: now); an interrupted step passes the state from
    before it, so the resumed run redraws what the lost step drew.
    """
    root = Path(out) / "checkpoints"
    final = root / f"checkpoint-{state['step']:07d}"
    with staged_dir(final, prefix=f".tmp-{final.name}-") as tmp:
        model.save(tmp)
        torch.save(
            {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng if rng is not None else _rng_state()},
            tmp / STATE_FILE,
        )
    if keep:
        for old in sorted(root.glob("checkpoint-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


# -- the loop ----------------------------------------------------------------------------------


def _peak_memory(device: torch.device) -> dict:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def train(
    cfg: TrainConfig,
    *,
    data_dir: Path,
    model: str | None = None,
    out: Path,
    init: Path | None = None,
    device: str | None = None,
    stage: int | None = None,
    overwrite: bool = False,
    progress_console=None,
) -> dict:
    """Train ``model`` on the shards of ``data_dir`` and write the result to ``out``.

    ``model``: a path, Hub id or an alias of ``model.MODEL_ALIASES`` (``minilm``); it may be left
    out with ``init`` (the checkpoint records its base model; a ``model`` that disagrees is an
    error naming both) or when ``out`` holds a checkpoint to resume. ``stage`` (1 or 2)
    overrides ``cfg.stage``; ``init`` is a folder written by an earlier run (stage 2 continues
    from stage 1). If ``out`` holds a checkpoint of the same config the run resumes from it
    (model, optimizer, scheduler, RNG, data position) and says so. ``out`` must be new, empty or
    an earlier run (``overwrite``: any folder but the data), checked with the device before any
    work. Interrupted (Ctrl-C, SIGINT), the run saves a checkpoint of its last finished step,
    says where, and re-raises ``KeyboardInterrupt``. Progress: a rich bar on a terminal, a line
    every ``cfg.log_every`` steps otherwise (``progress.TrainProgress``, on stderr). Returns the
    summary that is also written to ``out/train_summary.json``.
    """
    # before any work: --out new/empty/an earlier run (or overwrite), never the data; the device
    preflight(out, "train", overwrite=overwrite, inputs=(data_dir, init), device=device)
    cfg = cfg.resolved(stage)
    out = Path(out)
    files = shard_files(Path(data_dir))
    resume_from = latest_checkpoint(out)
    model = _base_model(model, init=init, resume_from=resume_from)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    state = None
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=False)
        _check_resumable(state["config"], cfg, resume_from)

    emb = build_model(
        model,
        init=resume_from if resume_from is not None else init,
        pooling=cfg.pooling,
        finetune=cfg.finetune,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        lora_target_modules=cfg.lora_target_modules,
        latents=cfg.latents,
        heads=cfg.heads,
        latent_mlp_ratio=cfg.latent_mlp_ratio,
        max_length=cfg.max_length,
        device=str(dev),
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    trainable, total = count_parameters(emb)
    optimizer = make_optimizer(emb, cfg)
    warmup = effective_warmup(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=warmup, max_steps=cfg.max_steps, schedule=cfg.lr_schedule)
    )
    loss_fn = InfoNCELoss(cfg.temperature)

    step, epoch, batch_in_epoch = 0, 0, 0
    metrics_path = out / "metrics.jsonl"
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        _set_rng_state(state["rng"])
        _truncate_metrics(metrics_path, step)
    elif metrics_path.exists():
        metrics_path.unlink()

    stream = batch_stream(
        files,
        batch_size=cfg.batch_size,
        mode=cfg.batch_mode,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        start_epoch=epoch,
        skip_batches=batch_in_epoch,
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    progress = TrainProgress(total=cfg.max_steps, initial=step, description=f"train stage {cfg.stage}",
                             log_every=cfg.log_every, console=progress_console)
    if resume_from is not None:
        progress.say(f"resuming from {resume_from} (step {step} of {cfg.max_steps})")
    emb.train()
    optimizer.zero_grad(set_to_none=True)
    t_start = time.perf_counter()
    run_tokens, run_padded, run_steps, losses = 0, 0, 0, []
    last_ckpt = resume_from
    rng_before_step = _rng_state()
    term_handler = _sigterm_raises_interrupt()  # a scheduler's SIGTERM (preemption) checkpoints like Ctrl-C
    try:
        with metrics_path.open("a") as metrics, progress:
            while step < cfg.max_steps:
                rng_before_step = _rng_state()
                t0 = time.perf_counter()
                step_loss, step_tokens, step_padded, step_rows, negs, dups = 0.0, 0, 0, 0, 0.0, 0
                sources, chunks, cached = set(), 0, False
                # the data position only moves once the step is done (an interrupted step re-runs)
                step_epoch, step_batch = epoch, batch_in_epoch
                for _ in range(cfg.grad_accum):
                    step_epoch, index, rows = next(stream)
                    batch = collate(rows, max_negatives=cfg.max_negatives)
                    stats = contrastive_backward(emb, batch, loss_fn, token_budget=cfg.token_budget,
                                                 grad_cache=cfg.grad_cache, loss_scale=1.0 / cfg.grad_accum)
                    step_loss += stats.loss / cfg.grad_accum
                    step_tokens += stats.tokens
                    step_padded += stats.padded_tokens
                    chunks += stats.chunks
                    cached |= stats.grad_cache
                    step_rows += batch.size
                    negs += batch.negatives_per_query() / cfg.grad_accum
                    dups += batch.masked_duplicates
                    sources.update(batch.sources)
                    step_batch = index + 1
                params = [p for p in emb.parameters() if p.requires_grad]
                # clip_grad_norm_ with an infinite bound only measures: the norm is logged either way
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, epoch, batch_in_epoch = step + 1, step_epoch, step_batch
                dt = time.perf_counter() - t0
                run_tokens += step_tokens
                run_padded += step_padded
                run_steps += 1
                losses.append(step_loss)
                record = {
                    "step": step,
                    "loss": step_loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "epoch": epoch,
                    "rows": step_rows,
                    "tokens": step_tokens,
                    "padded_tokens": step_padded,
                    "padding_ratio": step_padded / max(step_tokens, 1),
                    "tokens_per_s": step_tokens / dt if dt > 0 else None,
                    "step_s": dt,
                    "chunks": chunks,
                    "grad_cache": cached,
                    "negatives_per_query": negs,
                    "masked_duplicates": dups,
                    "sources": sorted(sources),
                }
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                progress.step(record)
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                    last_ckpt = save_checkpoint(out, emb, optimizer, scheduler,
                                                _state(cfg, step, epoch, batch_in_epoch), cfg.keep_checkpoints)
    except KeyboardInterrupt:
        optimizer.zero_grad(set_to_none=True)  # the unfinished step's gradients
        if last_ckpt is None or _ckpt_step(last_ckpt) != step:
            with _sigint_ignored():  # a second Ctrl-C must not leave half a checkpoint behind
                last_ckpt = save_checkpoint(out, emb, optimizer, scheduler, _state(cfg, step, epoch, batch_in_epoch),
                                            cfg.keep_checkpoints, rng=rng_before_step)
        progress.say(f"interrupted at step {step} of {cfg.max_steps}: checkpoint saved to {last_ckpt}; "
                     "run the same command again to resume from it")
        raise
    finally:
        if term_handler is not None:
            signal.signal(signal.SIGTERM, term_handler)
    elapsed = time.perf_counter() - t_start
    if run_steps or last_ckpt is None or _ckpt_step(last_ckpt) != step:
        last_ckpt = save_checkpoint(out, emb, optimizer, scheduler,
                                    _state(cfg, step, epoch, batch_in_epoch), cfg.keep_checkpoints)
    saved_at = time.time() - 1  # mtime granularity
    emb.save(out)
    normalize_permissions(out, newer_than=saved_at)  # model files readable by colleagues, as the rest of --out
    summary = {
        "stage": cfg.stage,
        "steps": step,
        "steps_this_run": run_steps,
        "resumed_from": str(resume_from) if resume_from else None,
        "init": str(init) if init else None,
        "model": str(model),
        "model_kind": emb.kind,
        "weights": emb.meta["weights"],
        "pooling": emb.meta["pooling"],
        "device": str(dev),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "tokens": run_tokens,
        "padded_tokens": run_padded,
        "padding_ratio": run_padded / run_tokens if run_tokens else None,
        "elapsed_s": elapsed,
        "tokens_per_s": run_tokens / elapsed if elapsed > 0 and run_tokens else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "checkpoint": str(last_ckpt),
        "metrics": str(metrics_path),
        "out": str(out),
        "config": cfg.to_dict(),
        **_peak_memory(dev),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _base_model(model: str | None, *, init: Path | None, resume_from: Path | None) -> str:
    """The base model of a run: ``model`` (aliases resolved), else the one ``init`` records."""
    model = resolve_model_name(model) if model is not None else None
    recorded_in = init if init is not None else resume_from
    if recorded_in is None:
        if model is None:
            raise NvdataError("train: give --model (a path, a Hub id or 'minilm') or --init CHECKPOINT")
        return model
    recorded = checkpoint_base_model(recorded_in)
    if model is not None and not same_model(model, recorded):
        raise NvdataError(f"train: --model {model} but {recorded_in} was trained from {recorded}; "
                          "leave --model out (the checkpoint knows its base model) or pass that one")
    return model if model is not None else recorded


@contextmanager
def _sigint_ignored():
    """Ctrl-C and SIGTERM wait while a checkpoint is written (never half a checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sigterm_raises_interrupt():
    """Make SIGTERM (Slurm / Kubernetes preemption, ``kill``) stop training the way Ctrl-C does:
    a checkpoint of the last finished step, then the interrupt, instead of losing every step
    since the last ``save_every``. Returns the handler to restore (None off the main thread,
    where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, on_term)


def _state(cfg: TrainConfig, step: int, epoch: int, batch_in_epoch: int) -> dict:
    return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "config": cfg.to_dict()}


def _ckpt_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def _check_resumable(saved: dict, cfg: TrainConfig, where: Path) -> None:
    now = cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if diff:
        raise NvdataError(
            f"train: {where} was written with a different config ({', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in diff)}); "
            "use a fresh --out or the same options"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint a run resumes from (they will be re-run)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
