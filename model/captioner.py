"""The paper's captioner, top to bottom: shared CNN over K frames -> FC -> S2VT two-layer LSTM,
plus the attribute head.

S2VT (Venugopalan et al. 2015) as the paper uses it: LSTM1 reads the K image embeddings, then
zeros while words are produced; LSTM2 reads LSTM1's output concatenated with the word embedding
(zeros while frames are read, then <bos> and the previous word). Because LSTM1's decoder-phase
input is always zero, its outputs for every decoder step depend only on the video: they are
computed once per clip, and the step-by-step decoders only run LSTM2 and the output layer.

Attribute head: temporal mean of the pooled CNN features -> Linear -> logits (sigmoid in the loss).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import create_backbone

PAD, BOS, EOS = 0, 1, 2


@dataclass
class ModelConfig:
    vocab_size: int
    backbone: str = "inception_resnet_v2"
    backbone_weights: str | None = None
    pretrained: bool = True
    image_size: int = 224
    n_frames: int = 5
    embed: int = 500  # image and word embeddings
    hidden: int = 1000
    dropout: float = 0.2
    # "independent": a fresh dropout mask per frame (the paper's S2VT); "shared": one mask for the K
    # frames of a clip, so frame-to-frame differences -- the motion -- pass through undistorted.
    frame_dropout: str = "independent"
    # Standardise the pooled CNN features with fixed training-set statistics before FC (the trainer
    # sets them at the start of stage 1); an affine map the FC could learn, but fast to optimise.
    feature_norm: bool = False
    # "none": S2VT reads each frame's features (the paper). "diff": it also reads each frame's
    # difference to the previous one through a second FC -- the cheap analogue of the optical-flow
    # stream of the original S2VT paper: motion as an input instead of something to infer.
    motion: str = "none"
    max_len: int = 35
    n_attributes: int = 400
    init_range: float = 0.1

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PRESETS: dict[str, dict] = {
    # The paper: Inception-ResNet-v2 at 224, FC 500, LSTM hidden 1000, embeddings 500, 400 attributes.
    "paper": dict(backbone="inception_resnet_v2", image_size=224, embed=500, hidden=1000, n_attributes=400),
    # What trains on a 2-core CPU in minutes: real ImageNet Lite0 at 112 px and a smaller LSTM
    # (Lite0@112: 42 ms forward / 141 ms train step per clip, vs ~1 s / ~3 s for IRv2@224).
    "cpu-small": dict(backbone="tf_efficientnet_lite0", image_size=112, embed=256, hidden=512, n_attributes=400),
    # Seconds-fast, for tests.
    "tiny": dict(backbone="tiny", pretrained=False, image_size=64, embed=32, hidden=64, n_attributes=16),
}


def make_config(preset: str, vocab_size: int, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return ModelConfig(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})


class Captioner(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone, self.backbone_info = create_backbone(cfg.backbone, cfg.backbone_weights, cfg.pretrained)
        d = self.backbone_info.feature_dim
        self.register_buffer("pixel_mean", torch.tensor(self.backbone_info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.backbone_info.std).view(1, 3, 1, 1), persistent=False)
        if cfg.frame_dropout not in ("independent", "shared"):
            raise ValueError(f"model.frame_dropout={cfg.frame_dropout!r}: must be independent or shared")
        if cfg.motion not in ("none", "diff"):
            raise ValueError(f"model.motion={cfg.motion!r}: must be none or diff")
        self.register_buffer("feat_mean", torch.zeros(d), persistent=cfg.feature_norm)
        self.register_buffer("feat_std", torch.ones(d), persistent=cfg.feature_norm)
        self.register_buffer("diff_std", torch.ones(d), persistent=cfg.feature_norm and cfg.motion == "diff")
        self.img_fc = nn.Linear(d, cfg.embed)
        self.motion_fc = nn.Linear(d, cfg.embed) if cfg.motion == "diff" else None
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.embed, padding_idx=PAD)
        self.lstm1 = nn.LSTM(cfg.embed, cfg.hidden, batch_first=True)
        self.lstm2 = nn.LSTM(cfg.hidden + cfg.embed, cfg.hidden, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)
        self.attr_head = nn.Linear(d, cfg.n_attributes)
        self.backbone_frozen = False
        self.bn_stats = False
        for module in (self.img_fc, self.motion_fc, self.word_emb, self.lstm1, self.lstm2, self.out, self.attr_head):
            for p in module.parameters() if module is not None else ():
                nn.init.uniform_(p, -cfg.init_range, cfg.init_range)

    # ---- backbone ---------------------------------------------------------------------------
    def freeze_backbone(self, frozen: bool = True, bn_stats: bool = False) -> None:
        """Frozen: no gradients and BatchNorm in eval mode even under model.train().

        Unfrozen with bn_stats=False (the default) trains every weight but keeps BatchNorm on its
        running statistics: 16 clips x 5 correlated frames make poor batch statistics, and
        switching a trained captioner's CNN to them at once shifts its features (measured on the
        built-in data: greedy CIDEr-D on training clips fell from 1.4 to 0.24 at the first step).
        """
        self.backbone_frozen = frozen
        self.bn_stats = bn_stats and not frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> Captioner:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        elif not self.bn_stats:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def frame_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) uint8 or float in [0, 1] -> pooled features (B, K, D); one CNN batch of B*K."""
        b, k = images.shape[:2]
        x = images.flatten(0, 1)
        dtype = self.pixel_mean.dtype
        x = x.to(dtype).div_(255) if x.dtype == torch.uint8 else x.to(dtype)
        x = (x - self.pixel_mean) / self.pixel_std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            feats = self.backbone(x)
        return feats.view(b, k, -1)

    # ---- encoder ----------------------------------------------------------------------------
    def set_feature_stats(self, feats: torch.Tensor) -> None:
        """Fix the standardisation from training features (N, K, D): per-dimension mean and std of
        the frames, and std of the frame-to-frame differences."""
        self.feat_mean.copy_(feats.mean((0, 1)))
        self.feat_std.copy_(feats.std((0, 1)).clamp_min(1e-4))
        self.diff_std.copy_((feats[:, 1:] - feats[:, :-1]).std((0, 1)).clamp_min(1e-4))

    def _normed(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.feat_mean) / self.feat_std if self.cfg.feature_norm else feats

    def attribute_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.attr_head(self._normed(feats).mean(1))

    def _frame_dropout(self, v: torch.Tensor) -> torch.Tensor:
        if self.cfg.frame_dropout == "independent" or not self.training or self.cfg.dropout == 0:
            return self.drop(v)
        keep = 1.0 - self.cfg.dropout
        return v * v.new_empty(v.shape[0], 1, v.shape[2]).bernoulli_(keep).div_(keep)

    def encode(self, feats: torch.Tensor, steps: int) -> tuple[torch.Tensor, tuple]:
        """Run the K encoder steps; return LSTM1's outputs for `steps` decoder steps and LSTM2's state."""
        b = feats.shape[0]
        v = self.img_fc(self._normed(feats))
        if self.motion_fc is not None:
            diff = torch.cat([torch.zeros_like(feats[:, :1]), feats[:, 1:] - feats[:, :-1]], 1)
            v = v + self.motion_fc(diff / self.diff_std if self.cfg.feature_norm else diff)
        v = self._frame_dropout(v)
        zeros_word = v.new_zeros(b, v.shape[1], self.cfg.embed)
        pad_frames = v.new_zeros(b, steps, self.cfg.embed)
        h1, _ = self.lstm1(torch.cat([v, pad_frames], 1))
        h1 = self.drop(h1)
        _, state2 = self.lstm2(torch.cat([h1[:, : v.shape[1]], zeros_word], 2))
        return h1[:, v.shape[1] :], state2

    def _step(self, h1_t: torch.Tensor, words: torch.Tensor, state2: tuple) -> tuple[torch.Tensor, tuple]:
        x = torch.cat([h1_t, self.drop(self.word_emb(words))], 1).unsqueeze(1)
        h2, state2 = self.lstm2(x, state2)
        return self._logprobs(h2.squeeze(1)), state2

    def _logprobs(self, h2: torch.Tensor) -> torch.Tensor:
        """Word log-probs; <pad> and <bos> are never produced."""
        logits = self.out(self.drop(h2))
        logits[..., PAD] = float("-inf")
        logits[..., BOS] = float("-inf")
        return F.log_softmax(logits, -1)

    # ---- decoders ---------------------------------------------------------------------------
    def forward(self, feats: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probs (B, T, V) for targets `captions` (B, T) (ending in <eos>, PAD after)."""
        b, t = captions.shape
        h1, state2 = self.encode(feats, t)
        words_in = torch.cat([captions.new_full((b, 1), BOS), captions[:, :-1]], 1)
        x = torch.cat([h1, self.drop(self.word_emb(words_in))], 2)
        h2, _ = self.lstm2(x, state2)
        return self._logprobs(h2)

    def _expand(self, feats: torch.Tensor, n: int, max_len: int) -> tuple[torch.Tensor, tuple]:
        h1, (h, c) = self.encode(feats, max_len)
        return h1.repeat_interleave(n, 0), (h.repeat_interleave(n, 1), c.repeat_interleave(n, 1))

    def sample(self, feats: torch.Tensor, n: int = 1, temperature: float = 1.0, greedy: bool = False,
               max_len: int | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """n sequences per clip (B*n, L) with per-token log-probs (B*n, L), PAD / 0 after <eos>.

        The video is encoded once and its states expanded n times. Rows b*n .. b*n+n-1 belong to clip b.
        """
        max_len = max_len or self.cfg.max_len
        h1, state2 = self._expand(feats, n, max_len)
        rows = h1.shape[0]
        words = h1.new_full((rows,), BOS, dtype=torch.long)
        done = torch.zeros(rows, dtype=torch.bool, device=h1.device)
        seqs, logps = [], []
        for t in range(max_len):
            logp, state2 = self._step(h1[:, t], words, state2)
            if greedy:
                words = logp.argmax(-1)
            else:
                probs = torch.softmax(logp.detach() / temperature, -1)
                words = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            chosen = logp.gather(1, words[:, None]).squeeze(1)
            words = words.masked_fill(done, PAD)
            seqs.append(words)
            logps.append(chosen.masked_fill(done, 0.0))
            done = done | (words == EOS)
            if bool(done.all()):
                break
        return torch.stack(seqs, 1), torch.stack(logps, 1)

    @torch.no_grad()
    def greedy(self, feats: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        return self.sample(feats, 1, greedy=True, max_len=max_len)[0]

    @torch.no_grad()
    def beam(self, feats: torch.Tensor, k: int = 3, max_len: int | None = None) -> torch.Tensor:
        """Batched beam search (sum of log-probs, no length norm); best sequence per clip (B, L)."""
        max_len = max_len or self.cfg.max_len
        b = feats.shape[0]
        h1, state2 = self._expand(feats, k, max_len)
        vocab = self.cfg.vocab_size
        score = feats.new_full((b, k), float("-inf"))
        score[:, 0] = 0.0  # all beams start identical: keep one
        words = h1.new_full((b * k,), BOS, dtype=torch.long)
        done = torch.zeros(b * k, dtype=torch.bool, device=h1.device)
        seqs = h1.new_zeros((b * k, 0), dtype=torch.long)
        for t in range(max_len):
            logp, state2 = self._step(h1[:, t], words, state2)
            # A finished beam can only extend with PAD at no cost, so it keeps its score.
            finished = torch.full_like(logp, float("-inf"))
            finished[:, PAD] = 0.0
            logp = torch.where(done[:, None], finished, logp)
            cand = (score.view(-1, 1) + logp).view(b, k * vocab)
            score, idx = cand.topk(k, 1)
            src = (idx // vocab + torch.arange(b, device=idx.device)[:, None] * k).view(-1)
            words = (idx % vocab).view(-1)
            seqs = torch.cat([seqs[src], words[:, None]], 1)
            state2 = (state2[0][:, src], state2[1][:, src])
            done = done[src] | (words == EOS) | (words == PAD)
            if bool(done.all()):
                break
        best = score.argmax(1) + torch.arange(b, device=score.device) * k
        return seqs[best]

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        cnn = sum(p.numel() for p in self.backbone.parameters())
        return {"total": total, "backbone": cnn, "captioner": total - cnn}

    def config_dict(self) -> dict:
        return asdict(self.cfg)
