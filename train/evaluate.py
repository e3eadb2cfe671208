"""`train eval`: decode a split with a checkpoint (greedy or beam), score it with evalkit (the four
paper metrics, METEOR included), and -- where the shards carry ground truth (the built-in dataset)
-- check what the captions say against it: per-slot accuracy of the main object and the action
confusion matrix. Also the attribute head's mAP. Writes predictions.json ({clip id: caption}),
metrics.json, action_confusion.{json,png}, gallery.html, and the numbers to the stage's TensorBoard.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch

from vidcap.atomic import write_bytes_atomic, write_json_atomic
from vidcap.evalkit.coco import Scorer, score
from vidcap.evalkit.grounding import (
    attribute_map,
    clip_groups,
    error_sources,
    grouped_accuracy,
    parse_caption,
    per_clip_correct,
    slot_accuracy,
)
from vidcap.evalkit.metric_names import SLOTS, label
from vidcap.model import decoding
from vidcap.model.folder import load_model
from vidcap.shards.layout import DataInfo
from vidcap.shards.reader import checked_samples
from vidcap.tokens import decode
from vidcap.train import run_folder as rf
from vidcap.train.data import SplitStream, torch_loader
from vidcap.train.evidence import contact_sheet, evidence_strip, occlusion_maps, png_bytes, word_positions
from vidcap.train.report import gallery, plot_confusion, write_scalars

GROUNDED_KEYS = (*SLOTS, "size_named")  # the slot accuracies, and how many captions named a size


@torch.no_grad()
def evaluate_checkpoint(ckpt_path: str | None, data: str, split: str = "test", beam: int = 3, out: str | None = None,
                        batch_size: int = 16, max_clips: int | None = None, gallery_clips: int = 40,
                        meteor: bool = True, scorer: Scorer | None = None, model_dir: str | None = None,
                        evidence: int = 0) -> dict:
    """Decode `split` with the checkpoint (or the model folder `model_dir`) and score it; `scorer` (an
    open evalkit Scorer) saves the METEOR start-up when many checkpoints are evaluated in a row
    (`train ablate`). Outputs go beside the checkpoint, or into the model folder. `evidence`: occlusion
    maps of the first N clips with a wrong slot (train/evidence.py), in the gallery and evidence.png."""
    model, ckpt = load_model(ckpt_path, model_dir)
    source = ckpt["source"]
    home = Path(model_dir) if model_dir else Path(source).parent
    info = DataInfo.load(data)  # any build: the captions are decoded with the model's own vocabulary
    stream = SplitStream(info, split, max_clips=max_clips)
    preds, refs, objects, nuisances, attr_scores, attr_labels = {}, {}, {}, {}, [], []
    wrong: list[tuple[str, torch.Tensor, list[int], list[str]]] = []  # (clip, frames, caption ids, wrong slots)
    for batch in torch_loader(stream, model.cfg.image_size, batch_size, 0):
        feats = model.frame_features(batch["frames"])
        seqs = decoding.decode(model, feats, beam)
        attr_scores.append(model.attribute_logits(feats).float())
        attr_labels.append(batch["attrs"])
        for n, (cid, s, caps, objs, nuis) in enumerate(zip(batch["clip_id"], seqs.tolist(), batch["captions"],
                                                           batch["objects"], batch["nuisances"], strict=True)):
            preds[cid], refs[cid] = decode(s, ckpt["vocab"]), caps
            if objs:
                objects[cid], nuisances[cid] = objs, nuis
                if len(wrong) < evidence:  # --evidence: keep the first wrong clips' frames for their maps
                    slots = [k for k, ok in per_clip_correct({cid: preds[cid]}, {cid: objs})[cid].items()
                             if k in ("action", "colour", "shape") and ok is False]
                    if slots:
                        wrong.append((cid, batch["frames"][n].clone(), s, slots))
    metrics = scorer.score(preds, refs) if scorer is not None else score(preds, refs, meteor=meteor)
    grounded = slot_accuracy(preds, objects) if objects else None
    groups = {}
    if grounded is not None:
        metrics.update({k: grounded[k] for k in GROUNDED_KEYS})
        groups = grouped_accuracy(preds, objects, clip_groups(objects, nuisances, info.build.summary().get("heldout_triples")))
        for name in ("seen", "unseen"):
            if name in groups:
                metrics.update({f"{name}_{k}": groups[name][k] for k in ("action_acc", "colour_acc", "shape_acc",
                                                                          "all_acc")})
    if list(ckpt["attributes"]) == list(info.attributes):  # the head's words are this build's attributes
        attrs = attribute_map(torch.cat(attr_scores).numpy(), torch.cat(attr_labels).numpy(), info.attribute_pos)
        metrics.update({f"attribute_{k}": v for k, v in attrs.items()})
    out_dir = Path(out) if out else home / rf.eval_name(split, beam)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / rf.PREDICTIONS, preds)
    write_json_atomic(out_dir / rf.EVAL_METRICS, {"split": split, "beam": beam, "checkpoint": source,
                                                 "clips": len(preds), **metrics})
    if groups:
        write_json_atomic(out_dir / rf.GROUPS, groups)
    if grounded is not None:
        write_json_atomic(out_dir / rf.ERROR_SOURCES, error_sources(preds, objects, nuisances))
        write_json_atomic(out_dir / rf.CONFUSION_JSON, grounded["confusion"])
        plot_confusion(grounded["confusion"], out_dir / rf.CONFUSION_PNG,
                       f"{home.name}: action on {split} ({100 * grounded['action_acc']:.1f}% right)")
    if not model_dir:  # a run's stage folder keeps TensorBoard events; a model folder does not
        step = sum(h.get("steps", 0) for h in ckpt["extra"].get("history", []))
        # with --out, inside it: nothing is written beside the checkpoint (round 3, R-16: a read-only
        # checkpoint folder failed the evaluation after half of --out was written)
        write_scalars((out_dir if out else home) / rf.TB, f"{split}_beam{beam}", metrics, step)
    correct = per_clip_correct(preds, objects)
    rows = []
    for s in checked_samples(stream.slices, info.build.store, info.expect):
        cid = s["json"]["clip_id"]
        if len(rows) == gallery_clips:
            break
        if cid in preds:
            rows.append({"clip_id": cid, "jpegs": s["frames"], "prediction": preds[cid], "references": refs[cid],
                         "correct": correct.get(cid)})
    if wrong:
        rows = [r for r in rows if r["clip_id"] not in {w[0] for w in wrong}]
        sheet = []
        for cid, frames, seq, slots in wrong:
            truth = objects[cid][0]
            labels = {slot: f"said {getattr(parse_caption(preds[cid]), slot)}, is {truth[slot]}" for slot in slots}
            maps = occlusion_maps(model, frames, seq, word_positions(preds[cid], seq, ckpt["vocab"], slots))
            if not maps:
                continue
            strip = evidence_strip(frames, maps, labels)
            sheet.append((f"{cid}: {preds[cid]}", strip))
            rows.insert(len(sheet) - 1, {"clip_id": cid, "jpegs": [], "prediction": preds[cid], "references": refs[cid],
                                         "correct": correct.get(cid), "evidence": png_bytes(strip)})
        if sheet:
            write_bytes_atomic(out_dir / rf.EVIDENCE_PNG, png_bytes(contact_sheet(sheet)))
    gallery(out_dir / rf.GALLERY, rows, metrics, f"{ckpt['name']} on {split} (beam {beam})")
    return {"metrics": metrics, "dir": str(out_dir), "clips": len(preds), "grounded": grounded, "groups": groups,
            "per_clip": correct, "predictions": preds}


def format_grounded(metrics: dict) -> str:
    """One line: the slot accuracies (and the attribute mAP) that `train eval` prints under the table."""
    parts = [f"{label(k)} {100 * metrics[k]:.1f}%" for k in SLOTS if metrics.get(k) is not None]
    if metrics.get("attribute_mAP") is not None:
        parts.append(f"{label('attribute_mAP')} {100 * metrics['attribute_mAP']:.1f}")
    return ("grounded: " + ", ".join(parts)) if parts else ""


def format_groups(groups: Mapping[str, Mapping]) -> str:
    """The grounded accuracies per group of clips (seen / unseen combinations, each nuisance) as a table."""
    if not groups:
        return ""
    lines = [f"{'clips with':<22}{'n':>5}{'action':>8}{'colour':>8}{'shape':>8}{'all 3':>8}"]
    for name, g in groups.items():
        cells = "".join(f"{100 * g[k]:>7.1f}%" if g[k] is not None else f"{'-':>8}"
                        for k in ("action_acc", "colour_acc", "shape_acc", "all_acc"))
        lines.append(f"{name:<22}{g['clips']:>5}{cells}")
    return "\n".join(lines)


def paired_difference(a: Mapping[Hashable, float | None], b: Mapping[Hashable, float | None]) -> tuple[float, float]:
    """Mean of b - a over the clips both score (a per-clip metric, or correctness as 0/1) and its
    standard error: the same clips under two models, so what makes a clip hard cancels out."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    d = np.array([float(b[k]) - float(a[k]) for k in keys])
    if len(d) < 2:
        return float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
