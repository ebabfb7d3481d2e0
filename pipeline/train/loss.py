"""The contrastive loss, and the step that computes it (plainly or with gradient caching).

:class:`InfoNCELoss` is NV-Embed's objective (Lee et al. 2024, arXiv:2405.17428, Eq. 2): for query
``q`` with positive ``d+`` and negatives ``N``,

    L = -log exp(cos(q, d+) / t) / sum_{d in {d+} U N} exp(cos(q, d) / t)

with ``N`` = the row's hard negatives, plus the other documents of the batch where the row allows
in-batch negatives (stage 1). Which documents count for which query comes from
``ContrastiveBatch.candidates`` (see ``data.collate``); the loss just masks the others out.

:func:`contrastive_backward` runs one batch forward and backward. With ``mini_batch`` set it is
GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; sentence-transformers' ``CachedMultipleNegativesRankingLoss``): embed every text without
a graph in mini-batches, take the loss and its gradient with respect to the embeddings, then
re-embed each mini-batch with a graph and push that cached gradient through it. Memory is that of
one mini-batch while the negatives are those of the whole batch; the result equals plain
backprop (dropout is replayed from the saved RNG state).

Example::

    loss_fn = InfoNCELoss(temperature=0.01)
    loss = contrastive_backward(model, collate(rows), loss_fn, mini_batch=32)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nvdata.train.data import ContrastiveBatch


class InfoNCELoss(nn.Module):
    """InfoNCE over cosine similarities with temperature, restricted to each query's candidates.

    Inputs: query embeddings (B, d), document embeddings (D, d), ``positives`` (B,) indices into
    the documents, ``candidates`` (B, D) bool. Returns the mean loss over queries.
    """

    def __init__(self, temperature: float = 0.01):
        super().__init__()
        self.temperature = float(temperature)

    def forward(
        self,
        query_emb: torch.Tensor,
        doc_emb: torch.Tensor,
        positives: torch.Tensor,
        candidates: torch.Tensor,
    ) -> torch.Tensor:
        q = F.normalize(query_emb.float(), dim=-1)
        d = F.normalize(doc_emb.float(), dim=-1)
        logits = (q @ d.T) / self.temperature
        logits = logits.masked_fill(~candidates.to(logits.device), float("-inf"))
        return F.cross_entropy(logits, positives.to(logits.device))


class RandContext:
    """Capture the RNG state now; ``with ctx:`` replays it (so dropout masks repeat)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device
        self._fork = None

    def __enter__(self):
        devices = [self.device] if self.cuda else []
        self._fork = torch.random.fork_rng(devices=devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)
        self._fork = None


@dataclass
class StepStats:
    loss: float
    tokens: int  # non-padding tokens embedded (once; GradCache's replay is not counted)


def _groups(batch: ContrastiveBatch) -> list[tuple[list[str], list[str | None]]]:
    # queries and documents go through separately: they have different lengths, so padding them
    # together would waste compute
    return [
        (batch.queries, list(batch.query_instructions)),
        (batch.documents, list(batch.document_instructions)),
    ]


def contrastive_backward(
    model,
    batch: ContrastiveBatch,
    loss_fn: InfoNCELoss,
    *,
    mini_batch: int = 0,
    loss_scale: float = 1.0,
) -> StepStats:
    """Forward + backward of one batch; gradients accumulate in ``model`` (scaled by ``loss_scale``)."""
    n_queries = batch.size
    if not mini_batch:
        embs, tokens = [], 0
        for texts, instructions in _groups(batch):
            feats = model.tokenize(texts, instructions)
            tokens += int(feats["attention_mask"].sum().item())
            embs.append(model(feats))
        loss = loss_fn(embs[0], embs[1], batch.positives, batch.candidates)
        (loss * loss_scale).backward()
        return StepStats(float(loss.detach().item()), tokens)

    # GradCache, pass 1: embeddings without a graph, remembering each chunk's RNG state
    chunks, reps, tokens = [], [], 0
    with torch.no_grad():
        for texts, instructions in _groups(batch):
            for start in range(0, len(texts), mini_batch):
                feats = model.tokenize(texts[start : start + mini_batch], instructions[start : start + mini_batch])
                tokens += int(feats["attention_mask"].sum().item())
                ctx = RandContext(feats["input_ids"].device)
                reps.append(model(feats))
                chunks.append((feats, ctx))
    cached = torch.cat(reps).detach().requires_grad_(True)
    loss = loss_fn(cached[:n_queries], cached[n_queries:], batch.positives, batch.candidates)
    (loss * loss_scale).backward()
    grads = cached.grad
    # pass 2: re-embed each chunk with a graph and backpropagate the cached gradient through it
    offset = 0
    for feats, ctx in chunks:
        with ctx:
            emb = model(feats)
        g = grads[offset : offset + emb.shape[0]]
        offset += emb.shape[0]
        emb.backward(g.to(emb.dtype))
    return StepStats(float(loss.detach().item()), tokens)
