"""`train probe`: what do a checkpoint's CNN features know? A linear probe (multinomial logistic
regression, L2, fitted with L-BFGS on standardised features of the train split) reads each
ground-truth slot of the built-in dataset -- action, colour, shape -- from the pooled frame
features, and is scored on another split.

Two views of the K frames: ``mean`` (their temporal mean: appearance, what the attribute head sees)
and ``first+diffs`` (the first frame and each later frame's difference to it: motion). Probing the
checkpoint before and after the end-to-end stage shows whether training the CNN changed what its
features carry -- the paper's central claim, measured instead of assumed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vidcap.errors import UserError
from vidcap.grammar import ACTIONS, COLOUR_NAMES, SHAPES
from vidcap.model.checkpoint import load_checkpoint
from vidcap.shards.layout import DataInfo
from vidcap.shards.reader import checked_samples
from vidcap.train.data import SplitStream, torch_loader
from vidcap.train.features import chunks, feature_cache_path
from vidcap.train.run_folder import RunFolder

SLOT_LABELS = {"action": ACTIONS, "colour": COLOUR_NAMES, "shape": SHAPES}
VIEWS = {
    "mean": lambda f: f.mean(1),
    "first+diffs": lambda f: torch.cat([f[:, 0], (f[:, 1:] - f[:, :1]).flatten(1)], 1),
}


@torch.no_grad()
def split_features(model, info: DataInfo, split: str, batch_size: int = 32) -> tuple[torch.Tensor, list[dict]]:
    """Pooled CNN features (N, K, D) of a split and each clip's main object."""
    feats, objects = [], []
    for batch in torch_loader(SplitStream(info, split), model.cfg.image_size, batch_size, 0):
        if not all(batch["objects"]):
            raise UserError(f"{info.root}: split {split!r} has clips without ground-truth objects; "
                             "`train probe` needs the built-in dataset (pipeline synth)")
        feats.append(model.frame_features(batch["frames"]).float())
        objects += [o[0] for o in batch["objects"]]
    return torch.cat(feats), objects


def _split_objects(info: DataInfo, split: str) -> dict[str, dict]:
    """Each clip's main object from the shards' json, without decoding a frame."""
    stream = SplitStream(info, split)
    return {smp["json"]["clip_id"]: (smp["json"].get("objects") or [None])[0]
            for smp in checked_samples(stream.slices, info.build.store, info.expect)}


def cached_split_features(model, info: DataInfo, split: str, features_dir: Path | None
                          ) -> tuple[torch.Tensor, list[dict]] | None:
    """The split's features from a training run's feature cache (RUN/features/, train/features.py),
    when it holds this CNN's -- stage 2's checkpoint has stage 1's frozen CNN, so its train split is
    there -- else None. The cache's key covers the CNN's weights, its input and the shards."""
    if features_dir is None:
        return None
    path = feature_cache_path(model, info, split, model.cfg.image_size, None, features_dir)
    try:
        d = torch.load(path, weights_only=True)
        feats, ids = d["feats"], list(d["clip_ids"])
    except Exception:  # absent or unreadable: computed instead, never trusted
        return None
    objects = _split_objects(info, split)
    if sorted(objects) != sorted(ids) or not all(objects.values()):
        return None
    with torch.no_grad():  # what a learned frame-features entry makes of its cached maps
        parts = [model.features_from_cache(c).float() for c in chunks(feats, 256)]
        feats = torch.cat(parts) if parts else torch.zeros(0)
    return feats, [objects[c] for c in ids]


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, iters: int = 300
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, bias and the standardisation (mean, std) of a logistic-regression probe."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    z = z.double()
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mu, sd


def probe_accuracy(train: tuple[torch.Tensor, list[dict]], test: tuple[torch.Tensor, list[dict]]) -> dict:
    """{slot: {view: accuracy}} of probes fitted on `train` and scored on `test`."""
    out: dict[str, dict[str, float]] = {}
    for slot, labels in SLOT_LABELS.items():
        ytr = torch.tensor([labels.index(o[slot]) for o in train[1]])
        yte = torch.tensor([labels.index(o[slot]) for o in test[1]])
        out[slot] = {}
        for view, fn in VIEWS.items():
            w, b, mu, sd = fit_probe(fn(train[0]), ytr, len(labels))
            pred = (((fn(test[0]) - mu) / sd).double() @ w + b).argmax(1)
            out[slot][view] = float((pred == yte).float().mean())
    return out


def probe_checkpoint(ckpt: str, data: str, split: str = "val", features_dir: str | Path | None = "auto") -> dict:
    """Probe accuracies of `ckpt`'s CNN on `split`. features_dir "auto": the run's feature cache
    beside a RUN/stageN/ checkpoint (RUN/features/), where a split's features are read instead of
    computed when the cache holds this CNN's (the same numbers, ~0.14 s per clip saved); None: always compute."""
    model, _ = load_checkpoint(ckpt)
    model.eval()
    info = DataInfo.load(data)
    if features_dir == "auto":
        features_dir = RunFolder(Path(ckpt).resolve().parent.parent).features
    features_dir = Path(features_dir) if features_dir is not None else None

    def features(name: str) -> tuple[torch.Tensor, list[dict]]:
        return cached_split_features(model, info, name, features_dir) or split_features(model, info, name)

    return probe_accuracy(features("train"), features(split))


def format_probes(results: dict[str, dict], split: str) -> str:
    """A table: one row per checkpoint, one column per slot x view (accuracy on `split`, %)."""
    cols = [(slot, view) for slot in SLOT_LABELS for view in VIEWS]
    head = f"{'checkpoint':<40}" + "".join(f"{slot + ' ' + view:>20}" for slot, view in cols)
    lines = [f"linear probes of the CNN features, fitted on train, accuracy on {split} (%)", head]
    for name, r in results.items():
        lines.append(f"{name[-40:]:<40}" + "".join(f"{100 * r[s][v]:>20.1f}" for s, v in cols))
    return "\n".join(lines)
