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

Memory (docs/training.md "Memory"): ``grad_checkpoint=true`` recomputes the CNN's blocks in
backward (model/backbones.set_grad_checkpointing); ``accumulate=N`` is :meth:`RecipeLoss.accumulate`:
the batch's M samples per clip, their rewards and each clip's greedy baseline are drawn once, for
the whole batch and without a graph -- the same draws as the plain step's -- then N micro-batches
of clips each recompute their part of the loss with a graph (CNN features, the samples'
log-probs teacher-forced, the attribute logits) and run its backward, each term weighted by its
share of the batch (clips; target tokens for cross-entropy), so the gradients add up to the plain
step's. With dropout on, a micro-batch's log-probs are taken under fresh dropout masks (the
plain step differentiates the sampling pass's own), so the two agree in expectation; with
dropout off, to float rounding (tests/test_memory_options.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vidcap.errors import UserError
from vidcap.model import decoding
from vidcap.model.backbones import set_grad_checkpointing
from vidcap.model.s2vt import S2VTCaptioner
from vidcap.train.config import TrainConfig
from vidcap.train.data import caption_batch, pick_captions
from vidcap.train.features import take, to_device
from vidcap.train.losses import attr_loss, rl_loss, xe_loss
from vidcap.train.reward import RewardFn, sample_rewards


class RecipeLoss(nn.Module):
    def __init__(self, model: S2VTCaptioner, cfg: TrainConfig, stoi: dict[str, int], reward: RewardFn | None,
                 world: int = 1):
        super().__init__()
        self.model, self.cfg, self.stoi, self.reward, self.world = model, cfg, stoi, reward, world
        if cfg.accumulate > 1 and world > 1:
            raise UserError(f"accumulate={cfg.accumulate} runs in one process; under torchrun each process's "
                            "batch is already a part of the global batch (lower batch_size instead)")
        set_grad_checkpointing(model.backbone, cfg.grad_checkpoint)

    def features(self, batch: dict) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if "feats" in batch:
            return self.model.features_from_cache(to_device(batch["feats"], device))
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


    def accumulate(self, batch: dict, epoch: int) -> dict[str, float]:
        """The plain step's loss in cfg.accumulate micro-batches, each one's backward run here (gradients
        add up in .grad; the caller zeroes them before and steps after); the step's statistics."""
        cfg, model = self.cfg, self.model
        device = next(model.parameters()).device
        n = len(batch["clip_id"])
        parts = [p for p in np.array_split(np.arange(n), cfg.accumulate) if len(p)]
        micro = [_sub_batch(batch, p) for p in parts]
        stats: dict[str, float] = {}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            if cfg.rl_weight:  # the whole batch's draws, as the plain step makes them
                feats = torch.cat([self._features_without_graph(m) for m in micro])
                with torch.no_grad():
                    seqs, _, rewards, base = sample_rewards(model, feats, batch["clip_id"], cfg.samples,
                                                            cfg.temperature, self.reward, cfg.baseline)
                del feats
                r = torch.from_numpy(rewards).float().to(device)
                b = torch.from_numpy(base).float().to(device)
                stats.update(rl_loss=0.0, reward=r.mean().item(), baseline=b.mean().item())
            if cfg.xe_weight:
                targets = [self._targets(m, epoch).to(device) for m in micro]
                tokens = sum(int((t != 0).sum()) for t in targets)
                stats["xe_loss"] = 0.0
            if cfg.attr_weight:
                stats["attr_loss"] = 0.0
        for i, (part, m) in enumerate(zip(parts, micro, strict=True)):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                share = len(part) / n
                feats = self.features(m)
                terms = []
                if cfg.xe_weight:
                    k = cfg.captions_per_clip
                    lx = xe_loss(model(feats.repeat_interleave(k, 0), targets[i]).float(), targets[i])
                    w = int((targets[i] != 0).sum()) / max(tokens, 1)
                    stats["xe_loss"] += lx.item() * w
                    terms.append(cfg.xe_weight * w * lx)
                if cfg.rl_weight:
                    rows = torch.from_numpy(np.concatenate([np.arange(j * cfg.samples, (j + 1) * cfg.samples)
                                                            for j in part])).to(device)
                    s_i = seqs[rows]
                    lp = decoding.chosen_logprobs(model, feats.repeat_interleave(cfg.samples, 0), s_i)
                    lr_ = rl_loss(lp.float(), s_i, r[rows], b[rows])
                    stats["rl_loss"] += lr_.item() * share
                    terms.append(cfg.rl_weight * share * lr_)
                if cfg.attr_weight:
                    la = attr_loss(model.attribute_logits(feats).float(), m["attrs"].to(device))
                    stats["attr_loss"] += la.item() * share
                    terms.append(cfg.attr_weight * share * la)
            torch.stack(terms).sum().backward()  # outside autocast, as the plain step's backward
        stats["loss"] = (cfg.xe_weight * stats.get("xe_loss", 0.0) + cfg.rl_weight * stats.get("rl_loss", 0.0)
                         + cfg.attr_weight * stats.get("attr_loss", 0.0))
        return stats

    def _features_without_graph(self, batch: dict) -> torch.Tensor:
        """A micro-batch's features as the graph-building pass computes them (the trained CNN, not the
        BatchNorm-folded inference copy), with its graph dropped at once."""
        with torch.enable_grad():
            return self.features(batch).detach()

    def _targets(self, batch: dict, epoch: int) -> torch.Tensor:
        n = self.cfg.captions_per_clip
        caps = [c for cs, i in zip(batch["captions"], batch["clip_id"], strict=True)
                for c in pick_captions(cs, n, self.cfg.seed, epoch, i)]
        return caption_batch(caps, self.stoi, self.model.cfg.max_len)


def _sub_batch(batch: dict, index: np.ndarray) -> dict:
    """The clips `index` of a batch (tensors and lists alike)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor | dict):  # a dict: the cached frames and trunk maps (trunk_blocks)
            out[k] = take(v, torch.from_numpy(index))
        elif isinstance(v, list | tuple):
            out[k] = [v[j] for j in index]
        else:
            out[k] = v
    return out


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
