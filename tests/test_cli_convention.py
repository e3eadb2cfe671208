"""One convention across every command (docs/cli.md). Each command's real parser -- taken
from its own entry point as it parses -- is checked: `--out` is a folder wherever it shows; one-file
outputs are named for their format (their old `--out FILE` spelling still parses, hidden); `--workers`
has one meaning; choices are the registries'; and a value out of range is one line naming its flag."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import REPO

from vidcap.caption import cli as caption_cli
from vidcap.caption import serve as caption_serve
from vidcap.evalkit import cli as evalkit_cli
from vidcap.pipeline import cli as pipeline_cli
from vidcap.pipeline.adapters import ADAPTERS
from vidcap.train import cli as train_cli
from vidcap.train.config import DEVICES, LOADERS, SCHEDULES
from vidcap.train.recipes import RENAMED, STAGES, TABLE3_ORDER

COMMANDS = {  # (entry point, argv before --help): every command and sub-command
    "pipeline": (pipeline_cli.main, []), "train": (train_cli.main, []), "train eval": (train_cli.main, ["eval"]),
    "train export": (train_cli.main, ["export"]), "train probe": (train_cli.main, ["probe"]),
    "train ablate": (train_cli.main, ["ablate"]), "evalkit": (evalkit_cli.main, []), "caption": (caption_cli.main, []),
    "caption serve": (caption_serve.main, [])}


class _Captured(Exception):
    pass


def parsers(name: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """The parser the command builds when it runs, and its sub-commands' parsers."""
    entry, argv = COMMANDS[name]
    seen: list[argparse.ArgumentParser] = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args", capture)  # train: key=value after flags
    with pytest.raises(_Captured):
        entry([*argv, "--help"])
    monkeypatch.undo()
    out = list(seen)
    for p in seen:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += list(action.choices.values())
    return out


def options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_out_is_a_folder_and_workers_are_processes(name, monkeypatch):
    for p in parsers(name, monkeypatch):
        opts = options(p)
        out = opts.get("--out")
        if out is not None and out.help != argparse.SUPPRESS:
            assert any(w in out.help for w in ("folder", "directory", "dir")), (p.prog, out.help)
        if out is not None and out.help == argparse.SUPPRESS:  # the old spelling of a file named for its format
            named = [s for s, a in opts.items() if a.dest == out.dest and s != "--out"]
            assert named and named[0] in ("--jsonl", "--json"), (p.prog, named)
        workers = opts.get("--workers")
        if workers is not None:
            assert workers.help.startswith("processes working on clips at once: "), (p.prog, workers.help)


def test_choices_are_the_registries(monkeypatch):
    (pipeline,) = [p for p in parsers("pipeline", monkeypatch) if p.prog == "pipeline build"]
    assert options(pipeline)["--dataset"].choices == list(ADAPTERS)
    (train,) = parsers("train", monkeypatch)
    opts = options(train)
    assert opts["--preset"].choices == list(SCHEDULES) and opts["--stage"].choices == list(STAGES)
    assert list(opts["--recipe"].choices) == [*TABLE3_ORDER, *RENAMED]  # old names still accepted
    assert opts["--device"].choices == list(DEVICES) and opts["--loader"].choices == list(LOADERS)
    (ablate,) = parsers("train ablate", monkeypatch)
    assert options(ablate)["--preset"].choices == list(SCHEDULES)
    assert "model.arch=s2vt|transformer" in train.epilog and "model.backbone=" in train.epilog

    monkeypatch.setitem(ADAPTERS, "mine", lambda root: None)  # a new adapter: one edit, and the flag offers it
    (pipeline,) = [p for p in parsers("pipeline", monkeypatch) if p.prog == "pipeline build"]
    assert "mine" in options(pipeline)["--dataset"].choices


@pytest.mark.parametrize("argv, message", [
    (["caption", "x.mp4", "--model", "m", "--beam", "0"], "caption: error: --beam 0: must be 1..100"),
    (["caption", "x.mp4", "--model", "m", "--workers", "0"], "caption: error: --workers 0: must be 1..64"),
    (["caption", "x.mp4", "--model", "m", "--batch", "2000"], "caption: error: --batch 2000: must be 1..1024"),
    (["caption", "x.mp4", "--model", "m", "--timeout", "0"], "caption: error: --timeout 0: must be > 0 and <= 86400 (s)"),
    (["serve", "--model", "m", "--queue", "-1"], "caption serve: error: --queue -1: must be 0..4096"),
    (["serve", "--model", "m", "--port", "70000"], "caption serve: error: --port 70000: must be 0..65535"),
    (["serve", "--model", "m", "--max-upload-mb", "0"],
     "caption serve: error: --max-upload-mb 0: must be > 0 and <= 4096 (MB)"),
    (["serve", "--model", "m", "--workers", "65"], "caption serve: error: --workers 65: must be 1..64"),
    (["serve", "--model", "m", "--read-timeout", "0"],
     "caption serve: error: --read-timeout 0: must be > 0 and <= 3600 (s)"),
    (["train", "eval", "--ckpt", "c", "--data", "d", "--beam", "0"], "train eval: error: --beam 0: must be 1..100"),
    (["train", "eval", "--ckpt", "c", "--data", "d", "--max-clips", "0"], "train eval: error: --max-clips 0: must be >= 1"),
    (["pipeline", "inspect", "d", "--samples", "0"], "pipeline inspect: error: --samples 0: must be 1..64"),
    (["pipeline", "synth", "--out", "o", "--workers", "0"], "pipeline synth: error: --workers 0: must be between 1 and 64"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_value_out_of_range_names_its_flag(argv, message, capsys):
    entry = {"caption": caption_cli.main, "serve": caption_cli.main, "train": train_cli.main,
             "pipeline": pipeline_cli.main}[argv[0]]
    with pytest.raises(SystemExit) as stop:
        entry(argv[1:] if argv[0] != "serve" else argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def test_the_old_out_spelling_still_writes_the_same_file(tmp_path, capsys):
    (tmp_path / "pred.json").write_text(json.dumps({"c1": "a red ball moves left"}))
    (tmp_path / "refs.json").write_text(json.dumps({"c1": ["a red ball moves to the left", "a ball moves left"]}))
    for flag, name in (("--json", "new.json"), ("--out", "old.json")):
        evalkit_cli.main(["score", "--pred", str(tmp_path / "pred.json"), "--refs", str(tmp_path / "refs.json"),
                          "--no-meteor", flag, str(tmp_path / name)])
    assert json.loads((tmp_path / "new.json").read_text()) == json.loads((tmp_path / "old.json").read_text())
    assert "CIDEr" in json.loads((tmp_path / "new.json").read_text())
    assert "--json FILE" in (REPO / "docs" / "cli.md").read_text()
