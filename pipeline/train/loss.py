"""The contrastive loss, and the step that computes it within a token budget.

:class:`InfoNCELoss` is NV-Embed's objective (Lee et al. 2024, arXiv:2405.17428, Eq. 2): for query
``q`` with positive ``d+`` and negatives ``N``,

    L = -log exp(cos(q, d+) / t) / sum_{d in {d+} U N} exp(cos(q, d) / t)

with ``N`` = the row's hard negatives, plus the other documents of the batch where the row allows
in-batch negatives (stage 1). Which documents count for which query comes from
``ContrastiveBatch.candidates`` (see ``data.collate``); the loss just masks the others out.

:func:`contrastive_backward` runs one batch forward and backward with memory bounded by a
*token budget*, not by batch x max_length. The batch's queries and documents are tokenized
once, sorted by length and cut into chunks whose padded size (texts x longest text) stays under
the budget (:func:`plan_chunks`), so a tweet is never padded to the length of an abstract. When
the whole batch fits in one chunk it is plain backprop. When it does not, it is GradCache (Gao
et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup";
sentence-transformers' ``CachedMultipleNegativesRankingLoss``): embed every chunk without a
graph, take the loss and its gradient with respect to the embeddings, then re-embed chunk by
chunk with a graph and push that cached gradient through it. Memory is that of one chunk while
the negatives are those of the whole batch; loss and gradients equal plain backprop (dropout is
replayed from each chunk's saved RNG state).

Example::

    loss_fn = InfoNCELoss(temperature=0.01)
    stats = contrastive_backward(model, collate(rows), loss_fn, token_budget=4096)
    stats.loss, stats.tokens, stats.padded_tokens, stats.grad_cache
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nvdata.train.data import ContrastiveBatch
from nvdata.train.model import tokenize_with_instructions


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
    tokens: int  # real (non-padding) tokens embedded, once: GradCache's replay is not counted
    padded_tokens: int  # tokens the forward passes ran over, padding included (texts x chunk length)
    chunks: int  # forward chunks
    grad_cache: bool  # whether the batch went through GradCache


def plan_chunks(lengths: torch.Tensor, token_budget: int) -> list[torch.Tensor]:
    """Cut texts of ``lengths`` (N,) into length-sorted chunks of at most ``token_budget`` padded tokens.

    Texts are sorted longest first and taken greedily while ``texts x longest <= token_budget``;
    a single text longer than the budget is a chunk of its own. A chunk also closes early where
    the lengths drop below 3/4 of its longest text, once it holds a quarter of the budget: the
    rest then pads to a shorter length instead of to that text's. Returns index tensors (into
    the N texts) in order of decreasing length, covering every text once.
    """
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    sizes = lengths.clamp(min=1).tolist()
    chunks, current, longest = [], [], 0
    for i in order:
        if current:
            full = (len(current) + 1) * longest > token_budget
            drop = 4 * sizes[i] < 3 * longest and 4 * len(current) * longest >= token_budget
            if full or drop:
                chunks.append(torch.tensor(current))
                current = []
        if not current:
            longest = sizes[i]
        current.append(i)
    if current:
        chunks.append(torch.tensor(current))
    return chunks


def _slice(features: dict[str, torch.Tensor], idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    # right padding: a chunk's columns past its longest text are padding for every row in it
    length = max(int(features["attention_mask"][idx].sum(dim=1).max()), 1)
    return {k: v[idx, :length].to(device) for k, v in features.items()}


def contrastive_backward(
    model,
    batch: ContrastiveBatch,
    loss_fn: InfoNCELoss,
    *,
    token_budget: int = 4096,
    grad_cache: bool | None = None,
    loss_scale: float = 1.0,
) -> StepStats:
    """Forward + backward of one batch; gradients accumulate in ``model`` (scaled by ``loss_scale``).

    ``token_budget``: most padded tokens (texts x their chunk's longest text) in one forward pass.
    ``grad_cache``: None (default) uses GradCache when the batch needs more than one chunk;
    True always; False never (every chunk's graph is then held until the backward).
    """
    n_queries = batch.size
    texts = list(batch.queries) + list(batch.documents)
    instructions = list(batch.query_instructions) + list(batch.document_instructions)
    features = tokenize_with_instructions(model.tokenizer, texts, instructions, model.max_length)
    lengths = features["attention_mask"].sum(dim=1)
    chunks = plan_chunks(lengths, token_budget)
    device = model.device
    tokens = int(lengths.sum())
    padded = sum(len(idx) * max(int(lengths[idx].max()), 1) for idx in chunks)
    cached = grad_cache if grad_cache is not None else len(chunks) > 1

    def loss_of(emb: torch.Tensor) -> torch.Tensor:
        return loss_fn(emb[:n_queries], emb[n_queries:], batch.positives, batch.candidates)

    order = torch.cat(chunks).to(device)
    inverse = torch.argsort(order)  # chunk order -> the batch's order

    if not cached:
        emb = torch.cat([model(_slice(features, idx, device)) for idx in chunks])[inverse]
        loss = loss_of(emb)
        (loss * loss_scale).backward()
        return StepStats(float(loss.detach().item()), tokens, padded, len(chunks), False)

    # GradCache, pass 1: embeddings without a graph, remembering each chunk's RNG state
    states, reps = [], []
    with torch.no_grad():
        for idx in chunks:
            states.append(RandContext(device))
            reps.append(model(_slice(features, idx, device)))
    cached_emb = torch.cat(reps)[inverse].requires_grad_(True)
    loss = loss_of(cached_emb)
    (loss * loss_scale).backward()
    grads = cached_emb.grad[order]  # back to chunk order
    # pass 2: re-embed each chunk with a graph and backpropagate the cached gradient through it
    offset = 0
    for idx, ctx in zip(chunks, states):
        with ctx:
            emb = model(_slice(features, idx, device))
        emb.backward(grads[offset : offset + len(idx)].to(emb.dtype))
        offset += len(idx)
    return StepStats(float(loss.detach().item()), tokens, padded, len(chunks), True)
