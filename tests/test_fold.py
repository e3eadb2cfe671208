"""model/fold.py: the BatchNorm-folded inference copy of the CNN gives the same features as the CNN,
folds every BatchNorm of every registered backbone, follows the CNN's weights as they train, and is
never used where the CNN learns (a gradient, or BatchNorms on batch statistics)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidcap.model import BACKBONES, create_backbone, create_model, make_config
from vidcap.model.fold import FoldedCNN, fold_batchnorm
from vidcap.tokens import SPECIALS

VOCAB = [*SPECIALS, *(f"w{i}" for i in range(16))]


def _with_running_stats(cnn: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine weights (a fresh init has mean 0, var 1: folding
    those would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in cnn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return cnn.eval()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_folds_all_its_batchnorms_and_gives_the_same_features(name):
    torch.manual_seed(0)
    cnn, info = create_backbone(name, pretrained=False)
    cnn = _with_running_stats(cnn.to(memory_format=torch.channels_last))
    size = max(info.input_size // 2, 96) if name != "tiny" else 64
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(cnn, x[:2])
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    if n_bn == 0:
        assert folded is None
        return
    assert folded is not None and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        want, got = cnn(x), folded(x)
    assert (want - got).abs().max() <= 1e-4 * want.abs().max()


def test_the_captioner_runs_the_folded_copy_and_follows_its_weights():
    torch.manual_seed(0)
    m = create_model(make_config("tiny", len(VOCAB), backbone="tf_efficientnet_lite0", image_size=64))
    _with_running_stats(m.backbone)
    m.eval()
    frames = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    x = ((frames.flatten(0, 1) / 255 - m.pixel_mean) / m.pixel_std).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = m.frame_features(frames)
        copy1 = m._folded._folded
        assert copy1 is not None and torch.allclose(first, m.backbone(x).view(2, 2, -1), atol=1e-4)
        assert m.frame_features(frames) is not None and m._folded._folded is copy1  # unchanged weights: reused
        m.backbone.conv_stem.weight.mul_(1.5)  # what an optimiser step or load_state_dict does: in place
        second = m.frame_features(frames)
        assert m._folded._folded is not copy1
        assert torch.allclose(second, m.backbone(x).view(2, 2, -1), atol=1e-4) and not torch.allclose(first, second)


def test_a_learning_cnn_never_runs_the_folded_copy():
    torch.manual_seed(0)
    m = create_model(make_config("tiny", len(VOCAB), backbone="tf_efficientnet_lite0", image_size=64, pool="avg"))
    frames = torch.randint(0, 256, (2, 2, 3, 64, 64), dtype=torch.uint8)
    m.eval()
    m.frame_features(frames).sum().backward()  # grad enabled, CNN not frozen: the CNN itself, with gradients
    assert m.backbone.conv_stem.weight.grad is not None and m._folded._folded is None
    m.backbone.train()  # BatchNorms on batch statistics: folding would be wrong
    assert not FoldedCNN.usable(m.backbone)
    with torch.no_grad():
        m.frame_features(frames)
    assert m._folded._folded is None


class _NormBeforeConv(nn.Module):
    """Children in the order conv, bn; data flows bn -> conv: neighbours, and not a conv + BN pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_network_whose_child_order_is_not_its_data_flow_runs_unfolded():
    torch.manual_seed(0)
    net = _with_running_stats(_NormBeforeConv())
    with pytest.warns(UserWarning, match="running it unfolded"):
        assert fold_batchnorm(net, torch.randn(2, 4, 8, 8)) is None
    with pytest.warns(UserWarning, match="running it unfolded"):
        assert FoldedCNN().get(net, torch.randn(2, 4, 8, 8)) is net
