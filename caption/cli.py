"""`caption PATH... --model DIR | --ckpt CKPT [--jsonl caps.jsonl]`: one caption per video file, for
files and folders of them; `caption serve` is the HTTP service (caption/serve.py). Both are thin
layers over the Python API (caption/api.py), which does the work: the same captions either way.

Frames are sampled by the pipeline's own routine (pipeline.frames.sample_frames), so training and
inference see the same frames, in the pipeline's decoder subprocesses (pipeline.clip_worker) with
their per-file timeout and memory cap: a FIFO, a stalled mount or a runaway decode is killed after
``--timeout`` seconds and becomes that file's error, never the end of the run.

Throughput: ``--workers`` decoder processes decode the next clips while the model runs on the
current batch (decoding is the slow half on a CPU), and the CNN and the decoder see ``--batch``
clips at once (one CNN call of batch x frames images instead of one per clip).

``--jsonl FILE`` appends one JSON row per input file -- ``path``, ``caption``, ``frame_times`` (the
sampled frames' times in seconds) and ``error`` (null, or why this file has no caption) -- each row
one write (vidcap.atomic.LineAppender), so a killed run loses no finished row and a re-run skips
the paths already in FILE (``--out FILE``, its old spelling, still works: vidcap/flags.py). Without
it: ``PATH: caption`` lines on stdout, errors on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from vidcap.allocator import keep_freed_memory
from vidcap.atomic import LineAppender
from vidcap.caption.api import (
    DEFAULT_TIMEOUT,
    LIMITS,
    VIDEO_SUFFIXES,
    caption_rows,  # noqa: F401 -- the function form, importable from here as before
    expand_inputs,
    load_from,
)
from vidcap.errors import ArgumentParser, UserError, cli_errors
from vidcap.flags import add_file_flag, add_workers, check_range, subcommand
from vidcap.model.checkpoint import CheckpointError


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="caption", description="caption video files and folders with a vidcap model; "
                       "`caption serve --help` for the HTTP service",
                       epilog="Exit status: 0 every file captioned, 1 some could not be decoded, 2 a user error.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files (anything ffmpeg/decord reads) and folders "
                   f"(their {', '.join(sorted(VIDEO_SUFFIXES))} files)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model folder (from `train export`)")
    which.add_argument("--ckpt", help="checkpoint (e.g. RUN/stage3/best.pt)")
    add_file_flag(p, "--jsonl", "jsonl", help="append one JSON row per file to this file (path, caption, "
                  "frame_times, error); a re-run skips the paths already in it", metavar="FILE")
    p.add_argument("--recursive", action="store_true", help="look for videos in subfolders too")
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to decode one file before giving up on it (default {DEFAULT_TIMEOUT:g})")
    add_workers(p, 2, "decoder processes")
    p.add_argument("--batch", type=int, default=8, help="clips per CNN/decoder batch (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown with --jsonl)")
    return p


def _serve_main(argv: list[str]) -> None:
    from vidcap.caption.serve import main as serve_main

    serve_main(argv)


SUBCOMMANDS = {"serve": _serve_main}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()  # vidcap.allocator: each batch's activations stay mapped for the next
    found = subcommand(argv, SUBCOMMANDS)  # a file named "serve" is ./serve
    if found is not None:
        return found[1](argv[1:])
    with cli_errors("caption", also=(CheckpointError,)):
        a = parser().parse_args(argv)
        for key, (lo, hi, above, unit) in LIMITS.items():
            check_range(f"--{key}", getattr(a, key), lo, hi, above=above, unit=unit)
        paths = expand_inputs(a.paths, a.recursive)
        if not paths:
            raise UserError(f"{', '.join(a.paths)}: no video files ({'' if a.recursive else 'try --recursive; '}"
                            f"suffixes: {', '.join(sorted(VIDEO_SUFFIXES))})")
        out = LineAppender(a.jsonl, is_row=lambda r: isinstance(r, dict) and isinstance(r.get("path"), str)
                           ) if a.jsonl else None
        done = {os.path.normpath(r["path"]) for r in (out.rows if out else [])
                if isinstance(r, dict) and isinstance(r.get("path"), str)}
        todo = [p for p in paths if os.path.normpath(p) not in done]
        captioner = load_from(a.ckpt, a.model, beam=a.beam, timeout=a.timeout, workers=a.workers, batch=a.batch)
    failed = 0
    bar = tqdm(total=len(todo), unit="clip", desc="caption", disable=out is None or a.quiet or not todo)
    try:
        with cli_errors("caption"), captioner:  # a full disk under --jsonl: one line, the rows so far kept
            for c in captioner.captions(todo):
                failed += not c.ok
                bar.update(1)
                if out is not None:
                    out.write(c.row())
                elif c.ok:
                    print(f"{c.path}: {c.text}", flush=True)
                else:
                    print(f"caption: error: {c.path}: {c.error}", file=sys.stderr, flush=True)
    finally:
        bar.close()
        if out is not None:
            out.close()
    if out is not None:
        print(f"{len(todo) - failed} captioned, {failed} failed, {len(paths) - len(todo)} already in {a.jsonl}; "
              f"rows in {a.jsonl}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
