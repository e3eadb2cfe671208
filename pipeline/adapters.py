"""Dataset adapters: each turns one on-disk annotation layout into a list of Clip records.

Splits are normalised to ``train`` / ``val`` / ``test``. The schema is checked here, in the driver,
before any Dask task runs: a field of the wrong type is a UserError naming the file and the field
(``videos[3].video_id: expected a string, got int``), as are files that are not UTF-8 or not valid
JSON/CSV (with the position). Captions that are empty or punctuation only (no word survives
``vidcap.text.tokenize``: they would train toward an empty sentence) are dropped and counted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from vidcap.errors import UserError
from vidcap.jsonfile import read_json as _read_json
from vidcap.jsonfile import read_text as _read_text
from vidcap.shards.layout import SPLITS
from vidcap.shards.reader import OBJECT_FIELDS, footage_problem, nuisances_problem
from vidcap.text import tokenize

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
    nuisances: dict | None = None  # the built-in real world's per-clip nuisances (name -> strength or kind)
    footage: dict | None = None  # the built-in real world's real scene behind the clip (pipeline.footage.record)


@dataclass
class AdapterResult:
    clips: list[Clip]
    empty_captions_dropped: int = 0  # empty or punctuation-only
    notes: list[str] = field(default_factory=list)
    # (colour, shape, action) combinations the source kept out of training (the built-in real world)
    heldout_triples: list[list[str]] | None = None


def read_text(path: Path) -> str:
    return _read_text(path, "annotation file")


def read_json(path: Path):
    return _read_json(path, "annotation file")


def _exists(path: Path) -> bool:
    """Path.exists, but False for a name the file system cannot hold (a 300-character clip id makes
    a file name over 255 bytes: ENAMETOOLONG) -- that clip then fails alone in job 1, named in
    failures.jsonl, instead of ending the whole build."""
    try:
        return path.exists()
    except OSError:
        return False


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _string(value, path: Path, where: str, allow_int: bool = False, allow_empty: bool = False) -> str:
    """A non-empty string field (or an integer where `allow_int`, as a string)."""
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise UserError(f"{path}: {where}: expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise UserError(f"{path}: {where}: empty")
    return value


def _split(value, path: Path, where: str) -> str:
    split = _SPLIT_ALIASES.get(value.lower()) if isinstance(value, str) else None
    if split is None:
        raise UserError(f"{path}: {where}: unknown split {value!r} (expected train/val/test)")
    return split


def _captions(value, path: Path, where: str) -> list[str]:
    if not isinstance(value, list):
        raise UserError(f"{path}: {where}: expected a list of strings, got {_type_name(value)}")
    for j, c in enumerate(value):
        if not isinstance(c, str):
            raise UserError(f"{path}: {where}[{j}]: expected a string, got {_type_name(c)}")
    return value


def _clean(captions: list[str], stats: AdapterResult) -> list[str]:
    kept = [c.strip() for c in captions if tokenize(c)]
    stats.empty_captions_dropped += len(captions) - len(kept)
    return kept


def _objects(value, path: Path, where: str) -> list[dict] | None:
    """The optional ground-truth objects of a clip (the built-in dataset writes them)."""
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(o, dict) and all(isinstance(o.get(k), str) for k in OBJECT_FIELDS)
                                            for o in value)):
        raise UserError(f"{path}: {where}.objects: must be a list of {{{', '.join(OBJECT_FIELDS)}}} strings")
    return [{k: o[k] for k in OBJECT_FIELDS} for o in value]


def _record(value, path: Path, where: str, field: str) -> dict | None:
    """An optional record the built-in real world writes per clip -- its ``nuisances`` (name -> number or
    word) or its ``footage`` (the real scene behind it) -- checked by its owner's ``*_problem``."""
    if value is None:
        return None
    problem = (nuisances_problem if field == "nuisances" else footage_problem)(value)
    if problem:
        raise UserError(f"{path}: {where}.{field}: {problem}")
    return dict(value)


def _heldout(data, path: Path) -> list[list[str]] | None:
    world = data.get("vidcap_world") if isinstance(data, dict) else None
    if world is None:
        return None
    triples = world.get("heldout_triples") if isinstance(world, dict) else None
    if not (isinstance(triples, list) and all(isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t)
                                              for t in triples)):
        raise UserError(f"{path}: vidcap_world.heldout_triples: must be a list of [colour, shape, action] strings")
    return triples


def _require(obj, key: str, path: Path, where: str):
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {where}: expected an object, got {_type_name(obj)}")
    if key not in obj:
        raise UserError(f"{path}: {where}: missing field {key!r}")
    return obj[key]


def _list(value, path: Path, where: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"{path}: {where}: expected a list, got {_type_name(value)}")
    return value


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
        videos = _list(_require(data, "videos", f, "top level"), f, "videos")
        caps: dict[str, list[str]] = {}
        for i, s in enumerate(_list(_require(data, "sentences", f, "top level"), f, "sentences")):
            where = f"sentences[{i}]"
            vid = _string(_require(s, "video_id", f, where), f, f"{where}.video_id")
            caps.setdefault(vid, []).append(_string(_require(s, "caption", f, where), f, f"{where}.caption",
                                                    allow_empty=True))
        for i, v in enumerate(videos):
            where = f"videos[{i}]"
            vid = _string(_require(v, "video_id", f, where), f, f"{where}.video_id")
            split = _split(_require(v, "split", f, where), f, f"{where}.split")
            path = next((d / f"{vid}.mp4" for d in dirs if _exists(d / f"{vid}.mp4")),
                        (dirs[0] if dirs else root) / f"{vid}.mp4")
            result.clips.append(Clip(vid, path, split, _clean(caps.get(vid, []), result),
                                     _objects(v.get("objects"), f, where), _record(v.get("nuisances"), f, where, "nuisances"),
                                     _record(v.get("footage"), f, where, "footage")))
        result.heldout_triples = _heldout(data, f) or result.heldout_triples
    return result


# ---- MSVD -----------------------------------------------------------------------------------

def _msvd_video(root: Path, clip_id: str) -> Path:
    for d in ("YouTubeClips", "videos", "."):
        for ext in (".avi", ".mp4", ".webm", ".mkv"):
            p = root / d / f"{clip_id}{ext}"
            if _exists(p):
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
            for i, item in enumerate(_list(read_json(f), f, "top level")):
                if not (isinstance(item, list) and len(item) == 3):
                    raise UserError(f"{f}: item {i}: expected [file, n, [captions]]")
                clip_id = Path(_string(item[0], f, f"item {i}[0] (file)")).stem
                caps = _captions(item[2], f, f"item {i}[2] (captions)")
                result.clips.append(Clip(clip_id, _msvd_video(root, clip_id), split, _clean(caps, result)))
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
    for i, v in enumerate(_list(_require(data, "videos", f, "top level"), f, "videos")):
        where = f"videos[{i}]"
        clip_id = _string(_require(v, "id", f, where), f, f"{where}.id", allow_int=True)
        path = Path(_string(_require(v, "path", f, where), f, f"{where}.path"))
        split = _split(_require(v, "split", f, where), f, f"{where}.split")
        caps = _captions(_require(v, "captions", f, where), f, f"{where}.captions")
        result.clips.append(Clip(clip_id, path if path.is_absolute() else f.parent / path, split,
                                 _clean(caps, result), _objects(v.get("objects"), f, where),
                                 _record(v.get("nuisances"), f, where, "nuisances"), _record(v.get("footage"), f, where, "footage")))
    result.heldout_triples = _heldout(data, f)
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
