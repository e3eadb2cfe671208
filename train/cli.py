"""`train` console script: `train --stage N --data OUT --run RUN [key=value ...]` and
`train eval --ckpt CKPT --data OUT [--split test] [--beam 3]`."""

from __future__ import annotations

import argparse
import sys


def _eval_main(argv: list[str]) -> None:
    from train.evaluate import evaluate_checkpoint

    p = argparse.ArgumentParser(prog="train eval", description="score a checkpoint on a split (all four metrics)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True, help="pipeline build output")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy)")
    p.add_argument("--out", default=None, help="output dir (default next to the checkpoint)")
    p.add_argument("--max-clips", type=int, default=None)
    a = p.parse_args(argv)
    r = evaluate_checkpoint(a.ckpt, a.data, a.split, a.beam, a.out, max_clips=a.max_clips)
    from evalkit.cli import format_table

    print(format_table(r["metrics"]))
    print(f"{r['clips']} clips; predictions, metrics and gallery.html in {r['dir']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train", description="train the captioner: stage 1 (XE), 2 (REINFORCE+), 3 (end-to-end multitask); "
        "or `train eval --help`",
        epilog="key=value overrides any TrainConfig field (e.g. epochs=3 lr=1e-5 samples=4) or model field "
               "(model.hidden=256)")
    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3])
    p.add_argument("--data", required=True, help="pipeline build output directory")
    p.add_argument("--run", required=True, help="run directory (stage N writes RUN/stageN/)")
    p.add_argument("--preset", default="cpu-small", choices=["paper", "cpu-small", "tiny"])
    p.add_argument("--init", default=None, help="start from this checkpoint (default: previous stage's best.pt)")
    p.add_argument("--resume", action="store_true", help="continue this stage from RUN/stageN/last.pt")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--loader", default=None, choices=["torch", "dali"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["eval"]:
            _eval_main(argv[1:])
            return
        a = parser().parse_args(argv)
        from train.config import make_train_config
        from train.loop import run_stage

        cfg = make_train_config(a.stage, a.preset, a.overrides, data=a.data, run=a.run, init=a.init,
                                resume=a.resume or None, device=a.device, loader=a.loader)
        r = run_stage(cfg, progress=not a.quiet)
        print(f"stage {cfg.stage} done: best val CIDEr {100 * r['best_val_CIDEr']:.2f}; checkpoints in {r['dir']}")
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
