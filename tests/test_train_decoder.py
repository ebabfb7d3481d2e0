"""The bundled trainer on a decoder LLM the NV-Embed way, with a tiny random Mistral built here.

The tokenizer is built here too, Llama-style (SentencePiece-like Metaspace BPE with a BOS
template), because that is the tokenizer whose boundary merges break instruction masking by
token counting.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_train import INSTRUCTION, role_rows, row, write_build  # noqa: E402

from nvdata.schema import instructed_query  # noqa: E402
from nvdata.train import TrainConfig, train  # noqa: E402
from nvdata.train.data import collate  # noqa: E402
from nvdata.train.loss import InfoNCELoss, contrastive_backward  # noqa: E402
from nvdata.train.model import (  # noqa: E402
    LatentAttentionPooling,
    build_model,
    checkpointing_enabled,
    is_causal_decoder,
    make_bidirectional,
    masked_mean,
    tokenize_with_instructions,
)

SMALL = dict(latents=16, heads=4, latent_mlp_ratio=2, max_length=64, device="cpu")


def llama_style_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [instructed_query(INSTRUCTION, "the fox chases the owl"), "what does the cat eat", "is bitten by"]
    corpus += [f"the {a} {v} the {b}" for a in ("cat", "dog", "owl", "fox") for b in ("cow", "duck") for v in ("chases", "bites")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(corpus * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> str:
    from transformers import MistralConfig, MistralForCausalLM

    path = tmp_path_factory.mktemp("tiny-mistral")
    tok = llama_style_tokenizer()
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_causal_mask_is_removed(decoder_dir, impl):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(decoder_dir, attn_implementation=impl).eval()
    ids = torch.tensor([[1, 10, 11, 12, 13, 14], [1, 10, 11, 12, 13, 20]])  # differ in the last token only
    full = torch.ones_like(ids)
    padded = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])  # ... which is padding here

    def first_token_moves(mask) -> bool:
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return not torch.allclose(h[0, 0], h[1, 0], atol=1e-6)

    assert is_causal_decoder(model)
    assert not first_token_moves(full)  # causal: a late token cannot reach an early one
    make_bidirectional(model)
    assert not is_causal_decoder(model)
    assert first_token_moves(full)  # with no padding (the mask is skipped: module flags matter)
    assert not first_token_moves(padded)  # padding stays masked
    ids[:, 4] = torch.tensor([13, 21])
    assert first_token_moves(padded)  # with a padding mask materialised


def test_trainer_builds_decoders_bidirectional_with_lora_and_latent_attention(decoder_dir):
    m = build_model(decoder_dir, **SMALL)
    assert m.kind == "decoder" and m.meta["weights"] == "lora" and m.meta["pooling"] == "latent"
    assert not is_causal_decoder(m.backbone)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("pooler.") for n in trainable)
    lora_targets = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
    assert lora_targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    a = next(p for n, p in m.named_parameters() if n.endswith("q_proj.lora_A.default.weight"))
    assert a.shape[0] == 16  # rank 16 by default
    peft_cfg = m.backbone.peft_config["default"]
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout) == (16, 32, 0.1)
    assert any(n.startswith("pooler.latents") for n in trainable)
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert any(n.endswith("q_proj.base_layer.weight") for n in frozen)


def test_latent_attention_shapes_and_pooling_mask():
    torch.manual_seed(0)
    layer = LatentAttentionPooling(64)  # the paper's defaults: 512 latents, 8 heads
    assert layer.latents.shape == (512, 64) and layer.num_heads == 8
    hidden = torch.randn(3, 7, 64)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    assert layer.cross_attend(hidden).shape == (3, 7, 64)
    out = layer(hidden, mask)
    assert out.shape == (3, 64)
    assert torch.allclose(out, masked_mean(hidden, mask), atol=1e-6)  # zero-initialised: mean pooling at step 0
    torch.nn.init.normal_(layer.out_proj.weight, std=0.2)
    torch.nn.init.normal_(layer.mlp[2].weight, std=0.2)
    out2 = layer(hidden, mask)
    assert not torch.allclose(out2, masked_mean(hidden, mask), atol=1e-3)
    moved = hidden.clone()
    moved[1, 0] += 5.0  # a masked-out position (e.g. an instruction token) does not reach the pool
    assert torch.allclose(layer(moved, mask)[1], out2[1], atol=1e-5)
    out2.sum().backward()
    assert layer.latents.grad is not None and layer.latents.grad.abs().sum() > 0


def test_instruction_mask_uses_offsets_not_token_counts(decoder_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    query = "what does the fox eat"
    feats = tokenize_with_instructions(tok, [query, query], [INSTRUCTION, None], 64)
    tokens = tok.convert_ids_to_tokens(feats["input_ids"][0].tolist())
    pooled = [t for t, k in zip(tokens, feats["pool_mask"][0].tolist()) if k]
    assert "".join(pooled).replace("▁", " ").strip() == query  # exactly the query's tokens
    assert tokens[0] == "<s>" and feats["pool_mask"][0, 0] == 0  # BOS goes with the instruction
    # counting the instruction's own tokens would be off: its trailing "▁" merges into "▁what"
    n_prefix = len(tok(instructed_query(INSTRUCTION, ""))["input_ids"])
    assert n_prefix != int(feats["attention_mask"][0].sum() - feats["pool_mask"][0].sum())
    assert torch.equal(feats["pool_mask"][1], feats["attention_mask"][1])  # documents: all tokens


def test_grad_cache_and_checkpointing_match_plain_backprop_on_a_decoder(decoder_dir):
    batch = collate(role_rows(4, seed=2))
    grads = []
    # one pass over the whole batch vs GradCache over chunks of <= 24 tokens, with checkpointing
    for checkpointing, budget in ((False, 10**6), (True, 24)):
        torch.manual_seed(1)
        # no dropout, so train mode (where checkpointing acts) is deterministic
        m = build_model(decoder_dir, **SMALL, lora_dropout=0.0, gradient_checkpointing=checkpointing)
        assert checkpointing_enabled(m.backbone) == checkpointing
        with torch.no_grad():  # move off the zero init so every pooler weight gets a gradient
            m.pooler.out_proj.weight.normal_(std=0.1)
        m.train()
        stats = contrastive_backward(m, batch, InfoNCELoss(0.05), token_budget=budget)
        assert stats.grad_cache == checkpointing
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert grads[0][n] is not None, n
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-3), n


def stage2_rows():
    rows = role_rows(8, seed=3, in_batch=False, sources=("roles",))
    sts = [
        ("a cat sits on the mat", "a feline rests on the rug", ["the dog runs in the park", "a cat sits"]),
        ("the owl hunts at night", "at night the owl hunts", ["the owl sleeps at noon", "the fox hunts"]),
        ("the cow eats grass", "grass is eaten by the cow", ["the cow drinks water", "a duck eats bread"]),
        ("a duck swims", "a duck is swimming", ["a duck flies", "a goat swims"]),
    ]
    for i, (q, p, n) in enumerate(sts):
        rows.append(row(100 + i, q, p, n, source="sts", in_batch=False, document_instruction="Retrieve semantically similar text", task="sts"))
    return rows


def test_two_stages_train_save_load_and_resume(tmp_path, decoder_dir):
    build1 = write_build(tmp_path / "b1", role_rows(12, seed=1))
    build2 = write_build(tmp_path / "b2", stage2_rows())
    common = dict(batch_size=4, lr=1e-3, warmup=0, lr_schedule="constant", latents=16, heads=4, latent_mlp_ratio=2, max_length=64, shuffle_buffer=4)
    s1 = train(TrainConfig(max_steps=3, save_every=0, **common), data_dir=build1, model=decoder_dir, out=tmp_path / "o1", device="cpu")
    assert s1["model_kind"] == "decoder" and s1["weights"] == "lora" and s1["pooling"] == "latent"
    m1 = json.loads((tmp_path / "o1" / "metrics.jsonl").read_text().splitlines()[0])
    assert m1["negatives_per_query"] > 2  # stage 1: in-batch negatives on top of the 2 hard ones

    # stage 2 starts from stage 1's adapter and latent attention
    start = build_model(decoder_dir, init=tmp_path / "o1", **SMALL)
    saved = load_file(str(tmp_path / "o1" / "pooler.safetensors"))
    assert all(torch.equal(start.pooler.state_dict()[k], saved[k]) for k in saved)
    stage2 = TrainConfig(stage=2, max_steps=4, save_every=2, **common)
    s2 = train(stage2, data_dir=build2, model=decoder_dir, out=tmp_path / "o2", init=tmp_path / "o1", device="cpu")
    assert s2["stage"] == 2 and s2["config"]["lr"] == 1e-3
    metrics = [json.loads(x) for x in (tmp_path / "o2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["negatives_per_query"] for m in metrics] == [2.0] * 4  # stage 2: own hard negatives only
    assert {tuple(m["sources"]) for m in metrics} <= {("roles",), ("sts",)}

    # the documented loader
    import nvdata

    model = nvdata.load_model(tmp_path / "o2", device="cpu")
    q = model.encode(["the cat chases the cow"], instruction=INSTRUCTION)
    d = model.encode(["the cow is chased by the cat", "the cat is chased by the cow"])
    assert q.shape == (1, 64) and d.shape == (2, 64)
    assert abs(float((q * q).sum()) - 1.0) < 1e-5
    again = nvdata.load_model(tmp_path / "o2", device="cpu").encode(["the cow is chased by the cat"])
    assert torch.allclose(torch.from_numpy(d[:1]), torch.from_numpy(again), atol=1e-6)

    # an interrupted stage 2 resumes from its checkpoint to the same losses
    short = TrainConfig(stage=2, max_steps=2, save_every=2, **common)
    train(short, data_dir=build2, model=decoder_dir, out=tmp_path / "o3", init=tmp_path / "o1", device="cpu")
    r = train(stage2, data_dir=build2, model=decoder_dir, out=tmp_path / "o3", init=tmp_path / "o1", device="cpu")
    assert r["resumed_from"] and r["steps_this_run"] == 2
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "o3" / "metrics.jsonl").read_text().splitlines()]
    assert resumed == pytest.approx([m["loss"] for m in metrics], rel=1e-4, abs=1e-6)


def test_bf16_lora_path_trains_saves_and_loads(tmp_path, decoder_dir):
    # The CUDA configuration (frozen base in bf16, fp32 LoRA and latent attention, bf16
    # autocast) forced on the CPU, so that path runs on every CI machine.
    m = build_model(decoder_dir, bf16=True, **SMALL)
    params = dict(m.named_parameters())
    assert params[next(n for n in params if n.endswith("q_proj.base_layer.weight"))].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad)
    feats = m.tokenize(["the cat chases the cow", "the owl bites the duck"], [INSTRUCTION, None])
    out = m(feats)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)

    build = write_build(tmp_path / "b", role_rows(12, seed=1))
    common = dict(batch_size=4, lr=1e-3, warmup=0, lr_schedule="constant", latents=16, heads=4,
                  latent_mlp_ratio=2, max_length=64, shuffle_buffer=4, max_steps=3, save_every=0)
    half = train(TrainConfig(bf16=True, **common), data_dir=build, model=decoder_dir, out=tmp_path / "bf16", device="cpu")
    full = train(TrainConfig(**common), data_dir=build, model=decoder_dir, out=tmp_path / "fp32", device="cpu")
    assert half["first_loss"] == pytest.approx(full["first_loss"], rel=0.05)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))

    import nvdata

    texts = ["the cow is chased by the cat", "the duck bites the owl"]
    as_fp32 = nvdata.load_model(tmp_path / "bf16", device="cpu").encode(texts)
    as_bf16 = nvdata.load_model(tmp_path / "bf16", device="cpu", bf16=True).encode(texts)
    assert as_bf16.dtype == as_fp32.dtype
    assert torch.allclose(torch.from_numpy(as_bf16), torch.from_numpy(as_fp32), atol=5e-2)
