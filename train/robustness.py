"""`train robustness`: what each nuisance of real footage costs a model -- the test clips captioned
as they are, then with one nuisance at a time applied to their frames at each strength
(``pipeline.nuisances``: the listed ones the realistic world renders -- the same table, strengths,
draws and implementation as the world's -- and held-out camera faults it never renders), scored as `train eval` scores: the grounded accuracies of the built-in dataset
(action, colour, shape, all three) and CIDEr.

The same clips under every condition, each perturbation seeded by the clip and the condition, so
two models are compared on identical inputs and a re-run gives the same table. One exception: a
``backdrop`` entry (``real_scene``: held-out real footage behind the objects) replaces a *plain*
background, which decoded frames do not hold as a layer -- it keys the objects out on chroma, exact
only where the background is grey by the world's rule (``pipeline.footage.object_alpha``). So it is
scored on the clips with a plain background (the clean world's, the realistic world's gradients
without an occluder), its row says how many, and its drop is from those clips' own clean score
(``baseline``), not the split's: "the same clips on plain backgrounds". Writes
``robustness.json``, ``robustness.md`` and ``robustness.png`` (accuracy of all three slots against
strength, one line per nuisance).
"""

from __future__ import annotations

import io
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from vidcap.atomic import write_bytes_atomic, write_json_atomic
from vidcap.errors import UserError
from vidcap.evalkit.coco import score
from vidcap.evalkit.grounding import slot_accuracy
from vidcap.model import decoding
from vidcap.model.folder import load_model
from vidcap.pipeline import footage
from vidcap.pipeline.nuisances import HELD_OUT, LISTED, NUISANCES, perturb
from vidcap.shards.layout import DataInfo
from vidcap.shards.reader import checked_samples
from vidcap.tokens import decode
from vidcap.train.data import SplitStream, decode_jpeg
from vidcap.train.run_folder import ROBUSTNESS, ROBUSTNESS_JSON, ROBUSTNESS_MD, ROBUSTNESS_PNG

STRENGTH_NAMES = ("mild", "standard", "strong")
DEFAULT_SECONDS = 2.0  # a clip's length when its container states no frame rate (the clean world's length)
SLOT_KEYS = ("action_acc", "colour_acc", "shape_acc", "all_acc")


GROUPS = {"all": list(NUISANCES), "listed": list(LISTED), "held-out": list(HELD_OUT)}  # --nuisances' words


def parse_nuisances(text: str) -> list[str]:
    """A group of GROUPS, or a comma-separated list of names (``pipeline.nuisances``)."""
    if text in GROUPS:
        return GROUPS[text]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NUISANCES]
    if unknown or not names:
        raise UserError(f"--nuisances {text}: unknown {', '.join(unknown) or '(empty)'}; choose "
                        f"{', '.join(GROUPS)} or from {', '.join(NUISANCES)}")
    _once("--nuisances", text, names)
    return names


def _once(flag: str, text: str, names: list[str]) -> None:
    """A name given twice computed the same rows twice (round 3, P-34): one line instead."""
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise UserError(f"{flag} {text}: {twice} is given twice")


def parse_strengths(text: str) -> list[int]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in STRENGTH_NAMES for n in names):
        raise UserError(f"--strengths {text}: choose from {', '.join(STRENGTH_NAMES)} (comma-separated)")
    _once("--strengths", text, names)
    return [STRENGTH_NAMES.index(n) for n in names]


def _load_clips(info: DataInfo, split: str, max_clips: int | None, size: int) -> list[dict]:
    """The split's clips as the model reads them: frames (K, size, size, 3) uint8, as `train eval` decodes."""
    stream = SplitStream(info, split, max_clips=max_clips)
    clips = []
    for s in checked_samples(stream.slices, info.build.store, info.expect):
        meta = s["json"]
        frames = np.stack([decode_jpeg(j, size).transpose(1, 2, 0) for j in s["frames"]])
        clips.append({"clip_id": meta["clip_id"], "frames": frames, "captions": meta["captions"],
                      "objects": meta.get("objects"), "seconds": meta.get("duration") or DEFAULT_SECONDS,
                      "plain": plain_background(meta)})
        if max_clips is not None and len(clips) >= max_clips:
            break
    if not clips:
        raise UserError(f"{info.root}: split {split!r} has no clips")
    return clips


def plain_background(meta: dict) -> bool:
    """Whether a sample's background is plain grey behind its objects: the clean world's (no
    ``nuisances`` record) or the realistic world's gradient with nothing drawn in the scene (an occluder)."""
    rec = meta.get("nuisances") or {}
    in_scene = [k for k in rec if k in NUISANCES and NUISANCES[k].kind == "scene"]
    return rec.get("background", "gradient") == "gradient" and not in_scene and not meta.get("footage")


def _usable(names: list[str]) -> list[str]:
    """`names` less the backdrops whose held-out footage is absent (a clone without ../shared), each
    left out with one line on stderr."""
    if footage.sources(None, held_out=True):
        return names
    for n in names:
        if NUISANCES[n].kind == "backdrop":
            print(f"train robustness: {n} left out: no held-out footage ({', '.join(footage.HELD_OUT_SOURCES)}) "
                  f"in {footage.DEFAULT_FOLDER}", file=sys.stderr)
    return [n for n in names if NUISANCES[n].kind != "backdrop"]


def _scores(preds: dict, refs: dict, objects: dict) -> dict:
    row = {"CIDEr": score(preds, refs, meteor=False)["CIDEr"]}
    if objects:
        acc = slot_accuracy(preds, {k: v for k, v in objects.items() if k in preds})
        row.update({k: acc[k] for k in SLOT_KEYS})
    return row


@torch.no_grad()
def _caption(model, frames: list[np.ndarray], itos: list[str], beam: int, batch: int = 16) -> list[str]:
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.stack(frames[i : i + batch])).permute(0, 1, 4, 2, 3)
        feats = model.frame_features(x)
        out += [decode(s, itos) for s in decoding.decode(model, feats, beam).tolist()]
    return out


def _condition_seed(seed: int, clip_id: str, name: str, level: int) -> int:
    return zlib.crc32(f"{seed}/{clip_id}/{name}/{level}".encode())


def robustness(ckpt: str | None, model_dir: str | None, data: str, split: str = "test",
               nuisances: list[str] | None = None, levels: list[int] | None = None, max_clips: int | None = 120,
               beam: int = 3, seed: int = 0, out: str | None = None, progress: bool = True) -> dict:
    """Caption `split` clean and under each nuisance x strength; write and return the table."""
    from tqdm import tqdm

    nuisances = _usable(nuisances or list(NUISANCES))
    levels = levels if levels is not None else [0, 1, 2]
    model, raw = load_model(ckpt, model_dir)
    model.eval()
    info = DataInfo.load(data)
    clips = _load_clips(info, split, max_clips, model.cfg.image_size)
    objects = {c["clip_id"]: c["objects"] for c in clips if c["objects"]}
    refs = {c["clip_id"]: c["captions"] for c in clips}
    conditions = [("clean", None)] + [(n, lv) for n in nuisances for lv in levels]
    rows, clean_preds = [], {}
    for name, level in tqdm(conditions, desc="robustness", unit="condition", disable=not progress):
        backdrop = level is not None and NUISANCES[name].kind == "backdrop"
        chosen = [c for c in clips if c["plain"]] if backdrop else clips
        if not chosen:
            print(f"train robustness: {name} left out: no clip of split {split} has a plain background "
                  "(run it on the clean world's clips)", file=sys.stderr)
            continue
        frames = [c["frames"] if level is None else
                  perturb(c["frames"], name, NUISANCES[name].strengths[level],
                          _condition_seed(seed, c["clip_id"], name, level), c["seconds"]) for c in chosen]
        chosen_ids = [c["clip_id"] for c in chosen]
        preds = dict(zip(chosen_ids, _caption(model, frames, raw["vocab"], beam), strict=True))
        clean_preds = clean_preds or preds
        row = {"nuisance": name, "strength": None if level is None else STRENGTH_NAMES[level],
               "value": None if level is None else NUISANCES[name].strengths[level],
               "held_out": name in HELD_OUT, **_scores(preds, {k: refs[k] for k in chosen_ids}, objects)}
        if backdrop:  # the same clips, clean: what its drop is from
            row["clips"] = len(chosen)
            row["baseline"] = _scores({k: clean_preds[k] for k in chosen_ids}, {k: refs[k] for k in chosen_ids}, objects)
        rows.append(row)
    result = {"checkpoint": raw["source"], "data": str(data), "split": split, "clips": len(clips), "beam": beam,
              "seed": seed, "rows": rows,
              "nuisances": {n: {"what": NUISANCES[n].what, "unit": NUISANCES[n].unit, "kind": NUISANCES[n].kind,
                                "strengths": list(NUISANCES[n].strengths), "held_out": NUISANCES[n].held_out}
                            for n in nuisances}}
    out_dir = Path(out) if out else (Path(model_dir) if model_dir else Path(raw["source"]).parent) / ROBUSTNESS
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / ROBUSTNESS_JSON, result)
    write_bytes_atomic(out_dir / ROBUSTNESS_MD, format_markdown(result).encode())
    if objects:
        plot(result, out_dir / ROBUSTNESS_PNG)
    result["dir"] = str(out_dir)
    return result


def format_markdown(result: dict) -> str:
    """The table: one row per condition, the drop from clean in points beside each accuracy."""
    grounded = "all_acc" in result["rows"][0]
    head = "| nuisance | strength | value | " + ("action % | colour % | shape % | all three % | " if grounded else "")
    lines = [f"{result['clips']} {result['split']} clips of {result['data']}, beam {result['beam']}; "
             f"drop from clean in points in brackets; * = held out (never rendered by the realistic world); "
             "(N plain clips): scored on the clips with a plain background, the drop from their own clean score", "",
             head + "CIDEr |", "|" + "---|" * head.count("|")]
    for r in result["rows"]:
        clean = r.get("baseline", result["rows"][0])
        cells = [r["nuisance"] + (" *" if r["held_out"] else "") + (f" ({r['clips']} plain clips)" if "clips" in r else ""),
                 r["strength"] or "-", "-" if r["value"] is None else f"{r['value']:g}"]
        if grounded:
            for k in SLOT_KEYS:
                drop = 100 * (r[k] - clean[k])
                cells.append(f"{100 * r[k]:.1f}" + ("" if r is result["rows"][0] else f" ({drop:+.1f})"))
        cells.append(f"{100 * r['CIDEr']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = result["rows"][0]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharey=True)
    names = list(dict.fromkeys(r["nuisance"] for r in result["rows"][1:]))
    for ax, key, title in zip(axes, SLOT_KEYS, ("action", "colour", "shape", "all three"), strict=True):
        for n in names:
            rows = [r for r in result["rows"] if r["nuisance"] == n]
            xs = [STRENGTH_NAMES.index(r["strength"]) + 1 for r in rows]
            ax.plot([0, *xs], [100 * rows[0].get("baseline", clean)[key], *(100 * r[key] for r in rows)], marker="o",
                    linestyle="--" if rows[0]["held_out"] else "-", label=n)
        ax.set_xticks(range(4), ["clean", *STRENGTH_NAMES], fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of clips right")
    axes[-1].legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle(f"{Path(result['checkpoint']).name}: robustness on {result['clips']} {result['split']} clips "
                 "(dashed: held-out nuisances)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
