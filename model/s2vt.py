"""The paper's captioner (``model.arch=s2vt``, the default), top to bottom: shared CNN over K
frames -> FC -> S2VT two-layer LSTM, plus the attribute head. What every architecture shares -- the
CNN and its preprocessing, the attribute head's input, freezing, the decoders -- is model/base.py;
this file is S2VT's layers and its step interface (encode once, one word per step).

S2VT (Venugopalan et al. 2015) as the paper uses it: LSTM1 reads the K image embeddings, then
zeros while words are produced; LSTM2 reads LSTM1's output concatenated with the word embedding
(zeros while frames are read, then <bos> and the previous word). Because LSTM1's decoder-phase
input is always zero, its outputs for every decoder step depend only on the video: they are
computed once per clip, and the step-by-step decoders only run LSTM2 and the output layer.

Attribute head: temporal mean of the pooled CNN features -> Linear -> logits (sigmoid in the loss).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vidcap.model.base import CaptionConfig, VideoCaptioner
from vidcap.model.decoding import word_logprobs
from vidcap.model.registry import register_model
from vidcap.tokens import BOS, PAD

__all__ = ["PRESETS", "S2VTCaptioner", "ModelConfig"]


# False: the LSTMs' training passes use oneDNN's RNN kernel on the CPU, as before (bench/experiments/memory.py's
# "before" column).
LEAN_RNN = True


@contextmanager
def lean_rnn(x: torch.Tensor) -> Iterator[None]:
    """The LSTMs' training passes on the CPU without oneDNN's RNN kernel, whose workspace kept for
    backward is large: a sampled caption's step keeps 42,400 floats per row with it, 12,100 without
    (the paper's sizes, the chosen words' log-probs only; bench/experiments/memory.py's accounting) -- at stage
    2's 2,048 rows x 35 steps, 11.9 GB against 3.4 GB -- at the same speed (512 rows, one step forward +
    backward: 1.11 s / 1.13 s on 2 cores). Passes without gradients (greedy, beam search, features)
    keep oneDNN."""
    if not (LEAN_RNN and torch.is_grad_enabled() and x.device.type == "cpu" and torch.backends.mkldnn.is_available()):
        yield
        return
    before = torch.backends.mkldnn.set_flags(False, None, None, None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(before[0], None, None, None)


@dataclass
class ModelConfig(CaptionConfig):
    """S2VT's config (the shared settings -- backbone, frames, attributes -- are CaptionConfig's)."""

    arch: str = "s2vt"
    embed: int = 500  # image and word embeddings
    hidden: int = 1000
    dropout: float = 0.2
    # "independent": a fresh dropout mask per frame (the paper's S2VT); "shared": one mask for the K
    # frames of a clip, so frame-to-frame differences -- the motion -- pass through undistorted.
    frame_dropout: str = "independent"
    # "none": S2VT reads each frame's features (the paper). "diff": it also reads each frame's
    # difference to the previous one through a second FC -- the cheap analogue of the optical-flow
    # stream of the original S2VT paper: motion as an input instead of something to infer.
    motion: str = "none"
    init_range: float = 0.1


PRESETS: dict[str, dict] = {
    # The paper: Inception-ResNet-v2 at 224, FC 500, LSTM hidden 1000, embeddings 500, 400 attributes.
    "paper": dict(backbone="inception_resnet_v2", image_size=224, embed=500, hidden=1000, n_attributes=400),
    # What trains on a 2-core CPU in minutes: real ImageNet Lite0 at 160 px and a smaller LSTM
    # (Lite0@112: 42 ms forward / 141 ms train step per clip, about twice that at 160, vs ~1 s / ~3 s
    # for IRv2@224). Plus what makes it see what happens on the built-in data (issue 9; each an option
    # the ablation can switch off): a 2x2 grid of pooled features (global pooling hides left from
    # right) and the moving region's features from the stride-8/16 maps ("focus": which object moves
    # and what it looks like), standardised features, frame differences as a second input, one
    # dropout mask per clip.
    # Issue 20 (real footage): the camera undone before the motion cues -- exposure matched, camera
    # shift and zoom compensated, focus pooling weighed by the robust saliency -- and where the moving
    # thing is in each frame as 5 more numbers (track; model/camera.py); and no scene block (the 2x2
    # grid of the last map: 5,120 numbers of background that 840 training clips overfit), so a frame
    # is what moves: its focus features over the clip's saliency and over each frame's own foreground,
    # and its track (152 + 152 + 5 numbers).
    "cpu-small": dict(backbone="tf_efficientnet_lite0", image_size=160, embed=256, hidden=512, n_attributes=400,
                      feature_norm=True, motion="diff", frame_dropout="shared", features="focus",
                      features_config=dict(exposure="gain", stabilize="similarity", saliency="robust", track=True,
                                           scene=False, frame_focus=True)),
    # Seconds-fast, for tests.
    "tiny": dict(backbone="tiny", pretrained=False, image_size=64, embed=32, hidden=64, n_attributes=16),
}


@register_model("s2vt", ModelConfig, PRESETS)
class S2VTCaptioner(VideoCaptioner):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = self.feature_dim
        if cfg.frame_dropout not in ("independent", "shared"):
            raise ValueError(f"model.frame_dropout={cfg.frame_dropout!r}: must be independent or shared")
        if cfg.motion not in ("none", "diff"):
            raise ValueError(f"model.motion={cfg.motion!r}: must be none or diff")
        self.register_buffer("diff_std", torch.ones(d), persistent=cfg.feature_norm and cfg.motion == "diff")
        self.img_fc = nn.Linear(d, cfg.embed)
        self.motion_fc = nn.Linear(d, cfg.embed) if cfg.motion == "diff" else None
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.embed, padding_idx=PAD)
        self.lstm1 = nn.LSTM(cfg.embed, cfg.hidden, batch_first=True)
        self.lstm2 = nn.LSTM(cfg.hidden + cfg.embed, cfg.hidden, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)
        self.attr_head = nn.Linear(d, cfg.n_attributes)
        for module in (self.img_fc, self.motion_fc, self.word_emb, self.lstm1, self.lstm2, self.out, self.attr_head):
            for p in module.parameters() if module is not None else ():
                nn.init.uniform_(p, -cfg.init_range, cfg.init_range)

    # ---- encoder ----------------------------------------------------------------------------
    def set_feature_stats(self, feats: torch.Tensor) -> None:
        """Fix the standardisation from training features (N, K, D): per-dimension mean and std of
        the frames, and std of the frame-to-frame differences."""
        super().set_feature_stats(feats)
        floor = self.frames.std_floor().to(feats.device)
        self.diff_std.copy_(torch.maximum((feats[:, 1:] - feats[:, :-1]).std((0, 1)), floor) * self.block_balance())

    def _frame_dropout(self, v: torch.Tensor) -> torch.Tensor:
        if self.cfg.frame_dropout == "independent" or not self.training or self.cfg.dropout == 0:
            return self.drop(v)
        keep = 1.0 - self.cfg.dropout
        return v * v.new_empty(v.shape[0], 1, v.shape[2]).bernoulli_(keep).div_(keep)

    def encode(self, feats: torch.Tensor, steps: int) -> tuple[torch.Tensor, tuple]:
        """Run the K encoder steps; the state: LSTM1's outputs for `steps` decoder steps and LSTM2's state."""
        b = feats.shape[0]
        v = self.img_fc(self._normed(feats))
        if self.motion_fc is not None:
            diff = torch.cat([torch.zeros_like(feats[:, :1]), feats[:, 1:] - feats[:, :-1]], 1)
            v = v + self.motion_fc(diff / self.diff_std if self.cfg.feature_norm else diff)
        v = self._frame_dropout(v)
        zeros_word = v.new_zeros(b, v.shape[1], self.cfg.embed)
        pad_frames = v.new_zeros(b, steps, self.cfg.embed)
        with lean_rnn(v):
            h1, _ = self.lstm1(torch.cat([v, pad_frames], 1))
            h1 = self.drop(h1)
            _, state2 = self.lstm2(torch.cat([h1[:, : v.shape[1]], zeros_word], 2))
        return h1[:, v.shape[1] :], state2

    def step(self, state: tuple, words: torch.Tensor, t: int) -> tuple[torch.Tensor, tuple]:
        """One word: LSTM2 reads LSTM1's output for step t and the previous word's embedding."""
        h, state = self.step_hidden(state, words, t)
        return word_logprobs(self.out(h)), state

    def step_hidden(self, state: tuple, words: torch.Tensor, t: int) -> tuple[torch.Tensor, tuple]:
        """``step`` before its vocabulary layer: the input of ``self.out`` (dropout applied), so that
        sampling with gradients keeps this instead of the distribution (model/decoding.py)."""
        h1, state2 = state
        x = torch.cat([h1[:, t], self.drop(self.word_emb(words))], 1).unsqueeze(1)
        with lean_rnn(x):
            h2, state2 = self.lstm2(x, state2)
        return self.drop(h2.squeeze(1)), (h1, state2)

    def reorder(self, state: tuple, index: torch.Tensor) -> tuple:
        h1, (h, c) = state
        return h1.index_select(0, index), (h.index_select(1, index), c.index_select(1, index))

    # ---- teacher forcing ----------------------------------------------------------------------
    def forward(self, feats: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probs (B, T, V) for targets `captions` (B, T) (ending in <eos>, PAD after)."""
        return word_logprobs(self.out(self.forward_hidden(feats, captions)))

    def forward_hidden(self, feats: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """``forward`` before its vocabulary layer (B, T, hidden), dropout applied: accumulated
        REINFORCE keeps this for backward instead of the distribution (decoding.chosen_logprobs)."""
        b, t = captions.shape
        h1, state2 = self.encode(feats, t)
        words_in = torch.cat([captions.new_full((b, 1), BOS), captions[:, :-1]], 1)
        x = torch.cat([h1, self.drop(self.word_emb(words_in))], 2)
        with lean_rnn(x):
            h2, _ = self.lstm2(x, state2)
        return self.drop(h2)
