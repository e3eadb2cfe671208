"""`evalkit score`: the paper's metrics for a predictions file against references.

Predictions: ``{"clip_id": "caption", ...}`` or the COCO results list
``[{"image_id": "clip_id", "caption": "..."}, ...]`` ("video_id" is accepted for "image_id").
References: a `pipeline build` output -- a folder (or its shards/ folder) or a URL (vidcap.shards.store) --
whose shard json give the captions of --split (read through vidcap.shards.layout), or
``{"clip_id": ["caption", ...], ...}``.

Every clip of the references must have a prediction: a predictions file that misses some would be
scored on a subset without anyone noticing (``--allow-missing`` scores the subset, with a warning).
A prediction id matches its reference exactly, or else by its NFC form (``café`` typed as ``e`` +
U+0301 is the reference ``café``) when exactly one reference id has that form and no prediction of
its own; the output says how many were matched so, and how many clips were scored.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import unicodedata
from pathlib import Path

from vidcap.atomic import write_bytes_atomic, write_json_atomic
from vidcap.errors import ArgumentParser, UserError, cli_errors
from vidcap.evalkit.coco import METRICS, TOKENIZERS, check_inputs, choose_tokenizer, score
from vidcap.flags import add_file_flag
from vidcap.jsonfile import read_json
from vidcap.text import tokenize


def load_predictions(path: Path) -> dict[str, str]:
    data = read_json(path, "predictions file")
    if isinstance(data, dict):
        bad = next((k for k, v in data.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise UserError(f"{path}: {bad!r}: expected a caption string, got {type(data[bad]).__name__}")
        return dict(data)
    if isinstance(data, list):
        out = {}
        for i, r in enumerate(data):
            key = r.get("image_id", r.get("video_id")) if isinstance(r, dict) else None
            if key is None or not isinstance(r.get("caption"), str) or isinstance(key, (dict, list)):
                raise UserError(f"{path}: item {i}: expected {{'image_id': ..., 'caption': '...'}}")
            out[str(key)] = r["caption"]
        return out
    raise UserError(f"{path}: expected a {{clip_id: caption}} object or a COCO results list")


def load_references(path: str | Path, split: str) -> dict[str, list[str]]:
    """References from a JSON file, or from a build (a folder, its shards/ folder, or a URL)."""
    from vidcap.shards.layout import SHARDS, Build
    from vidcap.shards.store import LocalStore, open_store

    text = str(path)
    if not isinstance(open_store(text), LocalStore):
        return Build(text).references(split)
    path = Path(path)
    if path.is_dir():
        root = path.parent if path.name == SHARDS and not (path / SHARDS).is_dir() else path
        return Build(root).references(split)
    data = read_json(path, "references file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {{clip_id: [captions]}}")
    for k, v in data.items():
        if not (isinstance(v, list) and all(isinstance(c, str) for c in v)):
            raise UserError(f"{path}: {k!r}: expected a list of caption strings")
    return data


def match_keys(preds: dict[str, str], refs: dict[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    """The predictions keyed by their clips' reference ids (exact, else by NFC form; see the module),
    and the prediction ids matched only by their NFC form. Ids that match nothing are kept as they
    are, for check_inputs to report."""
    by_form: dict[str, list[str]] = {}
    for k in refs:
        by_form.setdefault(unicodedata.normalize("NFC", k), []).append(k)
    out: dict[str, str] = {}
    renamed: list[str] = []
    for k, v in preds.items():
        if k in refs:
            out[k] = v
            continue
        free = [r for r in by_form.get(unicodedata.normalize("NFC", k), []) if r not in preds and r not in out]
        if len(free) == 1:
            out[free[0]] = v
            renamed.append(k)
        else:
            out[k] = v
    return out, renamed


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def format_table(metrics: dict) -> str:
    return "\n".join([f"{'metric':<9}{'score':>9}"] + [f"{m:<9}{metrics[m] * 100:>9.2f}" for m in METRICS if m in metrics])


def _score(a: argparse.Namespace) -> None:
    preds = load_predictions(a.pred)
    refs = load_references(a.refs, a.split)
    preds, renamed = match_keys(preds, refs)
    check_inputs(preds, refs)  # ids without references, clips without usable references: errors
    missing = [k for k in refs if k not in preds]
    if missing:
        what = (f"{a.pred}: no prediction for {len(missing)} of the {len(refs)} reference clips "
                f"({_examples(missing)})")
        if not a.allow_missing:
            raise UserError(f"{what}; predict every clip, or pass --allow-missing to score the {len(preds)} others")
        print(f"evalkit score: warning: {what}; scoring the other {len(preds)} (--allow-missing)", file=sys.stderr)
    tokenizer = choose_tokenizer(a.tokenizer, preds, refs)
    result = score(preds, refs, meteor=not a.no_meteor, per_clip=bool(a.per_clip), tokenizer=tokenizer)
    per_clip = result.pop("per_clip", None)
    print(format_table(result))
    dropped = sum(not tokenize(c) for k in preds for c in refs[k])
    why = {"ptb": "pycocoevalcap's PTB", "unicode": "vidcap.text's Unicode rule"}[tokenizer]
    print(f"{len(preds)} clips scored (of {len(refs)} in the references); tokenizer {tokenizer} ({why}"
          + (", chosen because not every caption is ASCII" if a.tokenizer == "auto" and tokenizer == "unicode" else "")
          + ")" + (f"; {len(renamed)} prediction ids matched by their NFC form ({_examples(renamed)})" if renamed else "")
          + (f"; {dropped} empty or punctuation-only references left out" if dropped else ""))
    out = Path(a.json) if a.json else Path(a.pred).with_suffix(".metrics.json")
    write_json_atomic(out, {**result, "clips": len(preds), "tokenizer": tokenizer})
    print(f"metrics (0..1 scale) written to {out}")
    if per_clip is not None:
        names = [m for m in METRICS if m in result]
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["clip_id", "prediction", *names])
        for clip, vals in per_clip.items():
            w.writerow([clip, preds[clip], *(f"{vals[n]:.6f}" for n in names)])
        write_bytes_atomic(a.per_clip, text.getvalue().encode("utf-8"))
        print(f"per-clip scores written to {a.per_clip}")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="evalkit", description="caption metrics (pycocoevalcap: BLEU, METEOR, ROUGE-L, CIDEr)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score predictions against references")
    s.add_argument("--pred", required=True, help="predictions JSON ({clip_id: caption} or COCO results list)")
    s.add_argument("--refs", required=True, help="pipeline output dir / shards dir, or refs JSON {clip_id: [captions]}")
    s.add_argument("--split", default="test", help="split to read from shards (default test)")
    s.add_argument("--per-clip", default=None, help="write per-clip scores to this CSV")
    add_file_flag(s, "--json", "json", default=None, metavar="FILE", help="write the metrics (0..1) to this JSON "
                  "file (default PRED.metrics.json)")
    s.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~8 s of Java start-up)")
    s.add_argument("--tokenizer", default="auto", choices=TOKENIZERS,
                   help="ptb (pycocoevalcap's, English), unicode (vidcap's, every script; each CJK character a "
                        "word) or auto (default: ptb when every caption is ASCII, else unicode)")
    s.add_argument("--allow-missing", action="store_true",
                   help="score the clips that have predictions when some have none (default: an error)")
    s.set_defaults(func=_score)
    return p


def main(argv: list[str] | None = None) -> None:
    with cli_errors("evalkit") as ctx:
        args = parser().parse_args(argv)
        ctx.prog = f"evalkit {args.cmd}"
        args.func(args)


if __name__ == "__main__":
    main()
