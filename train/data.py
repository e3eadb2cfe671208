"""Streaming the pipeline's shards into training batches (the default, CPU loader).

Shards are read sequentially as plain tars; samples are shuffled through a buffer whose order is
a pure function of (seed, epoch), so a resumed run sees exactly the batches an uninterrupted run
would. Work is split across DataLoader workers and distributed ranks by shard, or by sample when
there are fewer shards than readers. JPEGs are decoded with PIL (libjpeg-turbo, DCT-domain
downscaling via ``draft``) in the workers.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from evalkit.errors import UserError
from pipeline.shards import Expect, ShardError, iter_samples, load_manifest, read_metadata, shard_urls
from pipeline.vocab import encode, load_vocab


@dataclass
class DataInfo:
    """What the trainer needs from a `pipeline build` output besides the frames."""

    root: Path
    itos: list[str]
    stoi: dict[str, int]
    attributes: list[str]
    attribute_pos: list[str]  # NOUN / VERB / ADJ of each attribute
    labels: dict[str, list[int]]  # clip id -> attribute ids
    n_frames: int
    shard_size: int  # frame side in the shards
    skip_bad_shards: bool = False  # leave out (with a warning) shards that fail their manifest check

    @classmethod
    def load(cls, root: str | Path, skip_bad_shards: bool = False) -> DataInfo:
        root = Path(root)
        for name in ("vocab.json", "attributes.parquet", "clip_attributes.parquet", "cider_df.parquet"):
            if not (root / name).exists():
                raise UserError(f"{root / name}: missing; is {root} a complete `pipeline build` output?")
        itos = load_vocab(root / "vocab.json")["itos"]
        attr_rows = _rows(root / "attributes.parquet", {"word": str, "pos": str})
        n = len(attr_rows)
        label_rows = _rows(root / "clip_attributes.parquet", {"clip_id": str, "attribute_ids": list})
        if any(not (isinstance(a, int) and 0 <= a < n) for r in label_rows for a in r["attribute_ids"]):
            raise UserError(f"{root / 'clip_attributes.parquet'}: attribute ids outside 0..{n - 1}; rebuild with "
                            "`pipeline build`")
        labels = {r["clip_id"]: r["attribute_ids"] for r in label_rows}
        manifest = load_manifest(root / "shards", "train")
        return cls(root, itos, {w: i for i, w in enumerate(itos)}, [r["word"] for r in attr_rows],
                   [r["pos"] for r in attr_rows], labels, manifest["frames"], manifest["size"], skip_bad_shards)

    def urls(self, split: str) -> list[str]:
        """The split's shards, each checked against its manifest (once per process)."""
        return shard_urls(self.root / "shards", split, self.skip_bad_shards)

    def metadata(self, split: str) -> list[dict]:
        """Every sample's json of the split (from the same checked shards)."""
        return read_metadata(self.root / "shards", split, self.skip_bad_shards)

    @property
    def expect(self) -> Expect:
        return Expect(self.n_frames, self.shard_size)

    def attr_vector(self, clip_id: str) -> np.ndarray:
        v = np.zeros(len(self.attributes), dtype=np.float32)
        v[self.labels.get(clip_id, [])] = 1.0
        return v


def _rows(path: Path, columns: dict[str, type]) -> list[dict]:
    """A Parquet table of a build as rows, checked for the columns and types the trainer uses."""
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # not Parquet, or damaged: the message names the file, not pyarrow's internals
        raise UserError(f"{path}: not a Parquet table ({type(e).__name__}); rebuild with `pipeline build`") from None
    if not all(isinstance(r.get(c), t) for r in rows for c, t in columns.items()):
        raise UserError(f"{path}: expected columns {', '.join(columns)}; rebuild with `pipeline build`")
    return rows


def decode_frames(jpegs: list[bytes], size: int) -> np.ndarray:
    """JPEG bytes -> (K, 3, size, size) uint8."""
    out = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out.append(np.asarray(img).transpose(2, 0, 1))
    return np.stack(out)


def pick_captions(captions: list[str], n: int, seed: int, epoch: int, clip_id: str) -> list[str]:
    """n references of a clip for this epoch (distinct while the clip has enough), reproducible
    without any RNG state: a permutation seeded by (seed, epoch, clip id)."""
    h = zlib.crc32(f"{seed}/{epoch}/{clip_id}".encode())
    order = np.random.default_rng(h).permutation(len(captions))
    return [captions[order[j % len(captions)]] for j in range(n)]


def caption_batch(captions: list[str], stoi: dict[str, int], max_len: int) -> torch.Tensor:
    ids = [encode(c, stoi, max_len) for c in captions]
    out = torch.zeros(len(ids), max(len(x) for x in ids), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.tensor(x)
    return out


class ShardDataset(IterableDataset):
    def __init__(self, info: DataInfo, split: str, image_size: int, shuffle: bool, seed: int = 0,
                 shuffle_buffer: int = 256, max_clips: int | None = None):
        self.info, self.split, self.image_size = info, split, image_size
        self.urls = info.urls(split)
        self.shuffle, self.seed, self.buffer, self.max_clips = shuffle, seed, shuffle_buffer, max_clips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int]:
        w = get_worker_info()
        wid, nw = (w.id, w.num_workers) if w else (0, 1)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return rank * nw + wid, nw * world

    def _samples(self) -> Iterator[dict]:
        """This reader's share of the raw samples. With max_clips, the cap applies to the first
        max_clips clips in manifest order (the clips whose references the trainer loads), so shard
        order is not shuffled and the split is by sample; the shuffle buffer still shuffles."""
        me, readers = self._reader()
        urls = list(self.urls)
        if self.shuffle and self.max_clips is None:
            urls = [urls[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(urls))]
        by_shard = len(urls) >= readers and self.max_clips is None
        index = 0
        for s, url in enumerate(urls):
            if by_shard and s % readers != me:
                continue
            for sample in iter_samples(url, self.info.expect):
                if self.max_clips is not None and index >= self.max_clips:
                    return
                mine = by_shard or index % readers == me
                index += 1
                if mine:
                    yield sample

    def _decode(self, s: dict) -> dict:
        meta = s["json"]
        try:
            frames = decode_frames([s["frames"][k] for k in sorted(s["frames"])], self.image_size)
        except Exception as e:  # a header that looked right over a broken body
            raise ShardError(f"{s['shard']}: sample {s['key']}: a frame does not decode ({e})") from None
        return {"clip_id": meta["clip_id"], "frames": torch.from_numpy(frames), "captions": meta["captions"],
                "attrs": torch.from_numpy(self.info.attr_vector(meta["clip_id"])), "objects": meta.get("objects")}

    def __iter__(self) -> Iterator[dict]:
        if not self.shuffle:
            for s in self._samples():
                yield self._decode(s)
            return
        me, _ = self._reader()
        rng = np.random.default_rng([self.seed, self.epoch, me, 7])
        buf: list[dict] = []
        for s in self._samples():
            buf.append(s)
            if len(buf) >= self.buffer:
                yield self._decode(buf.pop(int(rng.integers(len(buf)))))
        while buf:
            yield self._decode(buf.pop(int(rng.integers(len(buf)))))


def collate(samples: list[dict]) -> dict:
    return {"clip_id": [s["clip_id"] for s in samples], "frames": torch.stack([s["frames"] for s in samples]),
            "captions": [s["captions"] for s in samples], "attrs": torch.stack([s["attrs"] for s in samples]),
            "objects": [s["objects"] for s in samples]}


def torch_loader(ds: ShardDataset, batch_size: int, num_workers: int) -> DataLoader:
    # Each worker reads whole shards (or every n-th sample), so more workers than readers is waste.
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)
