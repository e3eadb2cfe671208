"""Another model from vidcap's shards: an action classifier for the built-in dataset (`pipeline
synth`) that sees the first frame and the frame-to-frame differences, trained on the train split and
scored on the test split. Labels: `objects[0].action` of each sample's json. Needs only torch,
webdataset and the standard library, and the shard contract (docs/shards.md) -- not vidcap itself.

Usage: python examples/action_from_shards.py DATA [--epochs 40] [--side 32] [--seed 0]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import webdataset as wds
from torch import nn


def load(data: Path, split: str, side: int) -> tuple[torch.Tensor, list[str]]:
    """(N, K, side, side) grey inputs -- frame 0, then K-1 differences -- and each clip's action."""
    manifest = json.loads((data / "shards" / f"manifest-{split}.json").read_text())
    if manifest.get("format_version", "1.0").split(".")[0] != "1":
        sys.exit(f"{data}: shard format {manifest['format_version']}; this example reads 1.x")
    urls = [str(data / "shards" / s["name"]) for s in manifest["shards"] if s["samples"]]
    xs, ys = [], []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("torchrgb"):
        if not sample["json"].get("objects"):
            sys.exit(f"{data}: samples without `objects`: this example needs the built-in dataset")
        frames = torch.stack([sample[f"{i}.jpg"] for i in range(manifest["frames"])])  # (K, 3, S, S) in [0, 1]
        grey = F.interpolate(frames, size=(side, side), mode="area").mean(1)
        xs.append(torch.cat([grey[:1], grey[1:] - grey[:-1]]))
        ys.append(sample["json"]["objects"][0]["action"])
    return torch.stack(xs), ys


def main() -> None:
    p = argparse.ArgumentParser(description="train an action classifier on frame differences from vidcap shards")
    p.add_argument("data", type=Path, help="a `pipeline build` output of the built-in dataset")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--side", type=int, default=32, help="frames are averaged down to side x side grey")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    x, labels = load(a.data, "train", a.side)
    xt, test_labels = load(a.data, "test", a.side)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(c) for c in labels])
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True) + 1e-6
    net = nn.Sequential(nn.Conv2d(x.shape[1], 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(0.2), nn.Linear(64, len(classes)))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(a.epochs):
        net.train()
        for idx in torch.randperm(len(y)).split(32):
            loss = F.cross_entropy(net((x[idx] - mean) / std), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = [classes[i] for i in net((xt - mean) / std).argmax(1).tolist()]
    acc = sum(p == t for p, t in zip(pred, test_labels, strict=True)) / len(test_labels)
    print(f"action accuracy on test: {acc:.3f} ({len(test_labels)} clips, {len(classes)} actions in train, "
          f"chance {1 / len(classes):.3f})")


if __name__ == "__main__":
    main()
