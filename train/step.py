"""The forward half of a training step, as a module, so that DistributedDataParallel can wrap it.

DDP reduces gradients for what its module's ``forward`` computed; a step uses the captioner's
``forward`` (cross-entropy), ``sample``/``greedy`` (REINFORCE) and ``attribute_logits``, so the
wrapped module is this one, whose forward is the recipe's loss: xe * L_XE + rl * L_RL + attr * L_attr
(the losses of train/losses.py, the reward and baseline of train/reward.py, unchanged).

Under DDP each rank computes the loss of its part of the global batch, and DDP averages the
gradients over ranks. The RL and attribute terms are means over equal numbers of samples per rank
(every rank's batches have the same size), so the average is the global batch's mean. The XE
term is a mean over target tokens, which differ per rank; it is rescaled by
world * local tokens / global tokens (one all_reduce of a count), so the gradient is exactly the
one-process gradient of the same global batch. In one process the scale is not applied at all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from vidcap.model.s2vt import S2VTCaptioner
from vidcap.train.config import TrainConfig
from vidcap.train.data import caption_batch, pick_captions
from vidcap.train.losses import attr_loss, rl_loss, xe_loss
from vidcap.train.reward import RewardFn, sample_rewards


class RecipeLoss(nn.Module):
    def __init__(self, model: S2VTCaptioner, cfg: TrainConfig, stoi: dict[str, int], reward: RewardFn | None,
                 world: int = 1):
        super().__init__()
        self.model, self.cfg, self.stoi, self.reward, self.world = model, cfg, stoi, reward, world

    def features(self, batch: dict) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if "feats" in batch:
            return self.model.features_from_cache(batch["feats"].to(device))
        return self.model.frame_features(batch["frames"].to(device))

    def forward(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backpropagate, this rank's statistics); stats["xe_tokens"] weighs xe_loss across ranks."""
        cfg, model = self.cfg, self.model
        device = next(model.parameters()).device
        terms: list[torch.Tensor] = []
        stats: dict[str, float] = {}
        # bf16 autocast on the device the model is on: "cuda" hard-coded here left a CPU model in
        # fp32 with amp=true, silently; CPU autocast is real bf16 (slower on most CPUs: for checks).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            feats = self.features(batch)
            if cfg.xe_weight:
                n = cfg.captions_per_clip
                caps = [c for cs, i in zip(batch["captions"], batch["clip_id"], strict=True)
                        for c in pick_captions(cs, n, cfg.seed, epoch, i)]
                targets = caption_batch(caps, self.stoi, model.cfg.max_len).to(device)
                lx = xe_loss(model(feats.repeat_interleave(n, 0), targets).float(), targets)
                stats["xe_loss"] = lx.item()
                if self.world > 1:  # the global batch's token mean (see the module docstring)
                    tokens = (targets != 0).sum().double()
                    total = tokens.clone()
                    dist.all_reduce(total)
                    stats["xe_tokens"] = tokens.item()
                    lx = lx * (self.world * tokens / total).to(lx.dtype)
                terms.append(cfg.xe_weight * lx)
            if cfg.rl_weight:
                seqs, logps, rewards, base = sample_rewards(model, feats, batch["clip_id"], cfg.samples,
                                                            cfg.temperature, self.reward, cfg.baseline)
                r = torch.from_numpy(rewards).float().to(device)
                b = torch.from_numpy(base).float().to(device)
                lr_ = rl_loss(logps.float(), seqs, r, b)
                terms.append(cfg.rl_weight * lr_)
                stats.update(rl_loss=lr_.item(), reward=r.mean().item(), baseline=b.mean().item())
            if cfg.attr_weight:
                la = attr_loss(model.attribute_logits(feats).float(), batch["attrs"].to(device))
                terms.append(cfg.attr_weight * la)
                stats["attr_loss"] = la.item()
        loss = torch.stack(terms).sum()
        if self.world == 1:
            stats["loss"] = loss.item()
        return loss, stats


def reduce_stats(stats: dict[str, float], cfg: TrainConfig, sums: list[float], world: int) -> dict[str, float]:
    """The global batch's statistics from every rank's (`sums`: the element-wise sum over ranks of
    :func:`stat_vector`); in one process, `stats` as they are."""
    if world == 1:
        return stats
    keys = _stat_keys(stats)
    total = dict(zip(keys, sums, strict=True))
    out = {k: total[k] / world for k in keys if k not in ("xe_loss", "xe_tokens")}
    if "xe_loss" in stats:
        out["xe_loss"] = total["xe_loss"] / total["xe_tokens"]
    out["loss"] = (cfg.xe_weight * out.get("xe_loss", 0.0) + cfg.rl_weight * out.get("rl_loss", 0.0)
                   + cfg.attr_weight * out.get("attr_loss", 0.0))
    return {k: out[k] for k in ("xe_loss", "rl_loss", "reward", "baseline", "attr_loss", "loss") if k in out}


def _stat_keys(stats: dict[str, float]) -> list[str]:
    return sorted(k for k in stats if k != "loss")


def stat_vector(stats: dict[str, float]) -> list[float]:
    """This rank's statistics as numbers to sum over ranks (xe_loss weighted by its tokens)."""
    return [stats[k] * stats["xe_tokens"] if k == "xe_loss" else stats[k] for k in _stat_keys(stats)]
