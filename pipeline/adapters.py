"""Dataset adapters: each turns one on-disk annotation layout into a list of Clip records.

Splits are normalised to ``train`` / ``val`` / ``test``. Empty captions are dropped and counted.
Annotation files that are not UTF-8 or not valid JSON/CSV raise a UserError naming the file and
the position.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "test": "test", "testing": "test"}
MSVD_SPLIT_SIZES = (1200, 100, 670)


@dataclass
class Clip:
    clip_id: str
    path: Path
    split: str
    captions: list[str]
    objects: list[dict] | None = None  # ground truth of the built-in dataset (shape, colour, size, action)


@dataclass
class AdapterResult:
    clips: list[Clip]
    empty_captions_dropped: int = 0
    notes: list[str] = field(default_factory=list)


def read_text(path: Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _split(value, path: Path, where: str) -> str:
    split = _SPLIT_ALIASES.get(str(value).lower())
    if split is None:
        raise UserError(f"{path}: {where}: unknown split {value!r} (expected train/val/test)")
    return split


def _clean(captions, stats: AdapterResult) -> list[str]:
    kept = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    stats.empty_captions_dropped += len(captions) - len(kept)
    return kept


OBJECT_FIELDS = ("shape", "colour", "size", "action")


def _objects(value, path: Path, where: str) -> list[dict] | None:
    """The optional ground-truth objects of a clip (the built-in dataset writes them)."""
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(o, dict) and all(isinstance(o.get(k), str) for k in OBJECT_FIELDS)
                                            for o in value)):
        raise UserError(f"{path}: {where}: 'objects' must be a list of {{{', '.join(OBJECT_FIELDS)}}} strings")
    return [{k: o[k] for k in OBJECT_FIELDS} for o in value]


def _require(obj, key: str, path: Path, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{path}: {where}: missing field {key!r}")
    return obj[key]


# ---- MSR-VTT --------------------------------------------------------------------------------

MSRVTT_VIDEO_DIRS = ("TrainValVideo", "TestVideo", "videos/all", "videos")


def msrvtt(root: Path) -> AdapterResult:
    """Official MSR-VTT layout: train_val_videodatainfo.json (+ test_videodatainfo.json) or one
    videodatainfo.json; videos video{N}.mp4 under TrainValVideo/, TestVideo/, videos/all/ or videos/."""
    root = Path(root)
    names = ["train_val_videodatainfo.json", "test_videodatainfo.json"]
    files = [root / n for n in names if (root / n).exists()] or [root / "videodatainfo.json"]
    if not files[0].exists():
        raise UserError(f"{root}: no MSR-VTT annotations (expected videodatainfo.json or {names[0]})")
    dirs = [root / d for d in MSRVTT_VIDEO_DIRS if (root / d).is_dir()]
    result = AdapterResult([])
    for f in files:
        data = read_json(f)
        videos = _require(data, "videos", f, "top level")
        caps: dict[str, list[str]] = {}
        for i, s in enumerate(_require(data, "sentences", f, "top level")):
            caps.setdefault(_require(s, "video_id", f, f"sentences[{i}]"), []).append(
                _require(s, "caption", f, f"sentences[{i}]"))
        for i, v in enumerate(videos):
            vid = _require(v, "video_id", f, f"videos[{i}]")
            split = _split(_require(v, "split", f, f"videos[{i}]"), f, f"videos[{i}]")
            path = next((d / f"{vid}.mp4" for d in dirs if (d / f"{vid}.mp4").exists()),
                        (dirs[0] if dirs else root) / f"{vid}.mp4")
            result.clips.append(Clip(vid, path, split, _clean(caps.get(vid, []), result),
                                     _objects(v.get("objects"), f, f"videos[{i}]")))
    return result


# ---- MSVD -----------------------------------------------------------------------------------

def _msvd_video(root: Path, clip_id: str) -> Path:
    for d in ("YouTubeClips", "videos", "."):
        for ext in (".avi", ".mp4", ".webm", ".mkv"):
            p = root / d / f"{clip_id}{ext}"
            if p.exists():
                return p
    return root / "YouTubeClips" / f"{clip_id}.avi"


def _msvd_order(root: Path, clip_ids: list[str]) -> list[str]:
    mapping = root / "youtube_mapping.txt"
    if mapping.exists():
        order = [line.split()[0] for line in read_text(mapping).splitlines() if line.strip()]
        known = set(clip_ids)
        ranked = [c for c in order if c in known]
        return ranked + sorted(known - set(ranked))
    return sorted(clip_ids)


def msvd(root: Path) -> AdapterResult:
    """MSVD: per-split JSON lists ``msvd_{train,val,test}.json`` ([[file, n, [captions]], ...]) when
    present, else YouTubeClips/*.avi with AllVideoDescriptionDataEnglish.csv (English rows) split
    1,200 / 100 / 670 in youtube_mapping.txt order (sorted clip ids without it)."""
    root = Path(root)
    result = AdapterResult([])
    split_files = {s: root / f"msvd_{s}.json" for s in SPLITS}
    if any(p.exists() for p in split_files.values()):
        for split, f in split_files.items():
            if not f.exists():
                result.notes.append(f"{f.name} absent: no {split} clips")
                continue
            for i, item in enumerate(read_json(f)):
                if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], list)):
                    raise UserError(f"{f}: item {i}: expected [file, n, [captions]]")
                clip_id = Path(str(item[0])).stem
                result.clips.append(Clip(clip_id, _msvd_video(root, clip_id), split, _clean(item[2], result)))
        return result
    csv_path = root / "AllVideoDescriptionDataEnglish.csv"
    if not csv_path.exists():
        raise UserError(f"{root}: no MSVD annotations (expected msvd_train.json or {csv_path.name})")
    caps: dict[str, list[str]] = {}
    reader = csv.DictReader(io.StringIO(read_text(csv_path)))
    for row in reader:
        try:
            if row["Language"].strip() != "English":
                continue
            clip_id = f"{row['VideoID']}_{row['Start']}_{row['End']}"
            caps.setdefault(clip_id, []).append(row["Description"] or "")
        except (KeyError, AttributeError):
            raise UserError(f"{csv_path}: line {reader.line_num}: missing VideoID/Start/End/Language/Description") from None
    order = _msvd_order(root, list(caps))
    bounds = [MSVD_SPLIT_SIZES[0], sum(MSVD_SPLIT_SIZES[:2])]
    for i, clip_id in enumerate(order):
        split = "train" if i < bounds[0] else "val" if i < bounds[1] else "test"
        result.clips.append(Clip(clip_id, _msvd_video(root, clip_id), split, _clean(caps[clip_id], result)))
    return result


# ---- generic JSON ---------------------------------------------------------------------------

def generic_json(root: Path) -> AdapterResult:
    """``{"videos": [{"id", "path", "split", "captions": [...]}, ...]}``; `root` is that file or a
    directory holding it as ``dataset.json``. Relative paths are relative to the file."""
    f = Path(root)
    if f.is_dir():
        f = f / "dataset.json"
    data = read_json(f)
    result = AdapterResult([])
    for i, v in enumerate(_require(data, "videos", f, "top level")):
        where = f"videos[{i}]"
        path = Path(str(_require(v, "path", f, where)))
        caps = _require(v, "captions", f, where)
        if not isinstance(caps, list):
            raise UserError(f"{f}: {where}: 'captions' must be a list of strings")
        result.clips.append(Clip(str(_require(v, "id", f, where)), path if path.is_absolute() else f.parent / path,
                                 _split(_require(v, "split", f, where), f, where), _clean(caps, result),
                                 _objects(v.get("objects"), f, where)))
    return result


ADAPTERS = {"msrvtt": msrvtt, "msvd": msvd, "json": generic_json}


def load_dataset(name: str, root: Path) -> AdapterResult:
    if name not in ADAPTERS:
        raise UserError(f"unknown dataset {name!r}; choose from {sorted(ADAPTERS)}")
    if not Path(root).exists():
        raise UserError(f"{root}: dataset root not found")
    result = ADAPTERS[name](Path(root))
    seen: set[str] = set()
    for c in result.clips:
        if c.clip_id in seen:
            raise UserError(f"{root}: clip id {c.clip_id!r} appears twice")
        seen.add(c.clip_id)
    return result
