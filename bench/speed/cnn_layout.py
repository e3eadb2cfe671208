"""Benchmark: the CNN's memory layout and BatchNorm folding (model/base.py, model/fold.py).

The captioner keeps its CNN in NHWC (`channels_last`) and runs passes that train no CNN weight
through a copy with its BatchNorms folded into the convolutions. This measures both against the
NCHW, unfolded CNN they replaced, on the same input in the same run: the CNN's forward under
no_grad (the feature cache, `train eval`, `train robustness`, `train probe`, `caption`) and its
forward + backward in train mode (stage 3). The variants are interleaved and each timing is the
best of --repeats; the outputs must agree to float rounding.

Usage: python -m bench.speed.cnn_layout [--backbone tf_efficientnet_lite0] [--size 160] [--images 160]
                                  [--repeats 3] [--out bench/speed/cnn_layout_report.json]
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.common import best_of, report_path, write_report
from vidcap.model import create_backbone
from vidcap.model.fold import fold_batchnorm


def main() -> None:
    p = argparse.ArgumentParser(description="NCHW vs NHWC vs NHWC + folded BatchNorms for the CNN")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=160, help="frame side (cpu-small: 160)")
    p.add_argument("--images", type=int, default=160, help="images per batch (32 clips x 5 frames)")
    p.add_argument("--train-images", type=int, default=80, help="images per forward + backward (16 clips)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(report_path(__file__)))
    a = p.parse_args()
    torch.manual_seed(0)
    nhwc, info = create_backbone(a.backbone)
    nhwc = nhwc.to(memory_format=torch.channels_last).eval()
    nchw = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format)
    x = torch.randn(a.images, 3, a.size, a.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(nhwc, x_cl[:2])
    assert folded is not None, f"{a.backbone}: nothing to fold"
    forward = {"nchw": lambda: nchw(x), "nhwc": lambda: nhwc(x_cl), "nhwc_folded": lambda: folded(x_cl)}
    with torch.no_grad():
        ref = nchw(x)
        gap = {k: float((f() - ref).abs().max() / ref.abs().max()) for k, f in forward.items()}
        best = {k: float("inf") for k in forward}
        for _ in range(a.repeats):  # interleaved: drift in the machine's speed hits every variant alike
            for k, f in forward.items():
                best[k] = min(best[k], best_of(f, 1))
    xt, xt_cl = x[: a.train_images], x_cl[: a.train_images]

    def train_step(cnn: torch.nn.Module, inp: torch.Tensor):
        return lambda: cnn(inp).square().mean().backward()

    for cnn in (nchw, nhwc):  # as in stage 3: the CNN trains, its BatchNorms stay on running statistics
        cnn.train()
        for m in cnn.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    train = {"nchw": train_step(nchw, xt), "nhwc": train_step(nhwc, xt_cl)}
    best_train = {k: float("inf") for k in train}
    for _ in range(a.repeats):
        for k, f in train.items():
            best_train[k] = min(best_train[k], best_of(f, 1))
    report = {
        "backbone": a.backbone, "size": a.size, "images": a.images, "train_images": a.train_images,
        "threads": torch.get_num_threads(), "weights": info.weights,
        "forward_no_grad_s": {k: round(v, 3) for k, v in best.items()},
        "forward_speedup_vs_nchw": {k: round(best["nchw"] / v, 2) for k, v in best.items()},
        "max_relative_gap_vs_nchw": {k: float(f"{v:.1e}") for k, v in gap.items()},
        "forward_backward_s": {k: round(v, 3) for k, v in best_train.items()},
        "forward_backward_speedup_nhwc": round(best_train["nchw"] / best_train["nhwc"], 2),
    }
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
