"""The one owner of a `pipeline build` output's layout: every file's name, schema and reader/writer.

```
OUT/build.json                     summary (config, clips per split, failures, timings)
OUT/failures.jsonl                 one line per clip that could not be decoded
OUT/vocab.json                     {"itos": [<pad> <bos> <eos> <unk> words...], "min_count", "max_len", "counts"}
OUT/attributes.parquet             attribute_id int32, word, pos, clip_count int64   (metadata: spacy_model)
OUT/clip_attributes.parquet        clip_id, split, attribute_ids list<int32>
OUT/cider_df.parquet               ngram, n int8, df int32                          (metadata: n_docs, max_len)
OUT/shards/manifest-{split}.json   {"split", "samples", "frames", "size", "quality", "shards": [{name, samples, sha256, bytes}]}
OUT/shards/{split}-NNNNNN.tar      samples (format and reader: vidcap.shards.reader)
OUT/shards/{split}-NNNNNN_stats.json   per-shard counts;   OUT/shards/.state/{stem}.json   resume sidecar
```

The pipeline writes through the ``write_*`` functions; the trainer, ``pipeline inspect``,
``evalkit score``, the feature cache and ``train eval`` read through :class:`Build` (and
:class:`DataInfo`, the trainer's view of one), from wherever the build lives (:mod:`vidcap.shards.store`:
a folder, an fsspec URL, ``pipe:``).

Why in evalkit: ``evalkit score --refs OUT`` reads a split's references from a build, and evalkit
is the bottom layer -- ``pipeline`` and ``train`` import it, it imports neither (``model`` imports
nothing of the project). A layout owner inside ``pipeline`` would make evalkit import up the layers,
as it did before; a package of its own would still need evalkit's errors and atomic writes, so the
two would import each other. evalkit already owned half of this (the CIDEr-D df the reward reads).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidcap.atomic import write_bytes_atomic, write_json_atomic
from vidcap.errors import UserError
from vidcap.jsonfile import parse_json
from vidcap.shards.reader import Expect, ShardError, ShardRef, Slice, checked_samples
from vidcap.shards.store import LocalStore, Store, limit_bytes, limit_text, open_store
from vidcap.tokens import SPECIALS

SPLITS = ("train", "val", "test")
BUILD_JSON, FAILURES, VOCAB = "build.json", "failures.jsonl", "vocab.json"
ATTRIBUTES, CLIP_ATTRIBUTES, CIDER_DF = "attributes.parquet", "clip_attributes.parquet", "cider_df.parquet"
SHARDS = "shards"
# What a finished build writes besides shards; removed when a build starts, written when it ends.
BUILD_OUTPUTS = (BUILD_JSON, FAILURES, VOCAB, ATTRIBUTES, CLIP_ATTRIBUTES, CIDER_DF)
# The contract of this layout is docs/shards.md; its format version (MAJOR.MINOR) is in every manifest
# and in build.json. MINOR: additions a reader may ignore; MAJOR: anything else, refused by readers.
# 1.1: the optional `nuisances` (sample json) and `heldout_triples` (build.json); 1.2: the optional `footage`
FORMAT_VERSION = "1.2"

ATTRIBUTES_SCHEMA = pa.schema([("attribute_id", pa.int32()), ("word", pa.string()), ("pos", pa.string()),
                               ("clip_count", pa.int64())])


def check_format_version(value: object, where: str) -> None:
    """Refuse a build whose format major version is not ours (absent: 1.0, builds made before the field)."""
    if value is None:
        return
    found = re.fullmatch(r"(\d+)\.(\d+)", value) if isinstance(value, str) else None
    if found is None:
        raise ShardError(f"{where}: format_version {value!r} is not MAJOR.MINOR; run `pipeline build` again")
    major = FORMAT_VERSION.split(".")[0]
    if found.group(1) != major:
        raise ShardError(f"{where}: shard format version {value}, but this vidcap reads version {major}.x "
                         "(docs/shards.md); rebuild with this vidcap's `pipeline build`")


def shard_stem(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def manifest_rel(split: str) -> str:
    return f"{SHARDS}/manifest-{split}.json"


def stats_rel(stem: str) -> str:
    return f"{SHARDS}/{stem}_stats.json"


def state_rel(stem: str) -> str:
    return f"{SHARDS}/.state/{stem}.json"


# ---- writing (pipeline build) -----------------------------------------------------------------

def _write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


def write_manifest(out: Path, split: str, shards: list[dict], frames: int, size: int, quality: int) -> None:
    """shards: [{"name": "train-000000.tar", "samples", "sha256", "bytes"}] in order."""
    write_json_atomic(out / manifest_rel(split), {"format_version": FORMAT_VERSION, "split": split,
                                                  "samples": sum(s["samples"] for s in shards),
                                                  "frames": frames, "size": size, "quality": quality, "shards": shards})


def write_vocab(out: Path, vocab: dict) -> None:
    write_json_atomic(out / VOCAB, vocab)


def write_attributes(out: Path, ranked: list[dict], spacy_model: str) -> None:
    _write_parquet(out / ATTRIBUTES, pa.Table.from_pylist(
        ranked, schema=ATTRIBUTES_SCHEMA.with_metadata({"spacy_model": spacy_model})))


def write_clip_attributes(out: Path, clip_ids: list[str], splits: list[str], labels: list[list[int]]) -> None:
    _write_parquet(out / CLIP_ATTRIBUTES, pa.table({"clip_id": clip_ids, "split": splits,
                                                    "attribute_ids": pa.array(labels, pa.list_(pa.int32()))}))


def write_cider_df(out: Path, df: dict[tuple[str, ...], int], n_docs: int, max_len: int) -> None:
    grams = sorted(df, key=lambda g: (len(g), g))
    _write_parquet(out / CIDER_DF, pa.table({"ngram": [" ".join(g) for g in grams],
                                             "n": pa.array([len(g) for g in grams], pa.int8()),
                                             "df": pa.array([df[g] for g in grams], pa.int32())},
                                            metadata={"n_docs": str(n_docs), "max_len": str(max_len)}))


def write_failures(out: Path, failures: list[dict]) -> None:
    write_bytes_atomic(out / FAILURES, "".join(json.dumps(f) + "\n" for f in failures).encode())


def write_summary(out: Path, summary: dict) -> None:
    write_json_atomic(out / BUILD_JSON, summary)


# ---- reading ------------------------------------------------------------------------------------

def read_parquet(data: bytes) -> pa.Table:
    """A Parquet file's table, read on this thread. Not ``pq.read_table``: it goes through
    pyarrow.dataset, which starts Arrow's thread pools, and a process that exits moments later (a
    one-line error right after loading a build) then aborts in C++ ("terminate called without an
    active exception", SIGABRT) when the machine is loaded -- 5 of 16 runs with torch imported and
    both cores busy; 0 of 16 this way. The tables are small: threads buy nothing here."""
    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(use_threads=False)


@dataclass
class SplitData:
    """A split after one verifying pass: the shards that passed and every sample's json."""

    refs: list[ShardRef]
    metas: list[dict]
    expect: Expect


_WARNED: set = set()  # shards and split summaries already warned about in this process


class Build:
    """A `pipeline build` output, read through its store; every problem is one UserError naming the file."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.store: Store = open_store(root)
        self._splits: dict[tuple[str, bool], SplitData] = {}
        self._files: dict[str, bytes] = {}  # small files already fetched (a remote build is read once)

    @property
    def is_local(self) -> bool:
        return isinstance(self.store, LocalStore)

    def url(self, rel: str) -> str:
        return self.store.url(rel)

    def _read(self, rel: str, what: str) -> bytes:
        if rel not in self._files:
            self._files[rel] = self.store.read_bytes(rel, what)
        return self._files[rel]

    def _exists(self, rel: str) -> bool:
        if self.is_local:
            return self.store.exists(rel)
        data = self._files.get(rel) or self.store.read_optional(rel)
        if data is not None:
            self._files[rel] = data
        return data is not None

    def _json(self, rel: str, what: str):
        return parse_json(self._read(rel, what), self.url(rel))

    def _table(self, rel: str) -> pa.Table:
        data = self._read(rel, "table")
        try:
            return read_parquet(data)
        except Exception as e:  # not Parquet, or damaged: the message names the file, not pyarrow's internals
            raise UserError(f"{self.url(rel)}: not a Parquet table ({type(e).__name__}); rebuild with "
                            "`pipeline build`") from None

    def _rows(self, rel: str, columns: dict[str, type]) -> list[dict]:
        rows = self._table(rel).to_pylist()
        if not all(isinstance(r.get(c), t) for r in rows for c, t in columns.items()):
            raise UserError(f"{self.url(rel)}: expected columns {', '.join(columns)}; rebuild with `pipeline build`")
        return rows

    def require(self, *names: str) -> None:
        """Each of `names` exists, else 'URL: missing; is ROOT a complete `pipeline build` output?'."""
        for name in names:
            if not self._exists(name):
                raise UserError(f"{self.url(name)}: missing; is {self.root} a complete `pipeline build` output?")

    def summary(self) -> dict:
        """build.json (and the difference between a killed build and no build at all)."""
        if not self._exists(BUILD_JSON):
            if self._exists(SHARDS):
                raise UserError(f"{self.root}: the build is incomplete (no build.json: killed, failed or still "
                                "running); run `pipeline build` again")
            raise UserError(f"{self.root}: not a pipeline output (no build.json); run `pipeline build` first")
        build = self._json(BUILD_JSON, "build summary")
        if isinstance(build, dict):
            check_format_version(build.get("format_version"), self.url(BUILD_JSON))
        if not (isinstance(build, dict) and isinstance(build.get("config"), dict)):
            raise UserError(f"{self.url(BUILD_JSON)}: not a build summary")
        return build

    def vocab(self) -> dict:
        vocab = self._json(VOCAB, "vocabulary")
        itos = vocab.get("itos") if isinstance(vocab, dict) else None
        if not (isinstance(itos, list) and itos[:4] == list(SPECIALS) and all(isinstance(w, str) for w in itos)
                and len(set(itos)) == len(itos)):
            raise UserError(f"{self.url(VOCAB)}: not a vidcap vocabulary (distinct words, starting with "
                            f"{', '.join(SPECIALS)})")
        return vocab

    def attributes(self) -> list[dict]:
        return self._rows(ATTRIBUTES, {"word": str, "pos": str})

    def clip_attributes(self, n_attributes: int) -> dict[str, list[int]]:
        rows = self._rows(CLIP_ATTRIBUTES, {"clip_id": str, "attribute_ids": list})
        if any(not (isinstance(a, int) and 0 <= a < n_attributes) for r in rows for a in r["attribute_ids"]):
            raise UserError(f"{self.url(CLIP_ATTRIBUTES)}: attribute ids outside 0..{n_attributes - 1}; rebuild "
                            "with `pipeline build`")
        return {r["clip_id"]: r["attribute_ids"] for r in rows}

    def cider_df(self) -> tuple[dict[tuple[str, ...], float], int]:
        """CIDEr-D document frequencies and the number of documents (the reward's idf)."""
        try:
            table = read_parquet(self._read(CIDER_DF, "table"))
            grams, dfs = table.column("ngram").to_pylist(), table.column("df").to_pylist()
            df = {tuple(g.split(" ")): float(d) for g, d in zip(grams, dfs, strict=True)}
            n_docs = int((table.schema.metadata or {})[b"n_docs"])
        except UserError:
            raise
        except Exception as e:  # not Parquet, other columns, no n_docs: whatever it is, it is not ours
            raise UserError(f"{self.url(CIDER_DF)}: not a CIDEr-D df table written by `pipeline build` "
                            f"({type(e).__name__}); rebuild with `pipeline build`") from None
        return df, n_docs

    def shard_stats(self, stem: str) -> dict | None:
        """A shard's stats file, or None when absent or not a stats object (built before they existed)."""
        rel = stats_rel(stem)
        if not self._exists(rel):
            return None
        st = self._json(rel, "stats file")
        ok = (isinstance(st, dict) and all(isinstance(st.get(k), int) for k in ("count", "successes", "failed"))
              and isinstance(st.get("failures_by_reason", {}), dict))
        return st if ok else None

    # ---- shards ----
    def manifest(self, split: str) -> dict:
        """A split's manifest, with its schema checked (shard names are plain names inside shards/)."""
        rel = manifest_rel(split)
        url = self.url(rel)
        if not self._exists(rel):
            raise ShardError(f"{url}: no manifest for split {split!r} (build incomplete or not a `pipeline build` "
                             "output); run `pipeline build` first")
        try:
            m = json.loads(self._read(rel, "manifest"))
        except (ValueError, RecursionError):
            raise ShardError(f"{url}: not valid JSON; run `pipeline build` again") from None
        if isinstance(m, dict):
            check_format_version(m.get("format_version"), url)
        ok = (isinstance(m, dict) and isinstance(m.get("shards"), list) and isinstance(m.get("frames"), int)
              and isinstance(m.get("size"), int) and 1 <= m["frames"] <= 64 and 16 <= m["size"] <= 1024)
        if not ok:
            raise ShardError(f"{url}: not a shard manifest (frames 1..64, size 16..1024, shards); run `pipeline build` again")
        for i, s in enumerate(m["shards"]):
            if not (isinstance(s, dict) and isinstance(s.get("name"), str)
                    and re.fullmatch(rf"{split}-[0-9]{{6}}\.tar", s["name"]) and isinstance(s.get("samples"), int) and s["samples"] >= 0
                    and isinstance(s.get("bytes"), int) and isinstance(s.get("sha256"), str)):
                raise ShardError(f"{url}: shards[{i}]: expected name {split}-NNNNNN.tar, samples, bytes, sha256; "
                                 "run `pipeline build` again")
            if not 0 <= s["bytes"] <= limit_bytes("shard"):  # a reader holds a shard in memory (H-11: 10^12)
                raise ShardError(f"{url}: shards[{i}]: bytes {s['bytes']} is more than {limit_text('shard')}")
        return m

    def shard_refs(self, split: str) -> tuple[list[ShardRef], Expect]:
        """The split's non-empty shards as the manifest lists them (not yet verified)."""
        m = self.manifest(split)
        refs = [ShardRef(s["name"], self.url(f"{SHARDS}/{s['name']}"), s["samples"], s["sha256"], s["bytes"])
                for s in m["shards"] if s["samples"]]
        return refs, Expect(m["frames"], m["size"])

    def split(self, split: str, skip_bad: bool = False) -> SplitData:
        """One pass over the split: every shard verified (bytes, sha256, samples, members) and every
        sample's json kept. A bad shard is a ShardError, or with `skip_bad` a warning (once per
        process) and the shard is left out. Cached per Build."""
        if (split, skip_bad) in self._splits:
            return self._splits[(split, skip_bad)]
        refs, expect = self.shard_refs(split)
        good, bad, metas = [], [], []
        for ref in refs:
            try:
                found = [s["json"] for s in checked_samples([Slice(ref)], self.store, expect)]
            except ShardError as e:
                if not skip_bad:
                    raise
                bad.append(ref)
                if ref not in _WARNED:
                    _WARNED.add(ref)
                    print(f"warning: skipping a bad shard: {e}", file=sys.stderr)
                continue
            good.append(ref)
            metas += found
        if bad and (self.root, split, tuple(bad)) not in _WARNED:
            _WARNED.add((self.root, split, tuple(bad)))
            lost = sum(r.samples for r in bad)
            print(f"warning: {len(bad)} of {len(refs)} {split} shards skipped: {lost} of "
                  f"{sum(r.samples for r in good) + lost} samples left out", file=sys.stderr)
        self._splits[(split, skip_bad)] = SplitData(good, metas, expect)
        return self._splits[(split, skip_bad)]

    def set_split(self, split: str, skip_bad: bool, data: SplitData) -> None:
        """Adopt a pass made elsewhere (under torchrun, rank 0's, broadcast to the other ranks)."""
        self._splits[(split, skip_bad)] = data

    def references(self, split: str) -> dict[str, list[str]]:
        return {m["clip_id"]: m["captions"] for m in self.split(split).metas}


@dataclass
class DataInfo:
    """What the trainer needs from a build besides the frames: a thin view of :class:`Build`."""

    build: Build
    itos: list[str]
    stoi: dict[str, int]
    attributes: list[str]
    attribute_pos: list[str]  # NOUN / VERB / ADJ of each attribute
    labels: dict[str, list[int]]  # clip id -> attribute ids
    n_frames: int
    frame_size: int  # side of the frames in the shards, in pixels
    skip_bad_shards: bool = False  # leave out (with a warning) shards that fail their manifest check

    @classmethod
    def load(cls, root: str | Path, skip_bad_shards: bool = False) -> DataInfo:
        build = Build(root)
        build.require(VOCAB, ATTRIBUTES, CLIP_ATTRIBUTES, CIDER_DF)
        itos = build.vocab()["itos"]
        attr_rows = build.attributes()
        labels = build.clip_attributes(len(attr_rows))
        _, expect = build.shard_refs("train")
        return cls(build, itos, {w: i for i, w in enumerate(itos)}, [r["word"] for r in attr_rows],
                   [r["pos"] for r in attr_rows], labels, expect.frames, expect.size, skip_bad_shards)

    @property
    def root(self) -> str:
        return self.build.root

    @property
    def expect(self) -> Expect:
        return Expect(self.n_frames, self.frame_size)

    def split(self, split: str) -> SplitData:
        """The split's verified shards and sample metadata (one pass, cached)."""
        return self.build.split(split, self.skip_bad_shards)

    def shards(self, split: str) -> list[ShardRef]:
        return self.split(split).refs

    def metadata(self, split: str) -> list[dict]:
        return self.split(split).metas

    def attr_vector(self, clip_id: str) -> np.ndarray:
        v = np.zeros(len(self.attributes), dtype=np.float32)
        v[self.labels.get(clip_id, [])] = 1.0
        return v
