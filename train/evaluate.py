"""`train eval`: decode a split with a checkpoint (greedy or beam), score it with evalkit (the four
paper metrics, METEOR included), write predictions JSON, metrics JSON and an HTML gallery."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evalkit.coco import score
from model.checkpoint import load_checkpoint
from pipeline.shards import iter_samples
from pipeline.vocab import decode
from train.data import DataInfo, ShardDataset, torch_loader
from train.report import gallery


@torch.no_grad()
def evaluate_checkpoint(ckpt_path: str, data: str, split: str = "test", beam: int = 3, out: str | None = None,
                        batch_size: int = 16, max_clips: int | None = None, gallery_clips: int = 40) -> dict:
    model, ckpt = load_checkpoint(ckpt_path)
    info = DataInfo.load(data)
    if ckpt["vocab"] != info.itos:
        raise ValueError(f"{ckpt_path}: its vocabulary differs from {data}/vocab.json")
    ds = ShardDataset(info, split, model.cfg.image_size, shuffle=False, max_clips=max_clips)
    preds, refs = {}, {}
    for batch in torch_loader(ds, batch_size, 0):
        feats = model.frame_features(batch["frames"])
        seqs = model.greedy(feats) if beam <= 1 else model.beam(feats, beam)
        for cid, s, caps in zip(batch["clip_id"], seqs.tolist(), batch["captions"], strict=True):
            preds[cid], refs[cid] = decode(s, info.itos), caps
    metrics = score(preds, refs)
    out_dir = Path(out) if out else Path(ckpt_path).parent / f"eval-{split}-beam{beam}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.json").write_text(json.dumps(preds, indent=1) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps({"split": split, "beam": beam, "checkpoint": str(ckpt_path),
                                                      "clips": len(preds), **metrics}, indent=1) + "\n")
    rows = []
    for url in info.urls(split):
        for s in iter_samples(url):
            cid = s["json"]["clip_id"]
            if cid in preds and len(rows) < gallery_clips:
                rows.append({"clip_id": cid, "jpegs": [s["frames"][k] for k in sorted(s["frames"])],
                             "prediction": preds[cid], "references": refs[cid]})
    gallery(out_dir / "gallery.html", rows, metrics, f"{Path(ckpt_path).name} on {split} (beam {beam})")
    return {"metrics": metrics, "dir": str(out_dir), "clips": len(preds)}
