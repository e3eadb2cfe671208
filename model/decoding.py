"""Greedy decoding, sampling and beam search, written once for every architecture.

An architecture (model/base.py) exposes one step interface and nothing else is needed here:

    state = model.encode(feats, max_len)          the video, encoded once per clip (B rows)
    logp, state = model.step(state, words, t)     log-probs (R, V) of word t for each of R rows
    state = model.reorder(state, index)           rows picked or repeated: n samples per clip, beam survivors

A state is whatever the architecture carries between steps (S2VT: LSTM states; the transformer:
cached keys and values); only the model reads it. Sequences are (rows, L) token ids, PAD after
``<eos>``; ``<pad>`` and ``<bos>`` are never produced (``word_logprobs``).

Sampling with gradients (REINFORCE, stages 2 and 3) keeps only what the gradient needs. An
architecture that splits its step in two -- ``h, state = model.step_hidden(state, words, t)``, the
input of its vocabulary layer ``model.out`` (``step`` is ``word_logprobs(model.out(h))``) -- has its
distribution computed without a graph, and the chosen word's log-prob attached to the graph by
:class:`ChosenLogProb`, which keeps h (rows x hidden) and recomputes the logits in backward. Before,
every step kept its full log-softmax (rows x vocabulary) for backward: with MSR-VTT's 9,439 words,
M = 8 and batch 256, 2,048 x 9,439 floats a step, 35 steps (bench/experiments/memory_report.md).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from vidcap.tokens import BOS, EOS, PAD


class StepModel(Protocol):
    cfg: Any  # has max_len and vocab_size

    def encode(self, feats: torch.Tensor, max_len: int) -> Any: ...

    def step(self, state: Any, words: torch.Tensor, t: int) -> tuple[torch.Tensor, Any]: ...

    def reorder(self, state: Any, index: torch.Tensor) -> Any: ...


# False: sampling with gradients keeps each step's full log-probs, as before the lean path (for
# bench/experiments/memory.py's "before" column; the tests compare the two paths).
LEAN_SAMPLING = True


def word_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Word log-probs from logits (..., V); <pad> and <bos> are never produced."""
    logits[..., PAD] = float("-inf")
    logits[..., BOS] = float("-inf")
    return F.log_softmax(logits, -1)


class ChosenLogProb(torch.autograd.Function):
    """log p(word) of the chosen word per row, differentiable in (h, weight, bias) of the vocabulary
    layer logits = h @ weight.T + bias (``word_logprobs`` masking <pad> and <bos>).

    The value is passed in (computed without a graph where the word was drawn); backward
    recomputes the logits from h: d log p(w) / d logits = onehot(w) - softmax(logits). Saved for
    backward: h and the words, not the (rows, vocabulary) distribution."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, words: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight, bias, words)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight, bias, words = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):  # fp32 under amp: the exact gradient
            hf = h.to(weight.dtype)
            logits = F.linear(hf, weight, bias)
            g_logits = word_logprobs(logits).exp_().mul_(-grad.to(weight.dtype)[:, None])
            g_logits.scatter_add_(1, words[:, None], grad.to(weight.dtype)[:, None])
            grad_h = g_logits @ weight if ctx.needs_input_grad[0] else None
            grad_w = g_logits.t() @ hf if ctx.needs_input_grad[1] else None
            grad_b = g_logits.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return (grad_h.to(h.dtype) if grad_h is not None else None), grad_w, grad_b, None, None


def _lean(model: StepModel) -> bool:
    """Whether sample() keeps only the chosen words' log-probs for backward (see the module docstring)."""
    return (LEAN_SAMPLING and torch.is_grad_enabled() and hasattr(model, "step_hidden")
            and isinstance(getattr(model, "out", None), torch.nn.Linear))


def _expanded(model: StepModel, feats: torch.Tensor, n: int, max_len: int) -> Any:
    """The clips encoded once, each row repeated n times (rows b*n .. b*n+n-1 are clip b)."""
    state = model.encode(feats, max_len)
    if n == 1:
        return state
    return model.reorder(state, torch.arange(feats.shape[0], device=feats.device).repeat_interleave(n))


def sample(model: StepModel, feats: torch.Tensor, n: int = 1, temperature: float = 1.0, greedy: bool = False,
           max_len: int | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences per clip (B*n, L) with per-token log-probs (B*n, L), PAD / 0 after <eos>.

    The video is encoded once and its state expanded n times. Rows b*n .. b*n+n-1 belong to clip b.
    Log-probs keep their graph (REINFORCE differentiates them); with gradients on, only what
    their backward needs is kept (``ChosenLogProb``)."""
    max_len = max_len or model.cfg.max_len
    state = _expanded(model, feats, n, max_len)
    rows = feats.shape[0] * n
    # Rows that have produced <eos> leave the state (reorder), so each step computes only the
    # captions still being written: most end well before max_len, and the steps are the cost
    # (measured: 1.35x per stage-2 batch on the CPU).
    alive = torch.arange(rows, device=feats.device)
    words = torch.full((rows,), BOS, dtype=torch.long, device=feats.device)
    seqs, logps = [], []
    lean = _lean(model)
    for t in range(max_len):
        if lean:
            h, state = model.step_hidden(state, words, t)
            with torch.no_grad():
                logp = word_logprobs(model.out(h))
        else:
            logp, state = model.step(state, words, t)
        if greedy:
            words = logp.argmax(-1)
        else:
            probs = torch.softmax(logp.detach() / temperature, -1)
            words = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        chosen = logp.gather(1, words[:, None]).squeeze(1)
        if lean:
            chosen = ChosenLogProb.apply(h, model.out.weight, model.out.bias, words, chosen)
        seqs.append(torch.full((rows,), PAD, dtype=torch.long, device=feats.device).index_copy(0, alive, words))
        logps.append(chosen.new_zeros(rows).index_copy(0, alive, chosen))
        ended = words == EOS
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            alive, words, state = alive[keep], words[keep], model.reorder(state, keep)
    return torch.stack(seqs, 1), torch.stack(logps, 1)


def chosen_logprobs(model: StepModel, feats: torch.Tensor, seqs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Teacher-forced log-probs (N, T) of the words of `seqs` (N, T) (0 after <eos>), for
    accumulated REINFORCE: the samples drawn without a graph, their log-probs recomputed here one
    micro-batch at a time. Keeps (N, T, hidden) for backward, never (N, T, vocabulary), where the
    architecture has ``forward_hidden``; the (rows, vocabulary) values are computed `chunk` rows at a time."""
    ended_before = torch.cumsum((seqs == EOS).long(), 1) - (seqs == EOS).long()
    keep = (ended_before == 0) & (seqs != PAD)  # up to and including <eos> (train/losses.sequence_mask)
    if not (hasattr(model, "forward_hidden") and isinstance(getattr(model, "out", None), torch.nn.Linear)):
        lp = model(feats, seqs).gather(2, seqs[..., None]).squeeze(2)
        return torch.where(keep, lp, 0.0)
    h = model.forward_hidden(feats, seqs).flatten(0, 1)
    words = seqs.flatten()
    with torch.no_grad():
        value = torch.cat([word_logprobs(model.out(h[i : i + chunk])).gather(1, words[i : i + chunk, None]).squeeze(1)
                           for i in range(0, h.shape[0], chunk)])
    lp = ChosenLogProb.apply(h, model.out.weight, model.out.bias, words, value).view(seqs.shape)
    return torch.where(keep, lp, 0.0)  # PAD's log-prob is -inf: selected away, its gradient 0


@torch.no_grad()
def greedy(model: StepModel, feats: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """The most likely word at each step (B, L)."""
    return sample(model, feats, 1, greedy=True, max_len=max_len)[0]


@torch.no_grad()
def beam(model: StepModel, feats: torch.Tensor, k: int = 3, max_len: int | None = None) -> torch.Tensor:
    """Batched beam search (sum of log-probs, no length norm); best sequence per clip (B, L)."""
    max_len = max_len or model.cfg.max_len
    b, vocab = feats.shape[0], model.cfg.vocab_size
    state = _expanded(model, feats, k, max_len)
    offsets = torch.arange(b, device=feats.device)[:, None] * k
    score = feats.new_full((b, k), float("-inf"))
    score[:, 0] = 0.0  # all beams start identical: keep one
    words = torch.full((b * k,), BOS, dtype=torch.long, device=feats.device)
    done = torch.zeros(b * k, dtype=torch.bool, device=feats.device)
    seqs = torch.zeros((b * k, 0), dtype=torch.long, device=feats.device)
    for t in range(max_len):
        logp, state = model.step(state, words, t)
        # A finished beam can only extend with PAD at no cost, so it keeps its score.
        finished = torch.full_like(logp, float("-inf"))
        finished[:, PAD] = 0.0
        logp = torch.where(done[:, None], finished, logp)
        cand = (score.view(-1, 1) + logp).view(b, k * vocab)
        score, idx = cand.topk(k, 1)
        src = (idx // vocab + offsets).view(-1)
        words = (idx % vocab).view(-1)
        seqs = torch.cat([seqs[src], words[:, None]], 1)
        state = model.reorder(state, src)
        done = done[src] | (words == EOS) | (words == PAD)
        if bool(done.all()):
            break
    best = score.argmax(1) + offsets[:, 0]
    return seqs[best]


def decode(model: StepModel, feats: torch.Tensor, beam_size: int = 1) -> torch.Tensor:
    """The caption of each clip (B, L) as `train eval`, validation and `caption` make it: greedy for
    ``beam_size <= 1``, else beam search of that width -- one rule, so the three never disagree."""
    return greedy(model, feats) if beam_size <= 1 else beam(model, feats, beam_size)
