"""The three stages' losses, as small pure functions (tested on hand-computed cases)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidcap.tokens import EOS, PAD


def xe_loss(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Stage 1: mean negative log-likelihood over the non-pad target tokens (<eos> included)."""
    return F.nll_loss(logp.flatten(0, 1), targets.flatten(), ignore_index=PAD)


def sequence_mask(seqs: torch.Tensor) -> torch.Tensor:
    """1 for every token up to and including the first <eos>, 0 after (PAD)."""
    ended_before = torch.cumsum((seqs == EOS).long(), 1) - (seqs == EOS).long()
    return ((ended_before == 0) & (seqs != PAD)).float()


def rl_loss(logps: torch.Tensor, seqs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Stage 2/3 REINFORCE with the greedy baseline (the paper's eq. 7, self-critical):

        L = -1/(N) * sum_i (r(w^i) - b_i) * sum_t log p(w^i_t), t up to and including <eos>,

    over the N = B*M sampled sequences; b_i is the CIDEr-D of clip i's greedy caption.
    logps, seqs: (N, T); rewards, baseline: (N,).
    """
    advantage = (rewards - baseline).to(logps.dtype)
    per_seq = (logps * sequence_mask(seqs)).sum(1)
    return -(advantage * per_seq).mean()


def attr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage 3 side task: binary cross-entropy over the attribute sigmoids."""
    return F.binary_cross_entropy_with_logits(logits, labels)
