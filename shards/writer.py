"""Writing a shard, beside its reader (``reader.py``): a sample's member names, the fields of its
json, and the deterministic tar that holds them.

A shard is a plain, uncompressed tar, written so that the same clips and settings give the same
bytes whatever the machine or worker count: members in the order added (frames then json, per
sample), mtime 0, uid/gid 0, mode 0444, GNU format. Keys are the clip ids percent-encoded outside
``[A-Za-z0-9_-]`` (reversible with ``urllib.parse.unquote``), so ids never collide and member names
are flat and relative. Adding a field to the sample json is one edit in ``sample_json`` (plus its
check in ``reader.py`` if readers must rely on it, and its row in ``docs/shards.md``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping, Sequence

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# Per-clip ground truth an adapter may carry (the built-in dataset's), passed through to the json.
GROUND_TRUTH_FIELDS = ("objects", "nuisances", "footage")


def sample_key(clip_id: str) -> str:
    """The tar key of a clip id: reversible percent-encoding of everything outside [A-Za-z0-9_-]."""
    return _UNSAFE_KEY_CHARS.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), clip_id)


def frame_member(key: str, i: int) -> str:
    return f"{key}.{i}.jpg"


def json_member(key: str) -> str:
    return f"{key}.json"


def sample_json(clip: Mapping, split: str, decoded: Mapping, size: int) -> dict:
    """The json member of one sample: the clip record (``clip_id``, ``path``, ``captions`` and any
    ground truth) and what the decoder reported (``duration``, ``fps``, ``n_frames``, ``indices``,
    ``timestamps``, ``decoder``, ``repeated``, ``notes``)."""
    meta = {
        "clip_id": clip["clip_id"], "split": split, "captions": clip["captions"],
        "source": clip["path"], "duration": round(decoded["duration"], 6), "fps": round(decoded["fps"], 6),
        "n_frames": decoded["n_frames"], "frame_indices": decoded["indices"],
        "timestamps": [round(t, 6) for t in decoded["timestamps"]], "decoder": decoded["decoder"],
        "repeated_frames": decoded["repeated"], "size": size,
    }
    if decoded.get("notes"):
        meta["decoder_notes"] = decoded["notes"]
    for name in GROUND_TRUTH_FIELDS:
        if name in clip:
            meta[name] = clip[name]
    return meta


class ShardTar:
    """One shard's tar, built in memory (a shard is ~256 clips x 5 small JPEGs) and handed over as
    bytes, so the caller writes it atomically and records its sha256."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.GNU_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def add_sample(self, clip_id: str, jpegs: Sequence[bytes], meta: dict) -> None:
        key = sample_key(clip_id)
        for i, jpg in enumerate(jpegs):
            self._add(frame_member(key, i), jpg)
        self._add(json_member(key), json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())

    def finish(self) -> tuple[bytes, str]:
        """The tar's bytes and their sha256 (the manifest's)."""
        self._tar.close()
        data = self._buf.getvalue()
        return data, hashlib.sha256(data).hexdigest()
