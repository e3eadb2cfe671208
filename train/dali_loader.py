"""``loader=dali``: NVIDIA DALI reads the same shards and decodes the JPEGs -- on the GPU with
nvJPEG (``device="mixed"``) when training on CUDA, on the CPU (``device_id=None``) otherwise. The
two differ only in that device argument; both hand batches over with DALI's own
``feed_ndarray`` into torch tensors, so the CPU path tested here is the GPU path's code.

Shuffling is DALI's (``random_shuffle`` with a seed); exact mid-run resume order is a property of
the default torch loader only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import torch

from vidcap.errors import UserError
from vidcap.shards.layout import DataInfo

DALI_HINT = "NVIDIA DALI is not installed: `pip install 'vidcap[dali]'` (nvidia-dali-cuda120) or use loader=torch"


def _dali():
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError:
        raise UserError(DALI_HINT) from None
    return fn, types, pipeline_def, feed_ndarray


class DaliLoader:
    """Iterates dict batches like train.data.collate's: clip_id, frames (B,K,3,S,S) uint8, captions, attrs."""

    def __init__(self, info: DataInfo, split: str, image_size: int, batch_size: int, shuffle: bool,
                 seed: int = 0, device: str = "cpu", num_threads: int = 2):
        fn, types, pipeline_def, self._feed = _dali()
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("loader=dali with device=cuda, but CUDA is not available on this machine")
        self.info, self.device, self.k = info, device, info.n_frames
        if not info.build.is_local:
            raise UserError(f"loader=dali reads local shards only; {info.root} is remote: use loader=torch")
        self.urls = [str(info.build.store.local_path(f"shards/{r.name}")) for r in info.shards(split)]
        device_id = torch.cuda.current_device() if device == "cuda" else None
        decode_device = "mixed" if device == "cuda" else "cpu"
        exts = [f"{i}.jpg" for i in range(self.k)] + ["json"]
        resize = image_size != info.frame_size

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                      prefetch_queue_depth=2)
        def pipe():
            outs = fn.readers.webdataset(paths=self.urls, ext=exts, missing_component_behavior="error",
                                         random_shuffle=shuffle, initial_fill=256, pad_last_batch=True,
                                         name="reader")
            frames = []
            for o in outs[: self.k]:
                img = fn.decoders.image(o, device=decode_device, output_type=types.RGB)
                if resize:
                    img = fn.resize(img, resize_x=image_size, resize_y=image_size, antialias=True)
                frames.append(fn.transpose(img, perm=[2, 0, 1]))
            return (fn.stack(*frames), outs[self.k])

        self.pipe = pipe()
        self.pipe.build()
        self.size = self.pipe.epoch_size("reader")

    def __iter__(self) -> Iterator[dict]:
        seen = 0
        while seen < self.size:
            frames_tl, meta_tl = self.pipe.run()
            n = len(meta_tl)
            take = min(n, self.size - seen)
            dense = frames_tl.as_tensor()
            frames = torch.empty(dense.shape(), dtype=torch.uint8,
                                 device="cuda" if self.device == "cuda" else "cpu")
            # on CUDA, copy on torch's current stream: DALI's own stream would race the kernels
            # torch has queued on the memory it just handed out
            self._feed(dense, frames, cuda_stream=torch.cuda.current_stream() if frames.is_cuda else None)
            metas = [json.loads(bytes(memoryview(meta_tl.at(i)))) for i in range(take)]
            seen += n
            ids = [m["clip_id"] for m in metas]
            yield {"clip_id": ids, "frames": frames[:take], "captions": [m["captions"] for m in metas],
                   "attrs": torch.stack([torch.from_numpy(self.info.attr_vector(c)) for c in ids])}
