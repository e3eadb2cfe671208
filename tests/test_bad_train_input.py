"""Bad input to training and the one user-error path of every CLI:
bad arguments, bad checkpoints, a second trainer on one run, a full disk, a NaN loss and an
interrupted epoch -- each one line naming the key, file or holder, nothing stale or invalid left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import copy_build, one_line_error, tool
from test_bad_build_input import with_file_size_limit

from vidcap.atomic import write_bytes_atomic
from vidcap.errors import UserError
from vidcap.model import ARCHS, BACKBONES, S2VTCaptioner, make_config, save_checkpoint
from vidcap.model.checkpoint import CheckpointError, load_checkpoint
from vidcap.model.registry import model_settings
from vidcap.tokens import SPECIALS
from vidcap.train.cli import main as train_main
from vidcap.train.config import make_train_config
from vidcap.train.loop import run_stage


def train_cli(capsys, argv: list[str]) -> list[str]:
    """Run `train` in-process (the console script's main); its stderr lines, after checking exit 2."""
    with pytest.raises(SystemExit) as e:
        train_main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("override, line", [
    ("epochs=abc", "epochs=abc: expected an integer"),
    ("lr=fast", "lr=fast: expected a number"),
    ("lr=1e38", "lr=1e+38: must be > 0 and <= 1"),
    ("model.hidden=abc", "model.hidden=abc: expected an integer"),
    ("model.hidden=0", "model.hidden=0: must be between 1 and 65536"),
    ("model.nosuch=1", "model.nosuch: unknown model setting; known: {model_fields}"),
    ("batch_size=0", "batch_size=0: must be >= 1"),
    ("eval_every=0", "eval_every=0: must be >= 1"),
    ("max_clips=0", "max_clips=0: must be >= 1 (or none)"),
    ("samples=0", "samples=0: must be between 1 and 1024"),
    ("epochs=0", "epochs=0: must be >= 1"),
    ("skip_bad_shards=maybe", "skip_bad_shards=maybe: expected true or false"),
    ("model.backbone=resnet9000", "unknown backbone 'resnet9000'; choose from {backbones}"),
    ("model.frame_dropout=some", "model.frame_dropout='some': must be independent or shared"),
    ("model.arch=lstm3", "model.arch=lstm3: unknown architecture; choose from {archs}"),
])
def test_every_train_argument_is_checked_naming_the_key(built_small, tmp_path, capsys, override, line):
    run = tmp_path / "run"
    err = train_cli(capsys, ["--stage", "1", "--data", str(built_small), "--run", str(run), "--preset", "tiny", "--quiet",
                             override])
    known = {"model_fields": ", ".join(sorted(model_settings())),
             "backbones": str(sorted(BACKBONES)), "archs": ", ".join(sorted(ARCHS))}
    assert err == [f"train: error: {line.format(**known)}"]
    assert not (run / "stage1" / "metrics.jsonl").exists() and not (run / "stage1" / "config.json").exists()


def strict_records(path: Path) -> list[dict]:
    def no_constants(name):
        raise ValueError(f"{name} in {path}")

    return [json.loads(x, parse_constant=no_constants) for x in path.read_text().splitlines()]


def test_a_nan_loss_stops_training_and_is_never_logged(built_small, tmp_path, capsys):
    """Cached features gone bad (NaN): the first step's loss is NaN; it stops the run, unlogged."""
    args = ["--stage", "1", "--data", str(built_small), "--run", str(tmp_path), "--preset", "tiny", "--quiet",
            "num_workers=0", "epochs=1"]
    train_main(args)  # a healthy run first: it writes the feature cache
    cache = next((tmp_path / "features").glob("train-*.pt"))
    state = torch.load(cache, weights_only=True)
    state["feats"][:, 1, 7] = float("nan")
    torch.save(state, cache)
    shutil.rmtree(tmp_path / "stage1")
    capsys.readouterr()
    err = train_cli(capsys, args)
    assert len(err) == 1 and err[0].startswith("train: error: epoch 1: the loss is not finite (xe_loss nan, loss nan); "), err
    records = strict_records(tmp_path / "stage1" / "metrics.jsonl")  # parses: no NaN in it
    assert [r["event"] for r in records] == ["start", "features"]
    assert not (tmp_path / "stage1" / "last.pt").exists()


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_bad_checkpoints_are_one_line_naming_the_file(built_small, tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.manual_seed(0)
    save_checkpoint(good, S2VTCaptioner(make_config("tiny", 12)), [*SPECIALS, *(f"w{i}" for i in range(8))], ["a"] * 16)
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    (tmp_path / "json.pt").write_text('{"config": {}}')  # "{" is also a pickle opcode
    blob = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    marker = tmp_path / "code-ran"
    torch.save({"config": {}, "vocab": [], "attributes": [], "model": {}, "extra": {"x": Payload(str(marker))}},
               tmp_path / "pickle.pt")
    cfg = torch.load(good, weights_only=True)
    cfg["config"]["hidden"] = 10**6  # a config claiming a huge model, with small weights
    torch.save(cfg, tmp_path / "liar.pt")
    expect = {
        "text.pt": "not a vidcap checkpoint: not a torch checkpoint file",
        "json.pt": "not a vidcap checkpoint: not a torch checkpoint file",
        "truncated.pt": "not a vidcap checkpoint: truncated or corrupt (its zip archive cannot be read)",
        "foreign.pt": "not a vidcap checkpoint: a torch file without config, vocab, attributes, model, extra",
        "pickle.pt": "not a vidcap checkpoint: it holds Python objects besides tensors and plain types; refusing to "
                     "unpickle them",
        "liar.pt": "not a vidcap checkpoint: its weights do not match its model config (9 tensors differ, e.g. "
                   "'lstm1.bias_hh_l0')",
        "missing.pt": "checkpoint not found",
    }
    for name, why in expect.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}: {why}", name
    assert not marker.exists()
    # the same one line from every command that loads checkpoints; never torch's weights_only advice
    err = train_cli(capsys, ["eval", "--ckpt", str(tmp_path / "pickle.pt"), "--data", str(built_small)])
    assert err == [f"train eval: error: {tmp_path / 'pickle.pt'}: {expect['pickle.pt']}"]
    err = train_cli(capsys, ["--stage", "2", "--init", str(tmp_path / "truncated.pt"), "--data", str(built_small),
                             "--run", str(tmp_path / "run"), "--preset", "tiny", "--quiet"])
    assert err == [f"train: error: {tmp_path / 'truncated.pt'}: {expect['truncated.pt']}"]
    r = subprocess.run([tool("caption"), str(tmp_path / "any.mp4"), "--ckpt", str(tmp_path / "pickle.pt")],
                       capture_output=True, text=True, timeout=300)
    assert one_line_error(r, "caption") == f"{tmp_path / 'pickle.pt'}: {expect['pickle.pt']}"
    assert "weights_only" not in r.stderr and not marker.exists()


def test_a_second_trainer_on_a_run_exits_2_naming_the_holder(built_small, tmp_path, capsys):
    stage = tmp_path / "run" / "stage1"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom train import run_lock\n"
                               f"run_lock.acquire({str(stage)!r})\nprint('locked', flush=True)\ntime.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        err = train_cli(capsys, ["--stage", "1", "--data", str(built_small), "--run", str(tmp_path / "run"), "--preset",
                                 "tiny", "--quiet", "num_workers=0"])
        assert err == [f"train: error: {stage}: another trainer is using this run (pid {holder.pid}); wait for it to "
                       "finish or choose another --run"]
        assert sorted(p.name for p in stage.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_atomic_writes_of_one_path_never_collide(tmp_path):
    """Two writers of one file (two trainers' last.pt): unique temp names, no error, no debris."""
    target, errors = tmp_path / "last.pt", []

    def writer(tag: bytes):
        try:
            for _ in range(200):
                write_bytes_atomic(target, tag * 1000)
        except Exception as e:  # pragma: no cover - the failure this test exists to catch
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and target.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_training_names_the_path_and_leaves_no_temp_files(built_small, tmp_path):
    run = tmp_path / "run"
    cmd = [tool("train"), "--stage", "1", "--data", str(built_small), "--run", str(run), "--preset", "tiny", "--quiet",
           "num_workers=0", "epochs=1"]
    r = subprocess.run(with_file_size_limit(300_000, cmd), capture_output=True, text=True, timeout=600)
    assert one_line_error(r, "train") == f"{run / 'stage1' / 'best.pt'}: File too large"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / "stage1" / "best.pt").exists() and not (run / "stage1" / "last.pt").exists()


def test_resume_drops_the_records_of_an_interrupted_epoch(built_small, tmp_path):
    """Item 13: an epoch that ran (and logged) but whose checkpoint was never written is not
    logged twice: on --resume the records after the checkpoint's step are dropped."""
    def cfg(epochs, resume=False):
        c = make_train_config(1, "tiny", ["num_workers=0", f"epochs={epochs}", "batch_size=4", "max_clips=8",
                                          "eval_every=9"], data=str(built_small), run=str(tmp_path))
        c.resume = resume
        return c

    run_stage(cfg(2), progress=False)
    epoch1 = (tmp_path / "stage1" / "last.pt").read_bytes()
    run_stage(cfg(3, resume=True), progress=False)  # epoch 2 done and logged ...
    (tmp_path / "stage1" / "last.pt").write_bytes(epoch1)  # ... but killed before its checkpoint
    with open(tmp_path / "stage1" / "metrics.jsonl", "a") as f:
        f.write('{"event": "step", "epoch": 2, "st')  # and a line torn by the kill
    run_stage(cfg(3, resume=True), progress=False)
    records = strict_records(tmp_path / "stage1" / "metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in records if r["event"] == "step"] == [(e, 2 * e + s) for e in range(3)
                                                                                  for s in (1, 2)]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [0, 1, 2]
    assert [r["start_epoch"] for r in records if r["event"] == "start"] == [0, 2]


def test_every_cli_shares_the_user_error_path(tmp_path, built_small):
    (tmp_path / "bad.json").write_text('{"v1": "a man",\n "v2": }')
    bad_json = f"{tmp_path / 'bad.json'}: invalid JSON at line 2 column 8: Expecting value"
    cases = [
        ([tool("evalkit"), "score", "--pred", str(tmp_path / "bad.json"), "--refs", str(built_small)], "evalkit score",
         bad_json),
        ([tool("evalkit"), "score", "--pred", str(tmp_path / "p.json"), "--refs", str(tmp_path / "bad.json")],
         "evalkit score", f"{tmp_path / 'p.json'}: predictions file not found"),
        ([tool("pipeline"), "inspect", str(tmp_path)], "pipeline inspect",
         f"{tmp_path}: not a pipeline output (no build.json); run `pipeline build` first"),
        ([tool("caption"), "x.mp4", "--ckpt", str(tmp_path / "none.pt")], "caption", f"{tmp_path / 'none.pt'}: checkpoint not found"),
        ([tool("train"), "--stage", "1", "--data", str(tmp_path), "--run", str(tmp_path / "r"), "--preset", "tiny"],
         "train", f"{tmp_path / 'vocab.json'}: missing; is {tmp_path} a complete `pipeline build` output?"),
    ]
    for cmd, prog, msg in cases:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert one_line_error(r, prog) == msg, cmd
    r = subprocess.run(cases[0][0], capture_output=True, text=True, timeout=300, env={**os.environ, "VIDCAP_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and bad_json in r.stderr


def test_damaged_build_outputs_are_one_line_naming_the_file(built_small, tmp_path):
    from vidcap.shards.layout import Build, DataInfo

    out = copy_build(built_small, tmp_path / "out")
    (out / "vocab.json").write_text('{"itos": ["<pad>", 1')
    with pytest.raises(UserError, match=rf"^{out / 'vocab.json'}: invalid JSON at line 1 column 21: Expecting ',' delimiter$"):
        DataInfo.load(out)
    (out / "vocab.json").write_text('{"itos": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "a"]}')
    with pytest.raises(UserError, match=rf"^{out / 'vocab.json'}: not a vidcap vocabulary \(distinct words, "):
        DataInfo.load(out)
    shutil.copy(built_small / "vocab.json", out / "vocab.json")
    (out / "attributes.parquet").write_text("not parquet")
    with pytest.raises(UserError) as e:
        DataInfo.load(out)
    assert str(e.value) == f"{out / 'attributes.parquet'}: not a Parquet table (ArrowInvalid); rebuild with `pipeline build`"
    from vidcap.pipeline.inspect_out import inspect

    with pytest.raises(UserError) as e:
        inspect(out, png=tmp_path / "sheet.png")
    assert str(e.value) == f"{out / 'attributes.parquet'}: not a Parquet table (ArrowInvalid); rebuild with `pipeline build`"
    shutil.copy(built_small / "attributes.parquet", out / "attributes.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "clip_attributes.parquet").to_pylist()
    rows[0]["attribute_ids"] = [10**6]
    pq.write_table(pa.Table.from_pylist(rows), out / "clip_attributes.parquet")
    with pytest.raises(UserError, match=r"clip_attributes.parquet: attribute ids outside 0\.\.\d+; rebuild"):
        DataInfo.load(out)
    (out / "cider_df.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(UserError, match=r"cider_df.parquet: not a CIDEr-D df table written by `pipeline build`"):
        Build(out).cider_df()


def test_resume_from_a_checkpoint_without_training_state(built_small, tmp_path, capsys):
    last = tmp_path / "run" / "stage1" / "last.pt"
    save_checkpoint(last, S2VTCaptioner(make_config("tiny", 12)), [*SPECIALS, *(f"w{i}" for i in range(8))], ["a"] * 16,
                    {"epoch": "x"})
    err = train_cli(capsys, ["--stage", "1", "--data", str(built_small), "--run", str(tmp_path / "run"), "--preset",
                             "tiny", "--resume", "--quiet"])
    assert err == [f"train: error: {last}: not a checkpoint to resume from (KeyError: 'optimizer')"]
    torch.save({"config": {}, "vocab": [1, 2], "attributes": [], "model": {}, "extra": {}}, tmp_path / "ints.pt")
    with pytest.raises(CheckpointError, match=r"ints.pt: not a vidcap checkpoint: 'vocab' holds something other than words"):
        load_checkpoint(tmp_path / "ints.pt")


def test_loading_a_build_starts_no_native_threads(built_small):
    """A one-line error right after a build is loaded must exit 2, not abort: pyarrow's dataset reader
    starts Arrow's thread pools, and a process exiting while they start aborted in C++ (SIGABRT,
    "terminate called without an active exception") in 8 of 20 runs of `train --stage 2` without a
    stage 1 on a loaded machine. Loading reads every Parquet file on the calling thread instead: the
    process has exactly as many OS threads after loading as before (its own, fresh interpreter)."""
    code = ("import os, sys, torch; from vidcap.shards.layout import DataInfo\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "info = DataInfo.load(sys.argv[1]); info.build.cider_df()\n"
            "print(before, len(os.listdir('/proc/self/task')))")
    r = subprocess.run([sys.executable, "-c", code, str(built_small)], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(int, r.stdout.split())
    assert after == before
