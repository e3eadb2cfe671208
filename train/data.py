"""Streaming the pipeline's shards into training batches (the default, CPU-decoding loader).

One rank's epoch is a webdataset pipeline run in the main process, and DataLoader workers decode:

  shard order (seed, epoch) -> this rank's slice -> open + verify, tar_file_expander, group_by_keys,
  check (vidcap.shards.reader) -> wds.shuffle (rng from seed, epoch, rank) -> wds.batched -> [skip]
  -> DataLoader workers: JPEG decode (webdataset's Decoder, PIL with DCT-domain downscaling)

Decisions, and why:

- **Ranks get equal, contiguous slices of the epoch's sample sequence**, not whole shards
  (webdataset's ``split_by_node``): with a few shards per rank, whole shards leave ranks unequal
  by a shard (a quarter of the data with 4 shards over 2 ranks), and DDP needs every rank to run
  the same number of steps. Each rank reads ceil(N / world) samples -- the last rank's slice wraps
  around to the sequence's first samples, so at most world - 1 samples are seen twice per epoch --
  and only the shards its slice touches (at most two are shared with a neighbour).
- **Workers split batches, not shards**: the DataLoader hands each worker whole batches of raw
  samples to decode, in order. The order is therefore a pure function of (seed, epoch, rank,
  world) -- the same for 0, 1 or 8 workers -- and a shard is read once per rank, not once per
  worker. Reading, verifying and shuffling are cheap next to decoding; decoding is parallel.
- **Resuming mid-epoch** replays the pipeline and drops the first k batches before they are
  decoded (``skip``): no step sees another batch than in the uninterrupted run.

The DataLoader gets its own generator, so starting an epoch does not draw from torch's global RNG
(which dropout and caption sampling use, and which a resume restores).
"""

from __future__ import annotations

import io
import random
import zlib
from collections.abc import Iterator
from functools import partial
from itertools import islice

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from webdataset.autodecode import Decoder

from vidcap.shards.layout import DataInfo
from vidcap.shards.reader import ShardError, Slice, checked_samples
from vidcap.tokens import encode
from vidcap.train.preempt import detach_worker


def rank_range(n: int, rank: int, world: int, pad: bool) -> tuple[int, int]:
    """[start, stop) of this rank in a sequence of n samples. pad: every rank gets ceil(n / world)
    (stop may pass n: the slice wraps around); else floor split, every sample exactly once."""
    if pad:
        per = -(-n // world)
        return rank * per, (rank + 1) * per
    return rank * n // world, (rank + 1) * n // world


def slices_for(counts: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(shard position, first, end) pieces covering global samples [start, stop) of the shards
    with sample `counts` in order; positions past the total wrap around to the beginning."""
    total = sum(counts)
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < stop and total:
        g, base = pos % total, 0
        for i, c in enumerate(counts):
            if g < base + c:
                take = min(c - (g - base), stop - pos)
                out.append((i, g - base, g - base + take))
                pos += take
                break
            base += c
    return out


class SplitStream:
    """One rank's samples of a split for one epoch (see the module docstring)."""

    def __init__(self, info: DataInfo, split: str, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world: int = 1, pad: bool = False, shuffle_buffer: int = 256,
                 max_clips: int | None = None):
        self.info, self.split, self.shuffle = info, split, shuffle
        self.seed, self.epoch, self.rank, self.world, self.buffer = seed, epoch, rank, world, shuffle_buffer
        refs = info.shards(split)
        if shuffle and max_clips is None:  # with max_clips the first max_clips clips in manifest order are the ones used
            refs = [refs[i] for i in np.random.default_rng([seed, epoch]).permutation(len(refs))]
        counts = [r.samples for r in refs]
        if max_clips is not None:  # cut the sequence after max_clips samples
            kept, left = [], max_clips
            for c in counts:
                kept.append(min(c, left))
                left -= kept[-1]
            counts = kept
        start, stop = rank_range(sum(counts), rank, world, pad)
        self.n_samples = stop - start if sum(counts) else 0
        self.slices = [Slice(refs[i], a, b) for i, a, b in slices_for(counts, start, stop)]

    def samples(self) -> Iterator[dict]:
        """Checked raw samples (JPEG bytes), in this epoch's order."""
        stages: list = [lambda: checked_samples(self.slices, self.info.build.store, self.info.expect)]
        if self.shuffle:
            rng = random.Random(f"vidcap/{self.seed}/{self.epoch}/{self.rank}")
            stages.append(wds.shuffle(self.buffer, initial=self.buffer, rng=rng))
        return iter(wds.DataPipeline(*stages))

    def n_batches(self, batch_size: int) -> int:
        return -(-self.n_samples // batch_size)

    def batches(self, batch_size: int, skip: int = 0) -> RawBatches:
        return RawBatches(self, batch_size, skip)


class RawBatches:
    """Lists of raw samples, skipping the first `skip` batches undecoded: the DataLoader's batch
    sampler, so the main process reads and each worker decodes whole batches."""

    def __init__(self, stream: SplitStream, batch_size: int, skip: int = 0):
        self.stream, self.batch_size, self.skip = stream, batch_size, skip

    def __iter__(self) -> Iterator[list[dict]]:
        batches = wds.DataPipeline(self.stream.samples, wds.batched(self.batch_size, collation_fn=None, partial=True))
        return islice(iter(batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, self.stream.n_batches(self.batch_size) - self.skip)


def decode_jpeg(data: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> (3, size, size) uint8, with PIL's DCT-domain downscaling (``draft``)."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1)


class FrameDecoder(Dataset):
    """Turns one raw sample (the DataLoader's "index") into tensors, in a DataLoader worker."""

    def __init__(self, info: DataInfo, image_size: int):
        self.size, self.labels, self.n_attr = image_size, info.labels, len(info.attributes)
        self.decoder = Decoder([wds.handle_extension("jpg", partial(decode_jpeg, size=image_size))])

    def __getitem__(self, s: dict) -> dict:
        meta = s["json"]
        try:
            decoded = self.decoder({f"{i}.jpg": j for i, j in enumerate(s["frames"])})
        except Exception as e:  # a header that looked right over a broken body
            why = e.__cause__ or e  # webdataset's DecodingError wraps the decoder's own
            raise ShardError(f"{s['shard']}: sample {s['key']}: a frame does not decode ({why})") from None
        frames = np.stack([decoded[f"{i}.jpg"] for i in range(len(s["frames"]))])
        attrs = np.zeros(self.n_attr, dtype=np.float32)
        attrs[self.labels.get(meta["clip_id"], [])] = 1.0
        return {"clip_id": meta["clip_id"], "frames": torch.from_numpy(frames), "captions": meta["captions"],
                "attrs": torch.from_numpy(attrs), "objects": meta.get("objects"),
                "nuisances": meta.get("nuisances")}


def collate(samples: list[dict]) -> dict:
    return {"clip_id": [s["clip_id"] for s in samples], "frames": torch.stack([s["frames"] for s in samples]),
            "captions": [s["captions"] for s in samples], "attrs": torch.stack([s["attrs"] for s in samples]),
            "objects": [s["objects"] for s in samples], "nuisances": [s["nuisances"] for s in samples]}


def torch_loader(stream: SplitStream, image_size: int, batch_size: int, num_workers: int, skip: int = 0
                 ) -> DataLoader:
    """Decoded batches of `stream` (the first `skip` dropped before decoding)."""
    return DataLoader(FrameDecoder(stream.info, image_size), batch_sampler=stream.batches(batch_size, skip),
                      num_workers=num_workers, collate_fn=collate, prefetch_factor=4 if num_workers else None,
                      worker_init_fn=detach_worker if num_workers else None, generator=torch.Generator(),
                      persistent_workers=False)


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
