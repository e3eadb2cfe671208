"""The shard format, and its one reader: webdataset's tar stages with vidcap's checks as stages.

A shard is a plain, uncompressed tar of samples: ``KEY.0.jpg`` .. ``KEY.{K-1}.jpg`` and ``KEY.json``.
KEY is the clip id percent-encoded outside ``[A-Za-z0-9_-]`` (``clip.1`` -> ``clip%2E1``,
``/a/b`` -> ``%2Fa%2Fb``): webdataset splits keys at the first dot, so dots must go, and the
encoding is reversible (``urllib.parse.unquote``), so two clip ids never share a key, and every
member name is one flat, relative name. (The writer beside it: ``writer.py``; job 1 runs it: ``vidcap.pipeline.frames_job``.)

Shards are untrusted input, read from wherever the build lives (:mod:`vidcap.shards.store`). Reading one
is a pipeline of webdataset stages with three checks of ours around them:

1. **open** (ours, in place of webdataset's ``url_opener``): the shard's bytes are read once, hashed
   as they arrive and capped at the manifest's byte count (a server that never stops sending is an
   error, not an out-of-memory). Then its tar headers are checked -- flat safe names, regular files
   only (webdataset would skip a symlink silently), no compression (webdataset would inflate a gzip
   bomb), each member within its size limit, complete and contiguous samples -- and only then the
   manifest's byte count, sha256 and sample count (a shard cut at a sample boundary is a valid tar
   with fewer samples). So **no sample of a shard is released before the whole shard matched its
   manifest**: a mismatch found at the end of the stream raises a ShardError and none of its
   samples reaches a shuffle buffer or a training step. The cost is one shard in memory per reader
   (its manifest size: ~20 MB for 256 clips at 224 px), bought to avoid reading a remote shard twice.
2. **expand and group** (webdataset's ``tar_file_expander`` and ``group_by_keys``).
3. **check** (ours, a map stage): parseable json whose clip id matches its key, captions, objects,
   exactly the manifest's K frames, each a JPEG whose header says the manifest's size.

A problem is a ShardError naming the shard, the sample key and the problem. Nothing is ever
extracted to disk. Which shards a split has, and what the manifest says, is :mod:`vidcap.shards.layout`'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from PIL import Image
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from vidcap.errors import UserError
from vidcap.shards.store import LocalStore, NotFound, Store, limit_bytes, limit_text, read_limited
from vidcap.shards.writer import sample_key

OBJECT_FIELDS = ("shape", "colour", "size", "action")  # a built-in clip's ground truth (pipeline synth)
_MEMBER = re.compile(r"^([A-Za-z0-9_%-]+)\.(json|\d{1,2}\.jpg)$")
MAX_JSON_BYTES = 4 << 20
MAX_JPEG_BYTES = 32 << 20


def nuisances_problem(value: object) -> str | None:
    """Why a clip's ``nuisances`` is malformed (None: fine): an object of at most 32 names, each a
    finite number or a short word -- what ``pipeline synth --world real`` records per clip."""
    if not isinstance(value, dict) or len(value) > 32:
        return "must be an object of at most 32 entries"
    for k, v in value.items():
        if not (isinstance(k, str) and len(k) <= 64):
            return "names must be strings of at most 64 characters"
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) or \
            (isinstance(v, str) and len(v) <= 128)
        if not ok:
            return f"{k!r}: must be a finite number or a string of at most 128 characters"
    return None


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def footage_problem(value: object) -> str | None:
    """Why a clip's ``footage`` is malformed (None: fine): the real scene behind a clip of the
    realistic built-in world (``pipeline.footage.record``) -- an object with a ``source`` file name and
    at most 16 entries, each a finite number, a bool, a short string or a list of at most 8 numbers."""
    if not isinstance(value, dict) or len(value) > 16 or not isinstance(value.get("source"), str):
        return "must be an object of at most 16 entries with a source string"
    for k, v in value.items():
        ok = isinstance(k, str) and len(k) <= 64 and (
            _finite(v) or isinstance(v, bool) or (isinstance(v, str) and len(v) <= 128)
            or (isinstance(v, list) and len(v) <= 8 and all(_finite(x) for x in v)))
        if not ok:
            return f"{str(k)[:64]!r}: must be a finite number, a bool, a short string or a list of at most 8 numbers"
    return None


class ShardError(UserError):
    """A shard that cannot be used: the message names the shard, the sample key and the problem."""


@dataclass(frozen=True)
class Expect:
    """What the manifest promises about every sample of a shard."""

    frames: int
    size: int


@dataclass(frozen=True)
class ShardRef:
    """One manifest entry: the shard's name inside ``shards/`` and what it must contain."""

    name: str
    url: str  # for messages: the path or URL it is read from
    samples: int
    sha256: str
    bytes: int


# ---- 1. open: read, hash, check headers and manifest -----------------------------------------

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


def _scan_headers(data: bytes, label: str) -> int:
    """Check every member header of an in-memory tar; return its number of samples."""
    keys: list[str] = []
    names: set[str] = set()
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # uncompressed only: no gzip bombs
        for m in tar:
            key = m.name.rsplit("/", 1)[-1].partition(".")[0]
            problem = _member_problem(m)
            if problem:
                raise ShardError(f"{label}: sample {key or '?'}: {problem}")
            if not keys or keys[-1] != key:
                if key in keys:
                    raise ShardError(f"{label}: sample {key}: appears twice (members not contiguous)")
                keys.append(key)
            if m.name in names:
                raise ShardError(f"{label}: sample {key}: member {m.name!r} appears twice")
            names.add(m.name)
            if m.offset_data + m.size > len(data):
                raise tarfile.ReadError("unexpected end of data")
    except tarfile.TarError as e:
        where = f"sample {keys[-1]}: " if keys else ""
        raise ShardError(f"{label}: {where}truncated or not a tar file ({e})") from None
    return len(keys)


def read_verified(store: Store, ref: ShardRef) -> bytes:
    """The shard's bytes, once they hashed to the manifest's sha256 (see the module docstring)."""
    rel = f"shards/{ref.name}"
    if isinstance(store, LocalStore):  # the local messages of issue 10 (a FIFO would block the read)
        path = store.local_path(rel)
        if not path.exists():
            raise ShardError(f"{ref.url}: missing (listed in the manifest)")
        if not path.is_file():
            raise ShardError(f"{ref.url}: not a regular file")
    sha = hashlib.sha256()
    if ref.bytes > limit_bytes("shard"):  # the manifest is checked too; a ShardRef may come from elsewhere
        raise ShardError(f"{ref.url}: the manifest says {ref.bytes} bytes, more than {limit_text('shard')}")
    try:
        f = store.open(rel, ref.bytes)
    except NotFound:
        raise ShardError(f"{ref.url}: missing (listed in the manifest)") from None
    except UserError as e:
        raise ShardError(str(e)) from None
    try:
        with f:  # at most the manifest's bytes + 1, within the per-file deadline; hashed as it arrives
            chunks, n = read_limited(f, ref.url, ref.bytes, "shard", sha.update)
    except UserError as e:
        raise ShardError(str(e)) from None
    except Exception as e:  # a server gone mid-shard, a failed pipe: command...
        raise ShardError(f"{ref.url}: cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    data = b"".join(chunks)
    samples = _scan_headers(data, ref.url)  # the most specific message first: which sample, what is wrong
    if sha.hexdigest() != ref.sha256 or n != ref.bytes or samples != ref.samples:
        size = f"more than {ref.bytes}" if n > ref.bytes else str(n)
        raise ShardError(f"{ref.url}: {samples} samples and {size} bytes, but the manifest says {ref.samples} samples "
                         f"and {ref.bytes} bytes{'' if sha.hexdigest() == ref.sha256 else ' with another sha256'} "
                         "(truncated or rewritten since the build); run `pipeline build` again")
    return data


# ---- 3. check one sample ----------------------------------------------------------------------

def _frame_problem(i: int, jpeg: bytes, size: int | None) -> str | None:
    try:
        with warnings.catch_warnings():  # only the header is read; its size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(jpeg)) as img:
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
    return None


def _sample_problem(key: str, meta_bytes: bytes | None, frames: dict[int, bytes], expect: Expect | None
                    ) -> tuple[str | None, dict | None]:
    if meta_bytes is None:
        return "no json member", None
    try:
        meta = json.loads(meta_bytes)
    except (ValueError, RecursionError) as e:
        return f"json: not valid JSON ({str(e).splitlines()[0][:80]})", None
    if not isinstance(meta, dict) or not isinstance(meta.get("clip_id"), str):
        return "json: no clip_id string", None
    if sample_key(meta["clip_id"]) != key:
        return f"json: clip_id {meta['clip_id']!r} does not match the key", None
    caps = meta.get("captions")
    if not (isinstance(caps, list) and caps and all(isinstance(c, str) and c.strip() for c in caps)):
        return "json: captions is not a non-empty list of non-empty strings", None
    problem = nuisances_problem(meta["nuisances"]) if "nuisances" in meta else None
    if problem:
        return f"json: nuisances: {problem}", None
    problem = footage_problem(meta["footage"]) if "footage" in meta else None
    if problem:
        return f"json: footage: {problem}", None
    objects = meta.get("objects")
    if objects is not None and not (isinstance(objects, list) and all(
            isinstance(o, dict) and all(isinstance(o.get(f), str) for f in OBJECT_FIELDS) for o in objects)):
        return f"json: objects is not a list of {{{', '.join(OBJECT_FIELDS)}}} strings", None
    k = expect.frames if expect else len(frames)
    if sorted(frames) != list(range(k)) or k == 0:
        missing = sorted(set(range(k)) - set(frames))
        return (f"frame {', '.join(map(str, missing))} missing" if missing
                else f"frames {sorted(frames)}, expected 0..{k - 1}"), None
    size = expect.size if expect else meta.get("size")
    for i in range(k):
        problem = _frame_problem(i, frames[i], size)
        if problem:
            return problem, None
    return None, meta


def check_sample(raw: dict, label: str, expect: Expect | None) -> dict:
    """A webdataset sample ({"__key__", "json", "0.jpg", ...}) checked and normalised to
    {"key", "shard", "json": dict, "frames": [jpeg bytes, in order]}; a ShardError otherwise."""
    key = raw["__key__"]
    frames = {int(ext.split(".")[0]): v for ext, v in raw.items() if ext.endswith(".jpg")}
    problem, meta = _sample_problem(key, raw.get("json"), frames, expect)
    if problem:
        raise ShardError(f"{label}: sample {key}: {problem}")
    return {"key": key, "shard": label, "json": meta, "frames": [frames[i] for i in sorted(frames)]}


# ---- the reader ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slice:
    """Samples [start, stop) of one shard (the part of it one rank reads)."""

    ref: ShardRef
    start: int = 0
    stop: int | None = None


def checked_samples(slices: Iterable[Slice], store: Store, expect: Expect | None) -> Iterator[dict]:
    """The webdataset pipeline of one reader: open+verify (ours) -> tar_file_expander ->
    group_by_keys (webdataset) -> check (ours), for each shard slice in order. Samples outside a
    slice are dropped before their check (their shard was verified as a whole when opened)."""
    for sl in slices:
        source = {"url": sl.ref.url, "stream": io.BytesIO(read_verified(store, sl.ref))}
        grouped = group_by_keys(tar_file_expander([source], handler=reraise_exception), handler=reraise_exception)
        for raw in islice(grouped, sl.start, sl.stop):
            yield check_sample(raw, sl.ref.url, expect)


def iter_samples(store: Store, ref: ShardRef, expect: Expect | None = None) -> Iterator[dict]:
    """Every sample of one shard, verified and checked, in file order."""
    return checked_samples([Slice(ref)], store, expect)
