"""Caption videos from Python with a vidcap model: the same captions as the `caption` command.

    python examples/caption_api.py MODEL VIDEO_OR_FOLDER...

MODEL is a model folder (`train export --ckpt RUN/stage3/best.pt --out models/a`) or a checkpoint.
It captions the files and folders given, then the first good file again from frames decoded here
with decord (any (N, H, W, 3) uint8 RGB array works: the captioner takes the segment centres).
"""

from __future__ import annotations

import sys

import decord

import vidcap


def main(model: str, paths: list[str]) -> None:
    with vidcap.load(model, beam=3) as cap:  # decoder processes stop at the end of the block
        print(cap)
        results = cap.caption(paths)  # a list (or a folder): one Caption per video file
        for c in results:
            print(f"{c.path}: {c.text}" if c.ok else f"{c.path}: error: {c.error}")
        good = [c.path for c in results if c.ok]
        if good:
            size = cap.image_size  # decode at the model's size, as `caption` does
            video = decord.VideoReader(good[0], width=size, height=size, num_threads=1)
            frames = video.get_batch(list(range(len(video)))).asnumpy()  # every frame of the clip
            print(f"from decord's frames: {cap.caption_frames(frames)}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
