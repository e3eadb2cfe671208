"""The reinforcement signal of stages 2 and 3, in one place: what a sampled caption earns (the
reward) and what it is compared with (the baseline). Changing either is one edit here plus a
``reward=`` / ``baseline=`` override.

- reward ``cider-d`` (default, the paper's): CIDEr-D of each sampled caption against its clip's
  references, with the pipeline's document frequencies (``evalkit.cider.CiderD``).
- baseline ``greedy`` (default, the paper's REINFORCE+ / self-critical): the reward of the clip's
  greedy caption, decoded under no_grad with the decoder in eval mode.
- baseline ``mean``: the mean reward of the clip's *other* M - 1 samples (needs M >= 2); no extra
  decoding pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from vidcap.evalkit.cider import CiderD

RewardFn = Callable[[Sequence[str], np.ndarray], np.ndarray]


def cider_d_reward(itos: Sequence[str], references: Mapping[str, Sequence[str]], df: Mapping, n_docs: int,
                   max_len: int) -> RewardFn:
    scorer = CiderD(itos, references, df, n_docs, max_len=max_len)
    return scorer.score


REWARDS: dict[str, Callable[..., RewardFn]] = {"cider-d": cider_d_reward}
BASELINES = ("greedy", "mean")


def make_reward(name: str, **kwargs) -> RewardFn:
    if name not in REWARDS:
        raise ValueError(f"reward={name}: unknown; choose from {', '.join(sorted(REWARDS))}")
    return REWARDS[name](**kwargs)


def sample_rewards(model, feats: torch.Tensor, clip_ids: Sequence[str], samples: int, temperature: float,
                   reward: RewardFn, baseline: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Draw M captions per clip and score them: (seqs (B*M, T), log-probs (B*M, T), rewards (B*M,),
    baseline (B*M,)). Rows b*M .. b*M+M-1 belong to clip b."""
    seqs, logps = model.sample(feats, n=samples, temperature=temperature)
    ids = [c for c in clip_ids for _ in range(samples)]
    rewards = reward(ids, seqs.cpu().numpy())
    if baseline == "greedy":
        was_training = model.training
        model.eval()
        with torch.no_grad():
            greedy = model.greedy(feats.detach())
        model.train(was_training)
        base = np.repeat(reward(list(clip_ids), greedy.cpu().numpy()), samples)
    else:  # mean of the other samples of the same clip
        r = rewards.reshape(-1, samples)
        base = ((r.sum(1, keepdims=True) - r) / (samples - 1)).reshape(-1)
    return seqs, logps, rewards, base
