"""The shard format and its one reader, used by the trainer, `train eval`, `pipeline inspect` and
`evalkit score`. (Job 1 writes shards: ``pipeline.shard_writer``.)

A shard is a plain, uncompressed tar of samples: ``KEY.0.jpg`` .. ``KEY.{K-1}.jpg`` and ``KEY.json``.
KEY is the clip id percent-encoded outside ``[A-Za-z0-9_-]`` (``clip.1`` -> ``clip%2E1``,
``/a/b`` -> ``%2Fa%2Fb``): webdataset splits keys at the first dot, so dots must go, and the
encoding is reversible (``urllib.parse.unquote``), so two clip ids never share a key, and every
member name is one flat, relative name.

Shards are read as untrusted input. Every reader checks each shard against its split's manifest
(``shards/manifest-{split}.json``) before using it: byte count, sha256 and sample count -- a shard
cut at a sample boundary is a valid tar with fewer samples -- plus every member: a flat safe name,
a regular file (no links), a parseable json whose clip id matches its key, exactly the manifest's K
frames, each a JPEG whose header says the manifest's size. A problem is a ShardError naming the
shard, the sample key and the problem, or, with ``skip_bad=True`` (train: ``skip_bad_shards=true``),
a warning and the shard is left out. The check reads a shard once per process (sha256 and
structure in one sequential pass) and is cached by the file's identity, so "once per shard per run".
Nothing is ever extracted to disk: members are read into memory one at a time.

The whole output's contract -- member names, json fields and types, manifests, stats, Parquet
schemas -- is docs/shards.md; its ``format_version`` (MAJOR.MINOR, in every manifest and in
build.json) is checked here: a reader refuses another major version with a one-line error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import sys
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from evalkit.errors import UserError
from pipeline.adapters import OBJECT_FIELDS

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")
_MEMBER = re.compile(r"^([A-Za-z0-9_%-]+)\.(json|\d{1,2}\.jpg)$")
MAX_JSON_BYTES = 4 << 20
MAX_JPEG_BYTES = 32 << 20
# docs/shards.md. MINOR: additions a reader may ignore; MAJOR: anything else, refused by older readers.
FORMAT_VERSION = "1.0"


class ShardError(UserError):
    """A shard that cannot be used: the message names the shard, the sample key and the problem."""


def sample_key(clip_id: str) -> str:
    """The tar key of a clip id: reversible percent-encoding of everything outside [A-Za-z0-9_-]."""
    return _UNSAFE_KEY_CHARS.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), clip_id)


@dataclass(frozen=True)
class Expect:
    """What the manifest promises about every sample of a shard."""

    frames: int
    size: int


# ---- one shard ------------------------------------------------------------------------------

def _sample_problem(key: str, sample: dict, expect: Expect | None) -> str | None:
    if "json" not in sample:
        return "no json member"
    try:
        meta = json.loads(sample["json"])
    except (ValueError, RecursionError) as e:
        return f"json: not valid JSON ({str(e).splitlines()[0][:80]})"
    if not isinstance(meta, dict) or not isinstance(meta.get("clip_id"), str):
        return "json: no clip_id string"
    if sample_key(meta["clip_id"]) != key:
        return f"json: clip_id {meta['clip_id']!r} does not match the key"
    caps = meta.get("captions")
    if not (isinstance(caps, list) and caps and all(isinstance(c, str) and c.strip() for c in caps)):
        return "json: captions is not a non-empty list of non-empty strings"
    objects = meta.get("objects")
    if objects is not None and not (isinstance(objects, list) and all(
            isinstance(o, dict) and all(isinstance(o.get(f), str) for f in OBJECT_FIELDS) for o in objects)):
        return f"json: objects is not a list of {{{', '.join(OBJECT_FIELDS)}}} strings"
    frames = sample["frames"]
    k = expect.frames if expect else len(frames)
    if sorted(frames) != list(range(k)) or k == 0:
        missing = sorted(set(range(k)) - set(frames))
        return (f"frame {', '.join(map(str, missing))} missing" if missing
                else f"frames {sorted(frames)}, expected 0..{k - 1}")
    size = expect.size if expect else meta.get("size")
    for i in range(k):
        try:
            with warnings.catch_warnings():  # only the header is read; its size is checked below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(frames[i])) as img:
                    fmt, dims = img.format, img.size
        except Image.DecompressionBombError as e:
            pixels = re.search(r"\((\d+) pixels\)", str(e))
            return (f"frame {i}: claims {pixels.group(1) if pixels else 'too many'} pixels (a decompression bomb?), "
                    f"expected {size}x{size}")
        except Exception:
            return f"frame {i}: not an image"
        if fmt != "JPEG":
            return f"frame {i}: {fmt} image, expected JPEG"
        if size is not None and dims != (size, size):
            return f"frame {i}: {dims[0]}x{dims[1]} px, expected {size}x{size}"
    sample["json"] = meta
    return None


def _member_problem(m: tarfile.TarInfo) -> str | None:
    if not m.isreg():
        kind = "symlink" if m.issym() else "hard link" if m.islnk() else "directory" if m.isdir() else "special file"
        return f"member {m.name!r} is a {kind}; only regular files belong in a shard"
    if "/" in m.name or m.name.startswith("."):
        return f"unsafe member name {m.name!r} (absolute, '..' or in a folder)"
    if not _MEMBER.match(m.name):
        return f"unexpected member name {m.name!r}"
    limit = MAX_JSON_BYTES if m.name.endswith(".json") else MAX_JPEG_BYTES
    if m.size > limit:
        return f"member {m.name!r} is {m.size} bytes (more than {limit})"
    return None


def _read_samples(f: BinaryIO, label: str, expect: Expect | None) -> Iterator[dict]:
    """Samples of the tar stream `f`, validated; raises ShardError("LABEL: sample KEY: problem")."""
    seen: set[str] = set()
    current: dict | None = None

    def finish(sample: dict) -> dict:
        problem = _sample_problem(sample["key"], sample, expect)
        if problem:
            raise ShardError(f"{label}: sample {sample['key']}: {problem}")
        return sample

    try:
        tar = tarfile.open(fileobj=f, mode="r|")  # sequential, uncompressed only: no seeking, no gzip bombs
        for m in tar:
            key = m.name.rsplit("/", 1)[-1].partition(".")[0]
            problem = _member_problem(m)
            if problem:
                raise ShardError(f"{label}: sample {key or '?'}: {problem}")
            if current is None or current["key"] != key:
                if current is not None:
                    yield finish(current)
                if key in seen:
                    raise ShardError(f"{label}: sample {key}: appears twice (members not contiguous)")
                seen.add(key)
                current = {"key": key, "shard": label, "frames": {}}
            ext = m.name.split(".", 1)[1]
            data = tar.extractfile(m).read()
            if len(data) != m.size:
                raise tarfile.ReadError("unexpected end of data")
            index = None if ext == "json" else int(ext.split(".")[0])
            if (index is None and "json" in current) or index in current["frames"]:
                raise ShardError(f"{label}: sample {key}: member {m.name!r} appears twice")
            if index is None:
                current["json"] = data
            else:
                current["frames"][index] = data
    except tarfile.TarError as e:
        where = f"sample {current['key']}: " if current is not None else ""
        raise ShardError(f"{label}: {where}truncated or not a tar file ({e})") from None
    if current is not None:
        yield finish(current)


def iter_samples(url: str | Path, expect: Expect | None = None) -> Iterator[dict]:
    """Samples of one shard in file order: {"key", "shard", "json": dict, "frames": {index: jpeg bytes}}.

    Every member is validated as it is read (see the module docstring); `expect` adds the
    manifest's frame count and size (without it, each sample's own json size is checked)."""
    with open(url, "rb") as f:
        yield from _read_samples(f, str(url), expect)


class _Hashing:
    """A read-only stream that hashes what it hands out (sha256 and structure in one pass)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


# ---- a split: manifest + shards ---------------------------------------------------------------

@dataclass(frozen=True)
class ShardRef:
    path: str
    samples: int
    sha256: str
    bytes: int


_CHECKED: dict[tuple, str | None] = {}  # (file identity, manifest entry, expectations) -> problem or None
_WARNED: set = set()  # shards and split summaries already warned about in this process


def _manifest_error(path: Path, what: str) -> ShardError:
    return ShardError(f"{path}: {what}; run `pipeline build` again")


def check_format_version(value: object, path: Path) -> None:
    """Refuse a build whose format major version is not ours (absent: 1.0, builds made before the field)."""
    if value is None:
        return
    found = re.fullmatch(r"(\d+)\.(\d+)", value) if isinstance(value, str) else None
    if found is None:
        raise _manifest_error(path, f"format_version {value!r} is not MAJOR.MINOR")
    major = FORMAT_VERSION.split(".")[0]
    if found.group(1) != major:
        raise ShardError(f"{path}: shard format version {value}, but this vidcap reads version {major}.x "
                         "(docs/shards.md); rebuild with this vidcap's `pipeline build`")


def load_manifest(shard_dir: str | Path, split: str) -> dict:
    """A split's manifest, with its schema checked (shard names are plain names inside shard_dir)."""
    path = Path(shard_dir) / f"manifest-{split}.json"
    if not path.exists():
        raise ShardError(f"{path}: no manifest for split {split!r} (build incomplete or not a `pipeline build` "
                         "output); run `pipeline build` first")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise _manifest_error(path, "not valid JSON") from None
    if isinstance(m, dict):
        check_format_version(m.get("format_version"), path)
    ok = (isinstance(m, dict) and isinstance(m.get("shards"), list) and isinstance(m.get("frames"), int)
          and isinstance(m.get("size"), int) and 1 <= m["frames"] <= 64 and 16 <= m["size"] <= 1024)
    if not ok:
        raise _manifest_error(path, "not a shard manifest (frames 1..64, size 16..1024, shards)")
    for i, s in enumerate(m["shards"]):
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and _SHARD_NAME.match(s["name"])
                and s["name"].startswith(f"{split}-") and isinstance(s.get("samples"), int) and s["samples"] >= 0
                and isinstance(s.get("bytes"), int) and isinstance(s.get("sha256"), str)):
            raise _manifest_error(path, f"shards[{i}]: expected name {split}-NNNNNN.tar, samples, bytes, sha256")
    return m


def check_shard(ref: ShardRef, expect: Expect) -> str | None:
    """None if the shard is exactly what the manifest says, else the ShardError message. Cached."""
    try:
        st = os.stat(ref.path)
    except FileNotFoundError:
        return f"{ref.path}: missing (listed in the manifest)"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a device never end
        return f"{ref.path}: not a regular file"
    ident = (os.path.realpath(ref.path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, ref, expect)
    if ident not in _CHECKED:
        _CHECKED[ident] = _check(ref, expect)
    return _CHECKED[ident]


def _check(ref: ShardRef, expect: Expect) -> str | None:
    n, problem = 0, None
    with open(ref.path, "rb") as raw:
        f = _Hashing(raw)
        try:
            for _ in _read_samples(f, ref.path, expect):
                n += 1
        except ShardError as e:
            problem = str(e)
        f.drain()
    if problem is not None:  # the most specific message: which sample, what is wrong
        return problem
    if f.sha.hexdigest() != ref.sha256 or f.bytes != ref.bytes or n != ref.samples:
        return (f"{ref.path}: {n} samples and {f.bytes} bytes, but the manifest says {ref.samples} samples and "
                f"{ref.bytes} bytes{'' if f.sha.hexdigest() == ref.sha256 else ' with another sha256'} (truncated "
                "or rewritten since the build); run `pipeline build` again")
    return None


def verified_shards(shard_dir: str | Path, split: str, skip_bad: bool = False) -> list[ShardRef]:
    """The split's non-empty shards, each checked against the manifest (see the module docstring)."""
    shard_dir = Path(shard_dir)
    m = load_manifest(shard_dir, split)
    expect = Expect(m["frames"], m["size"])
    good, bad = [], []
    for s in m["shards"]:
        if not s["samples"]:
            continue
        ref = ShardRef(str(shard_dir / s["name"]), s["samples"], s["sha256"], s["bytes"])
        problem = check_shard(ref, expect)
        if problem is None:
            good.append(ref)
        elif skip_bad:
            bad.append(ref)
            if ref not in _WARNED:
                _WARNED.add(ref)
                print(f"warning: skipping a bad shard: {problem}", file=sys.stderr)
        else:
            raise ShardError(problem)
    if bad and (shard_dir, split, tuple(bad)) not in _WARNED:
        _WARNED.add((shard_dir, split, tuple(bad)))
        lost = sum(r.samples for r in bad)
        print(f"warning: {len(bad)} of {len(good) + len(bad)} {split} shards skipped: {lost} of "
              f"{sum(r.samples for r in good) + lost} samples left out", file=sys.stderr)
    return good


def shard_urls(shard_dir: str | Path, split: str, skip_bad: bool = False) -> list[str]:
    """The paths of the split's verified, non-empty shards."""
    return [r.path for r in verified_shards(shard_dir, split, skip_bad)]


def split_expectations(shard_dir: str | Path, split: str) -> Expect:
    m = load_manifest(shard_dir, split)
    return Expect(m["frames"], m["size"])


def read_metadata(shard_dir: str | Path, split: str, skip_bad: bool = False) -> list[dict]:
    """Every sample's json (captions, source, ...) of one split, without decoding any image."""
    expect = split_expectations(shard_dir, split)
    return [s["json"] for url in shard_urls(shard_dir, split, skip_bad) for s in iter_samples(url, expect)]
