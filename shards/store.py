"""Where a `pipeline build` output lives: a local folder, a ``file://``, ``http(s)://`` or other
fsspec URL (``s3://``, ``gs://`` when that backend is installed), or a ``pipe:`` command.

A store reads one file of the build by its relative name (``vocab.json``,
``shards/manifest-train.json``) and opens a shard as a stream. Nothing else in vidcap opens a build
file: names belong to :mod:`vidcap.shards.layout`, bytes come from here. Every failure is one
:class:`UserError` naming the URL -- ``URL: not found`` or ``URL: cannot read (why)`` -- so a dead
server or a missing shard reaches the user as one line through the one user-error path.

- Local folders are read with plain ``open`` (after an ``os.stat``: a FIFO or a device among the
  build files would block or never end), so messages name the path as the user typed it.
- fsspec URLs go through ``fsspec.core.url_to_fs``; http(s) streams with aiohttp (``block_size=0``)
  with connect/read timeouts, so a stalled server is an error, not a hang. A file that does not
  exist (HTTP 404) is :class:`NotFound`; an unreachable server is not, so nothing mistakes a
  dead server for an incomplete build.
- ``pipe:CMD`` runs CMD through webdataset's ``gopen`` (a shell, like webdataset's own ``pipe:``
  shards): ``{}`` in CMD is replaced by the file's relative name, else the name is appended
  (``pipe:cat /data/out/`` reads ``cat /data/out/vocab.json``). A non-zero exit is an error (a
  command cannot tell "missing" from "failed", so optional files -- per-shard stats -- are errors too).
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from vidcap.errors import UserError

HTTP_CONNECT_TIMEOUT_S = 30
HTTP_READ_TIMEOUT_S = 120
_CHUNK = 1 << 20

# Limits of every read from a build, each a setting (an environment variable, read when a read starts):
# a lying server made the readers hold whatever it sent (a manifest claiming a 10^12-byte shard, a
# gzip-encoded manifest inflating 2 MB to GBs, an endless vocab.json: round 3, H-11..H-13), and a
# server trickling one byte every 2 s never tripped the per-read timeout (H-15). Bytes are counted
# after any Content-Encoding is undone, so a compressed bomb stops at the same limit.
LIMITS_MB = {"json": ("VIDCAP_MAX_JSON_MB", 64),        # build.json, manifests, vocab.json, stats (real: < 5 MB)
             "table": ("VIDCAP_MAX_TABLE_MB", 512),     # attributes / clip attributes / df Parquet (real: < 50 MB)
             "shard": ("VIDCAP_MAX_SHARD_MB", 4096)}    # one shard, held in memory while verified
DEADLINE = ("VIDCAP_READ_DEADLINE_S", 900.0)          # the whole of one file, every byte of it


def _setting(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 1e12):
        raise UserError(f"{name}={text}: must be a number > 0")
    return value


def limit_bytes(kind: str) -> int:
    """The most bytes one file of `kind` (json, table, shard) may have."""
    name, default = LIMITS_MB[kind]
    return int(_setting(name, default) * (1 << 20))


def limit_text(kind: str) -> str:
    name, _ = LIMITS_MB[kind]
    return f"{limit_bytes(kind) / (1 << 20):g} MB ({name})"


def deadline_s() -> float:
    return _setting(*DEADLINE)


def read_limited(f: BinaryIO, url: str, limit: int, kind: str, on_chunk=None) -> tuple[list[bytes], int]:
    """Read `f` to its end in chunks: at most ``limit + 1`` bytes (the caller sees one byte too many
    when the file is longer) and within the per-file deadline, else one line naming the URL and
    the limit. ``on_chunk`` sees each chunk (the shard reader hashes them as they arrive)."""
    seconds = deadline_s()
    end, chunks, n = time.monotonic() + seconds, [], 0
    while n <= limit:
        if time.monotonic() > end:
            raise UserError(f"{url}: not read within {seconds:g} s (the deadline for one file, "
                            f"{DEADLINE[0]}); {n} bytes arrived")
        chunk = f.read(min(_CHUNK, limit + 1 - n))
        if not chunk:
            break
        if on_chunk is not None:
            on_chunk(chunk)
        chunks.append(chunk)
        n += len(chunk)
    if n > limit and kind != "shard":  # the shard reader says more: what the manifest promised
        raise UserError(f"{url}: larger than {limit_text(kind)}; not a {kind} file of a build")
    return chunks, n


def kind_of(rel: str) -> str:
    return "table" if rel.endswith(".parquet") else "shard" if rel.endswith(".tar") else "json"


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}" if not isinstance(e, OSError) or not e.strerror else text[:200]


class NotFound(UserError):
    """The file (or URL) does not exist -- as opposed to a server or command that cannot be reached."""


class Store:
    """A build's files by relative name (``a/b`` with forward slashes)."""

    root: str

    def url(self, rel: str) -> str:
        """The full URL (or path) of `rel`, as messages show it."""
        raise NotImplementedError

    def local_path(self, rel: str) -> Path | None:
        """`rel` as a local path, for readers that need one (DALI); None when the build is remote."""
        return None

    def read_bytes(self, rel: str, what: str = "file") -> bytes:
        """The whole file; NotFound ``URL: WHAT not found``, or a UserError ``URL: cannot read (...)``."""
        raise NotImplementedError

    def read_optional(self, rel: str, what: str = "file") -> bytes | None:
        """The whole file, or None when it does not exist (an unreachable server is still an error)."""
        try:
            return self.read_bytes(rel, what)
        except NotFound:
            return None

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        """A read stream (shards); `size` is the expected byte count, when known."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        """Whether `rel` (a file or folder) exists; remote stores fetch it to know."""
        return self.read_optional(rel) is not None


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = str(root)
        self.path = Path(root)

    def url(self, rel: str) -> str:
        return str(self.path / rel)

    def local_path(self, rel: str) -> Path:
        return self.path / rel

    def _check(self, rel: str, what: str) -> Path:
        p = self.path / rel
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise NotFound(f"{p}: {what} not found") from None
        except OSError as e:
            raise UserError(f"{p}: cannot read ({_why(e)})") from None
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{p}: {what} is a directory, expected a file")
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{p}: {what} is not a regular file")
        return p

    def read_bytes(self, rel: str, what: str = "file") -> bytes:
        p = self._check(rel, what)
        limit = limit_bytes(kind_of(rel))
        try:
            with open(p, "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            raise UserError(f"{p}: cannot read ({_why(e)})") from None
        if len(data) > limit:
            raise UserError(f"{p}: larger than {limit_text(kind_of(rel))}; not a {kind_of(rel)} file of a build")
        return data

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        return open(self._check(rel, "file"), "rb")

    def exists(self, rel: str) -> bool:
        return (self.path / rel).exists()


class FsspecStore(Store):
    def __init__(self, root: str):
        import fsspec

        self.root = root
        self.protocol = urlparse(root).scheme
        options: dict = {}
        if self.protocol in ("http", "https"):
            import aiohttp

            deadline = deadline_s()  # a stalled read ends by the deadline too; a trickle, by read_limited
            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=min(HTTP_CONNECT_TIMEOUT_S, deadline),
                sock_read=min(HTTP_READ_TIMEOUT_S, deadline))}
        try:
            self.fs, self.base = fsspec.core.url_to_fs(root, **options)
        except (ImportError, ValueError) as e:  # e.g. s3:// without s3fs
            raise UserError(f"{root}: no fsspec backend for {self.protocol}:// ({_why(e)}); install it "
                            f"(e.g. `pip install s3fs` or `pip install gcsfs`)") from None

    def url(self, rel: str) -> str:
        return self.root.rstrip("/") + "/" + rel

    def _path(self, rel: str) -> str:
        return self.url(rel) if self.protocol in ("http", "https") else posixpath.join(self.base, rel)

    def read_bytes(self, rel: str, what: str = "file") -> bytes:
        """Streamed, never ``cat_file``: that holds whatever the server sends (an endless body, a gzip bomb)."""
        limit = limit_bytes(kind_of(rel))
        try:  # a size given: fsspec skips its HEAD request, which reports a dead server as "not found"
            f = self.open(rel, limit + 1)
        except NotFound:
            raise NotFound(f"{self.url(rel)}: {what} not found") from None
        try:
            with f:
                chunks, _ = read_limited(f, self.url(rel), limit, kind_of(rel))
        except UserError:
            raise
        except FileNotFoundError:
            raise NotFound(f"{self.url(rel)}: {what} not found") from None
        except Exception as e:  # aiohttp, botocore, timeouts...: whatever failed, name the URL
            raise UserError(f"{self.url(rel)}: cannot read ({_why(e)})") from None
        return b"".join(chunks)

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        kw = {"block_size": 0, "size": size} if self.protocol in ("http", "https") else {}
        try:
            return self.fs.open(self._path(rel), "rb", **kw)
        except FileNotFoundError:
            raise NotFound(f"{self.url(rel)}: not found") from None
        except Exception as e:
            raise UserError(f"{self.url(rel)}: cannot read ({_why(e)})") from None

class PipeStore(Store):
    def __init__(self, root: str):
        self.root = root
        self.cmd = root[len("pipe:"):]

    def url(self, rel: str) -> str:
        return "pipe:" + (self.cmd.replace("{}", rel) if "{}" in self.cmd else self.cmd + rel)

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        from webdataset.gopen import gopen

        return gopen(self.url(rel), "rb")

    def read_bytes(self, rel: str, what: str = "file") -> bytes:
        try:
            with self.open(rel) as f:
                chunks, _ = read_limited(f, self.url(rel), limit_bytes(kind_of(rel)), kind_of(rel))
        except UserError:
            raise
        except Exception as e:  # webdataset's Pipe raises IOError("...: exit N") for a failed command
            raise UserError(f"{self.url(rel)}: cannot read ({_why(e)})") from None
        return b"".join(chunks)

def open_store(root: str | Path) -> Store:
    """The store of `root`: a local folder (or ``file://`` URL), ``pipe:CMD``, or any fsspec URL."""
    text = str(root)
    if text.startswith("pipe:"):
        return PipeStore(text)
    scheme = urlparse(text).scheme
    if scheme == "file":
        return LocalStore(unquote(urlparse(text).path))
    if len(scheme) > 1:  # (one letter would be a Windows drive)
        return FsspecStore(text)
    return LocalStore(root)
