"""`evalkit score`: the paper's metrics for a predictions file against references.

Predictions: ``{"clip_id": "caption", ...}`` or the COCO results list
``[{"image_id": "clip_id", "caption": "..."}, ...]`` ("video_id" is accepted for "image_id").
References: a `pipeline build` output (or its shards/ directory; captions of --split are read
from the shard json) or ``{"clip_id": ["caption", ...], ...}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from evalkit.coco import METRICS, score


def load_predictions(path: Path) -> dict[str, str]:
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if isinstance(data, list):
        out = {}
        for i, r in enumerate(data):
            key = r.get("image_id", r.get("video_id")) if isinstance(r, dict) else None
            if key is None or "caption" not in r:
                raise ValueError(f"{path}: item {i}: expected {{'image_id': ..., 'caption': ...}}")
            out[str(key)] = str(r["caption"])
        return out
    raise ValueError(f"{path}: expected a {{clip_id: caption}} object or a COCO results list")


def load_references(path: Path, split: str) -> dict[str, list[str]]:
    path = Path(path)
    if path.is_dir():
        from pipeline.shards import read_metadata

        shard_dir = path / "shards" if (path / "shards").is_dir() else path
        return {m["clip_id"]: m["captions"] for m in read_metadata(shard_dir, split)}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{clip_id: [captions]}}")
    return {str(k): list(v) for k, v in data.items()}


def format_table(metrics: dict) -> str:
    return "\n".join([f"{'metric':<9}{'score':>9}"] + [f"{m:<9}{metrics[m] * 100:>9.2f}" for m in METRICS if m in metrics])


def _score(a: argparse.Namespace) -> None:
    preds = load_predictions(a.pred)
    refs = load_references(a.refs, a.split)
    result = score(preds, refs, meteor=not a.no_meteor, per_clip=bool(a.per_clip))
    per_clip = result.pop("per_clip", None)
    print(format_table(result))
    out = Path(a.out) if a.out else Path(a.pred).with_suffix(".metrics.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"metrics (0..1 scale) written to {out}")
    if per_clip is not None:
        names = [m for m in METRICS if m in result]
        with open(a.per_clip, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "prediction", *names])
            for clip, vals in per_clip.items():
                w.writerow([clip, preds[clip], *(f"{vals[n]:.6f}" for n in names)])
        print(f"per-clip scores written to {a.per_clip}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evalkit", description="caption metrics (pycocoevalcap: BLEU, METEOR, ROUGE-L, CIDEr)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score predictions against references")
    s.add_argument("--pred", required=True, help="predictions JSON ({clip_id: caption} or COCO results list)")
    s.add_argument("--refs", required=True, help="pipeline output dir / shards dir, or refs JSON {clip_id: [captions]}")
    s.add_argument("--split", default="test", help="split to read from shards (default test)")
    s.add_argument("--per-clip", default=None, help="write per-clip scores to this CSV")
    s.add_argument("--out", default=None, help="metrics JSON (default PRED.metrics.json)")
    s.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~8 s of Java start-up)")
    s.set_defaults(func=_score)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"evalkit {args.cmd}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
