"""`train` console script: `train --stage N --data OUT --run RUN [key=value ...]` and
`train eval --ckpt CKPT | --model DIR --data OUT [--split test] [--beam 3]`; `train export --ckpt CKPT --out DIR`.

Under torchrun: ``torchrun --standalone --nproc_per_node N $(which train) -- --stage 1 --data OUT --run RUN``
(the ``--`` keeps torchrun from reading ``--run`` as its own ``--run-path``). Exit status: 0 done,
2 a user error (one line), 143 / 130 stopped by SIGTERM / SIGINT after saving last.pt."""

from __future__ import annotations

import argparse
import os
import sys

from vidcap.allocator import keep_freed_memory
from vidcap.errors import ArgumentParser, UserError, cli_errors
from vidcap.flags import add_file_flag, check_range, subcommand
from vidcap.model.checkpoint import CheckpointError
from vidcap.shards.layout import SPLITS
from vidcap.train.config import DEVICES, LOADERS, SCHEDULES
from vidcap.train.recipes import RENAMED, STAGES, TABLE3_ORDER
from vidcap.train.run_folder import ROBUSTNESS_JSON, ROBUSTNESS_MD, ROBUSTNESS_PNG

PRESETS = list(SCHEDULES)  # the choices are the registries' (train/config.py, train/recipes.py), never typed here


def _eval_main(argv: list[str]) -> None:
    from vidcap.train.evaluate import evaluate_checkpoint

    p = ArgumentParser(prog="train eval", description="score a checkpoint or model folder on a split (all four metrics)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", help="checkpoint (e.g. RUN/stage3/best.pt)")
    which.add_argument("--model", help="model folder (from `train export`)")
    p.add_argument("--data", required=True, help="pipeline build output")
    p.add_argument("--split", default="test", choices=list(SPLITS))
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy)")
    p.add_argument("--out", default=None, help="output dir, TensorBoard events included (default next to the checkpoint, or in the model folder)")
    p.add_argument("--max-clips", type=int, default=None)
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~8 s of Java start-up)")
    p.add_argument("--evidence", type=int, default=0, metavar="N",
                   help="occlusion maps of the first N clips with a wrong colour, shape or action: where in the five "
                        "frames each wrong word was read (in gallery.html and evidence.png; ~125 forward passes a clip)")
    a = p.parse_args(argv)
    check_range("--beam", a.beam, 1, 100)
    check_range("--max-clips", a.max_clips, 1, None)
    check_range("--evidence", a.evidence, 0, 1000)
    r = evaluate_checkpoint(a.ckpt, a.data, a.split, a.beam, a.out, max_clips=a.max_clips, meteor=not a.no_meteor,
                            model_dir=a.model, evidence=a.evidence)
    from vidcap.evalkit.cli import format_table
    from vidcap.train.evaluate import format_grounded, format_groups

    print(format_table(r["metrics"]))
    if format_grounded(r["metrics"]):
        print(format_grounded(r["metrics"]))
    if len(r["groups"]) > 1:
        print(format_groups(r["groups"]))
    print(f"{r['clips']} clips; predictions, metrics and gallery.html in {r['dir']}")


def _export_main(argv: list[str]) -> None:
    from vidcap.train.export import export_model

    p = ArgumentParser(prog="train export", description="write a checkpoint as a model folder: config.json, "
                       "model.safetensors, vocab.json and a model card (README.md); `caption --model DIR` reads it")
    p.add_argument("--ckpt", required=True, help="checkpoint (e.g. RUN/stage3/best.pt)")
    p.add_argument("--out", required=True, help="the model folder (new, empty, or a model folder with --overwrite)")
    p.add_argument("--name", default=None, help="the model's name (default RUN-STAGE-best)")
    p.add_argument("--overwrite", action="store_true", help="replace the model folder at --out")
    a = p.parse_args(argv)
    r = export_model(a.ckpt, a.out, a.name, a.overwrite)
    print(f"{r['name']}: model folder {r['dir']} ({r['bytes'] / 1e6:.1f} MB; model card {r['dir']}/README.md)")


def _probe_main(argv: list[str]) -> None:
    from vidcap.atomic import write_json_atomic
    from vidcap.train.probe import format_probes, probe_checkpoint

    p = ArgumentParser(prog="train probe", description="linear probes of checkpoints' CNN features "
                                "(action / colour / shape of the built-in dataset), e.g. before and after stage 3")
    p.add_argument("--ckpt", required=True, action="append", help="checkpoint (repeat to compare several)")
    p.add_argument("--data", required=True, help="pipeline build output (built-in dataset)")
    p.add_argument("--split", default="val", choices=[s for s in SPLITS if s != "train"],
                   help="split the probes are scored on")
    add_file_flag(p, "--json", "json", default=None, metavar="FILE", help="also write the results to this JSON file")
    a = p.parse_args(argv)
    results = {c: probe_checkpoint(c, a.data, a.split) for c in a.ckpt}
    print(format_probes(results, a.split))
    if a.json:
        write_json_atomic(a.json, {"split": a.split, "probes": results})


def _robustness_main(argv: list[str]) -> None:
    from vidcap.pipeline.nuisances import HELD_OUT, LISTED, NUISANCES
    from vidcap.train.robustness import (
        GROUPS,
        STRENGTH_NAMES,
        format_markdown,
        parse_nuisances,
        parse_strengths,
        robustness,
    )

    p = ArgumentParser(prog="train robustness", description="caption a split clean and with one nuisance of real "
                       f"footage at a time (pipeline/nuisances.py: {', '.join(LISTED)}; held out, never rendered "
                       f"by the realistic world: {', '.join(HELD_OUT)}) at each strength; writes "
                       "robustness.{json,md,png}")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", help="checkpoint (e.g. RUN/stage3/best.pt)")
    which.add_argument("--model", help="model folder (from `train export`)")
    p.add_argument("--data", required=True, help="pipeline build output")
    p.add_argument("--split", default="test", choices=list(SPLITS))
    p.add_argument("--nuisances", default="all", help=f"{', '.join(GROUPS)} (default all), or comma-separated "
                   f"names: {','.join(NUISANCES)}")
    p.add_argument("--strengths", default=",".join(STRENGTH_NAMES), help="comma-separated subset of "
                   f"{', '.join(STRENGTH_NAMES)} (default all three)")
    p.add_argument("--max-clips", type=int, default=120, help="clips of the split (default 120)")
    p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy; default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations (default 0)")
    p.add_argument("--out", default=None, help="output folder (default: robustness/ beside the checkpoint "
                   "or in the model folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    check_range("--beam", a.beam, 1, 100)
    check_range("--max-clips", a.max_clips, 1, None)
    r = robustness(a.ckpt, a.model, a.data, a.split, parse_nuisances(a.nuisances), parse_strengths(a.strengths),
                   a.max_clips, a.beam, a.seed, a.out, progress=not a.quiet)
    print(format_markdown(r))
    print(f"written: {r['dir']}/{ROBUSTNESS_JSON}, {ROBUSTNESS_MD}" + (f", {ROBUSTNESS_PNG}" if "all_acc" in r["rows"][0] else ""))


def _ablate_main(argv: list[str]) -> None:
    from vidcap.train.ablate import ablate, format_markdown

    p = ArgumentParser(prog="train ablate", description="the paper's Table 3: train the eight rows "
                                "(shared prefixes trained once per seed), score each on the test split, write "
                                "RUN/ablation.md and RUN/ablation.json; a re-run resumes",
                                epilog="key=value overrides apply to every row (e.g. max_clips=100)")
    p.add_argument("--data", required=True, help="pipeline build output directory")
    p.add_argument("--run", required=True, help="output directory (RUN/seedN/<row>/ and the tables)")
    p.add_argument("--preset", default="cpu-small", choices=PRESETS)
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default 3)")
    p.add_argument("--beam", type=int, default=1, help="decoding for the table (default 1: greedy, as the paper)")
    p.add_argument("--rows", default=",".join(TABLE3_ORDER), help="comma-separated subset of the rows")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value")
    a = p.parse_intermixed_args(argv)
    r = ablate(a.data, a.run, a.preset, a.seeds, a.overrides, a.rows.split(","), a.beam, progress=not a.quiet)
    print(format_markdown(r))
    from vidcap.train.run_folder import RunFolder

    print(f"written: {RunFolder(a.run).ablation_md}, {RunFolder(a.run).ablation_json}")


SUBCOMMANDS = {"eval": _eval_main, "export": _export_main, "probe": _probe_main, "robustness": _robustness_main,
               "ablate": _ablate_main}


def parser() -> argparse.ArgumentParser:
    from vidcap.model.backbones import BACKBONES
    from vidcap.model.registry import architectures

    p = ArgumentParser(
        prog="train", description="train the captioner: stage 1 (XE), 2 (REINFORCE+), 3 (end-to-end multitask); "
        f"or `train {'|'.join(SUBCOMMANDS)} --help`",
        epilog="key=value overrides any TrainConfig field (e.g. epochs=3 lr=1e-5 samples=4) or model field "
               f"(model.hidden=256; model.arch={'|'.join(architectures())}; model.backbone={'|'.join(BACKBONES)})")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", type=int, choices=list(STAGES),
                       help="the paper's stages: " + ", ".join(f"{n} = {r}" for n, r in STAGES.items()))
    which.add_argument("--recipe", choices=[*TABLE3_ORDER, *RENAMED],
                       help="any recipe of the paper's Table 3 (train/recipes.py; "
                       + ", ".join(f"{old}: the old name of {new}" for old, new in RENAMED.items()) + ")")
    p.add_argument("--data", required=True, help="pipeline build output: a folder, file://, http(s)://, s3://, "
                                                 "gs:// URL or pipe:COMMAND")
    p.add_argument("--run", required=True, help="run directory (stage N writes RUN/stageN/)")
    p.add_argument("--preset", default="cpu-small", choices=PRESETS)
    p.add_argument("--init", default=None, help="start from this checkpoint (default: previous stage's best.pt)")
    p.add_argument("--resume", action="store_true", help="continue this stage from RUN/stageN/last.pt")
    p.add_argument("--device", default=None, choices=list(DEVICES))
    p.add_argument("--loader", default=None, choices=list(LOADERS))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_memory()  # a step's activations are not handed back to the kernel each batch (vidcap.allocator)
    with cli_errors("train", also=(CheckpointError,)) as ctx:
        found = subcommand(argv, SUBCOMMANDS)
        if found is not None:
            ctx.prog = f"train {found[0]}"
            found[1](argv[1:])
            return
        a = parser().parse_intermixed_args(argv)  # key=value after a flag too (round 3, R-9)
        from vidcap.train.config import make_train_config
        from vidcap.train.loop import run_stage
        from vidcap.train.preempt import Preempted

        try:
            cfg = make_train_config(a.stage if a.stage else a.recipe, a.preset, a.overrides, data=a.data, run=a.run,
                                    init=a.init, resume=a.resume or None, device=a.device, loader=a.loader)
        except ValueError as e:  # make_train_config only parses and checks the arguments
            raise UserError(str(e)) from None
        try:
            r = run_stage(cfg, progress=not a.quiet)
        except Preempted as stop:  # last.pt saved: one line (from rank 0 under torchrun), exit 128 + signal
            if os.environ.get("RANK", "0") == "0":
                print(f"train: {stop}", file=sys.stderr)
            sys.exit(stop.exit_status)
        if os.environ.get("RANK", "0") == "0":
            print(f"{cfg.recipe} done: best val CIDEr {100 * r['best_val_CIDEr']:.2f}; checkpoints in {r['dir']}")


if __name__ == "__main__":
    main()
