"""Every row of the red team's turn-3 log marked FAIL (``../shared/reviews/redteam-turn3-log.md``),
and what was found while fixing them, as one table. Each row builds its bad input in a temporary
folder, runs the real console script (a subprocess: real Java, real spaCy, real Dask, real torch)
and asserts the exit status, the one line and what is on disk -- nothing half-written, nothing
lost. The rows are named after the log's: A-2b (inconsistent checkpoints), B-evalkit-partial,
A-3e (punctuation-only references), B-nonascii, A-3j (a 300-character clip id), A-6b (the four
tracebacks), A-4e (resume right after a SIGKILL), plus X-* for the new ones."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO, attack_table, one_line_error, tool
from test_bad_build_input import with_file_size_limit

import vidcap.evalkit as evalkit
from vidcap.errors import UserError
from vidcap.pipeline.adapters import load_dataset
from vidcap.text import tokenize

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ATTACKS, attack = attack_table()  # row -> function (request, tmp_path) that attacks and asserts


def run(cmd: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV)


def bad_checkpoint(request, tmp: Path, how: str) -> tuple[Path, int]:
    """The session's tiny trained checkpoint with its vocabulary cut to 4 words ("short") or renamed
    w0, w1, ... without the special tokens ("nospecials"); and the output layer's size."""
    raw = torch.load(request.getfixturevalue("tiny_model")["ckpt"], weights_only=True)
    n = len(raw["vocab"])
    raw["vocab"] = raw["vocab"][:4] if how == "short" else [f"w{i}" for i in range(n)]
    path = tmp / "bad.pt"
    torch.save(raw, path)
    return path, n


def a_clip(request) -> Path:
    return request.getfixturevalue("synth_small") / "videos" / "video1.mp4"


SHORT = "its vocabulary has 4 words but its output layer has {n} outputs (config vocab_size); the two must be equal"
NO_SPECIALS = ("its vocabulary does not start with the special tokens <pad> <bos> <eos> <unk> (it starts w0 w1 w2 "
               "w3); not a vidcap vocabulary")


# ---- A-2b: checkpoints whose vocabulary does not fit the model ------------------------------------
@attack("A-2b short vocabulary: caption --ckpt")
def _(request, tmp):
    ckpt, n = bad_checkpoint(request, tmp, "short")
    r = run([tool("caption"), str(a_clip(request)), "--ckpt", str(ckpt), "--out", str(tmp / "caps.jsonl")])
    assert one_line_error(r, "caption") == f"{ckpt}: {SHORT.format(n=n)}"  # was an IndexError traceback
    assert "Traceback" not in r.stderr and (not (tmp / "caps.jsonl").exists()
                                            or (tmp / "caps.jsonl").read_text() == "")


@attack("A-2b short vocabulary: train eval")
def _(request, tmp):
    ckpt, n = bad_checkpoint(request, tmp, "short")
    r = run([tool("train"), "eval", "--ckpt", str(ckpt), "--data", str(request.getfixturevalue("built_small")),
             "--no-meteor"])
    assert one_line_error(r, "train eval") == f"{ckpt}: {SHORT.format(n=n)}"
    assert sorted(os.listdir(tmp)) == ["bad.pt"]  # no eval-* folder


@attack("A-2b short vocabulary: train export writes nothing")
def _(request, tmp):
    ckpt, n = bad_checkpoint(request, tmp, "short")
    r = run([tool("train"), "export", "--ckpt", str(ckpt), "--out", str(tmp / "model")])
    assert one_line_error(r, "train export") == f"{ckpt}: {SHORT.format(n=n)}"  # was: a full, inconsistent folder
    assert sorted(os.listdir(tmp)) == ["bad.pt"]


@attack("A-2b vocabulary without special tokens: caption --ckpt")
def _(request, tmp):
    ckpt, _ = bad_checkpoint(request, tmp, "nospecials")
    r = run([tool("caption"), str(a_clip(request)), "--ckpt", str(ckpt)])
    assert one_line_error(r, "caption") == f"{ckpt}: {NO_SPECIALS}"  # was: rc 0, "w17 w6 w4 ..."
    assert r.stdout == ""


@attack("A-2b vocabulary without special tokens: train export writes nothing")
def _(request, tmp):
    ckpt, _ = bad_checkpoint(request, tmp, "nospecials")
    (tmp / "model").mkdir()
    r = run([tool("train"), "export", "--ckpt", str(ckpt), "--out", str(tmp / "model")])
    assert one_line_error(r, "train export") == f"{ckpt}: {NO_SPECIALS}"
    assert sorted(os.listdir(tmp)) == ["bad.pt", "model"] and not os.listdir(tmp / "model")


@attack("A-2b train export on a full disk leaves no partial model folder")
def _(request, tmp):
    ckpt = request.getfixturevalue("tiny_model")["ckpt"]
    out = tmp / "model"
    r = run(with_file_size_limit(10_000, [tool("train"), "export", "--ckpt", str(ckpt), "--out", str(out)]))
    assert one_line_error(r, "train export") == f"{out / 'model.safetensors'}: File too large"
    assert os.listdir(tmp) == []  # neither the folder nor its temporary twin


# ---- B-evalkit-partial, A-3e: what evalkit score is given ----------------------------------------
REFS = {f"c{i}": [f"a man plays the guitar number {i}", "someone is playing a guitar"] for i in range(10)}


def score_cli(tmp: Path, preds: dict, refs: dict, *flags: str) -> subprocess.CompletedProcess:
    (tmp / "p.json").write_text(json.dumps(preds, ensure_ascii=False), "utf-8")
    (tmp / "r.json").write_text(json.dumps(refs, ensure_ascii=False), "utf-8")
    return run([tool("evalkit"), "score", "--pred", str(tmp / "p.json"), "--refs", str(tmp / "r.json"),
                "--no-meteor", *flags])


@attack("B-evalkit-partial predictions missing a clip")
def _(request, tmp):
    preds = {k: "a man plays a guitar" for k in list(REFS)[:9]}
    r = score_cli(tmp, preds, REFS)
    assert one_line_error(r, "evalkit score") == (
        f"{tmp / 'p.json'}: no prediction for 1 of the 10 reference clips ('c9'); predict every clip, or pass "
        "--allow-missing to score the 9 others")  # was: rc 0, scored on 9 of 10, no word
    assert sorted(os.listdir(tmp)) == ["p.json", "r.json"]


@attack("B-evalkit-partial --allow-missing warns and says how many")
def _(request, tmp):
    preds = {k: "a man plays a guitar" for k in list(REFS)[:9]}
    r = score_cli(tmp, preds, REFS, "--allow-missing")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"evalkit score: warning: {tmp / 'p.json'}: no prediction for 1 of the 10 "
                                     "reference clips ('c9'); scoring the other 9 (--allow-missing)"]
    assert "9 clips scored (of 10 in the references); tokenizer ptb" in r.stdout
    metrics = json.loads((tmp / "p.metrics.json").read_text())
    assert metrics["clips"] == 9 and metrics["CIDEr"] == evalkit.score(preds, REFS, meteor=False)["CIDEr"]


@attack("B-evalkit-partial keys that differ only by Unicode normalisation")
def _(request, tmp):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    refs = {**REFS, nfc: ["a man drinks coffee"]}
    preds = {**{k: "a man plays a guitar" for k in REFS}, nfd: "a man drinks coffee"}  # the NFD spelling of the key
    r = score_cli(tmp, preds, refs)
    assert r.returncode == 0, r.stderr
    assert f"11 clips scored (of 11 in the references); tokenizer ptb (pycocoevalcap's PTB); 1 prediction ids " \
           f"matched by their NFC form ('{nfd}')" in r.stdout
    # a build may hold both spellings as two clips (A-3c): then each needs its own prediction
    r = score_cli(tmp, preds, {**refs, nfd: ["a woman drinks tea"]})
    assert one_line_error(r, "evalkit score") == (
        f"{tmp / 'p.json'}: no prediction for 1 of the 12 reference clips ('{nfc}'); predict every clip, or pass "
        "--allow-missing to score the 11 others")


@attack("A-3e references that are only punctuation")
def _(request, tmp):
    r = score_cli(tmp, {"c1": "a man", "c2": "a dog"}, {"c1": ["...", "!!!", "\u2014"], "c2": ["a dog runs"]})
    assert one_line_error(r, "evalkit score") == (
        "clip 'c1' has no reference captions (3 empty or punctuation-only, which the build drops too)")
    assert not (tmp / "p.metrics.json").exists()  # was: rc 0, CIDEr 121.5
    # one such caption among real ones is left out, as the build leaves it out
    preds = {"c1": "a man plays a guitar", "c2": "a dog runs"}
    with_punct = {"c1": ["a man plays the guitar", "?!", "someone plays guitar"], "c2": ["a dog is running", "..."]}
    clean = {"c1": ["a man plays the guitar", "someone plays guitar"], "c2": ["a dog is running"]}
    assert evalkit.score(preds, with_punct, meteor=False) == evalkit.score(preds, clean, meteor=False)


# ---- B-nonascii, A-3j: the build's input ----------------------------------------------------------
@attack("B-nonascii captions of other scripts are kept, not dropped")
def _(request, tmp):
    video = a_clip(request)
    caps = ["Мужчина едет на красной машине.", "一个男人在开车。", "un café très chaud", "!!!"]
    (tmp / "dataset.json").write_text(json.dumps({"videos": [{"id": "v", "path": str(video), "split": "train",
                                                              "captions": caps}]}, ensure_ascii=False), "utf-8")
    data = load_dataset("json", tmp / "dataset.json")
    assert data.clips[0].captions == caps[:3] and data.empty_captions_dropped == 1  # only "!!!"
    assert tokenize(caps[2]) == ["un", "café", "très", "chaud"]  # was: "un caf tr s chaud"
    assert tokenize(caps[1]) == list("一个男人在开车") and tokenize(caps[0])[0] == "мужчина"


@attack("A-3j a 300-character clip id is one failed clip, not the end of the build")
def _(request, tmp):
    videos = request.getfixturevalue("synth_small") / "videos"
    root, long_id = tmp / "msrvtt", "v" * 300
    (root / "videos").mkdir(parents=True)
    info = {"videos": [], "sentences": []}
    for vid, split, src in (("va", "train", "video0"), ("vb", "validate", "video1"), ("vc", "test", "video2"),
                            (long_id, "train", None)):
        if src:
            shutil.copy(videos / f"{src}.mp4", root / "videos" / f"{vid}.mp4")
        info["videos"].append({"video_id": vid, "split": split})
        info["sentences"].append({"video_id": vid, "caption": "a red circle moves to the left"})
    (root / "videodatainfo.json").write_text(json.dumps(info))
    out = tmp / "out"
    r = run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(root), "--out", str(out), "--size", "32",
             "--shard-size", "4", "--min-count", "1", "--workers", "1", "--quiet"])
    assert r.returncode == 0, r.stderr[-3000:]  # was: "...mp4: File name too long", rc 2, no build
    failure, = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["clip_id"] == long_id and failure["reason"] == "missing" and failure["error"] == "File name too long"
    summary = json.loads((out / "build.json").read_text())
    assert summary["splits"]["train"] == {"clips_in": 2, "clips_out": 1, "failures": 1}
    assert "failures by reason: missing 1" in r.stdout


@attack("X-1 a lone surrogate in an annotation file")
def _(request, tmp):
    ds = tmp / "dataset.json"
    ds.write_text('{"videos": [{"id": "v", "path": "v.mp4", "split": "train", "captions": ["a \\ud800 b"]}]}')
    r = run([tool("pipeline"), "build", "--dataset", "json", "--root", str(ds), "--out", str(tmp / "out"), "--quiet"])
    assert one_line_error(r, "pipeline build") == (
        f"{ds}: invalid JSON: the string 'a \\ud800 b' holds a lone surrogate (U+D800), which is not Unicode text")
    assert sorted(os.listdir(tmp)) == ["dataset.json"]


@attack("X-2 a lone surrogate in a predictions file")
def _(request, tmp):
    (tmp / "r.json").write_text(json.dumps(REFS))
    (tmp / "p.json").write_text('{"c0": "a \\udfff man"}')
    r = run([tool("evalkit"), "score", "--pred", str(tmp / "p.json"), "--refs", str(tmp / "r.json"), "--no-meteor",
             "--per-clip", str(tmp / "c.csv")])
    assert one_line_error(r, "evalkit score") == (
        f"{tmp / 'p.json'}: invalid JSON: the string 'a \\udfff man' holds a lone surrogate (U+DFFF), which is not "
        "Unicode text")  # was: a UnicodeEncodeError traceback writing the CSV
    assert sorted(os.listdir(tmp)) == ["p.json", "r.json"]


@attack("X-3 line breaks inside captions never shift PTB's captions onto other clips")
def _(request, tmp):
    preds = {"a": "one two", "b": "three four", "c": "five six", "d": "seven"}
    broken = {"a": ["one\rtwo"], "b": ["three\u2028four"], "c": ["five\x85six"], "d": ["seven"]}
    spaced = {"a": ["one two"], "b": ["three four"], "c": ["five six"], "d": ["seven"]}
    got = evalkit.score(preds, broken, meteor=False, per_clip=True, tokenizer="ptb")
    assert got == evalkit.score(preds, spaced, meteor=False, per_clip=True, tokenizer="ptb")
    assert got["per_clip"]["d"]["Bleu_1"] == pytest.approx(1.0)  # was: "d" scored against "four"


# ---- A-6b: the four tracebacks ---------------------------------------------------------------------
@attack("A-6b --scheduler 'tcp://[::1'")
def _(request, tmp):
    r = run([tool("pipeline"), "build", "--dataset", "msrvtt", "--root", str(request.getfixturevalue("synth_small")),
             "--out", str(tmp / "o"), "--scheduler", "tcp://[::1", "--quiet"])
    assert one_line_error(r, "pipeline build") == (
        "--scheduler tcp://[::1: expected a Dask scheduler address like tcp://HOST:PORT")  # was: ValueError
    assert os.listdir(tmp) == []


def train_stage1(request, tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run([tool("train"), "--stage", "1", "--data", str(request.getfixturevalue("built_small")), "--run",
                str(tmp / "run"), "--preset", "tiny", "--quiet", "num_workers=0", *overrides])


@attack("A-6b model.hidden=65536 model.embed=65536")
def _(request, tmp):
    r = train_stage1(request, tmp, "model.hidden=65536", "model.embed=65536")
    msg = one_line_error(r, "train")  # was: DefaultCPUAllocator's 64 GiB RuntimeError traceback
    assert msg.startswith("model.hidden=65536 model.embed=65536: a model of 85.9 G parameters needs about 1,375 GB to "
                          "train (weights, gradients and Adam's two moments), and cpu has "), msg
    assert msg.endswith(" GB available; choose smaller sizes")
    assert os.listdir(tmp / "run" / "stage1") == [".lock"]


@attack("A-6b the PTB tokenizer's Java process fails")
def _(request, tmp):
    env = {**ENV, "JAVA_TOOL_OPTIONS": "-Xmx1k"}  # the JVM cannot start with a 1 kB heap
    (tmp / "p.json").write_text(json.dumps({"c0": "a man"}))
    (tmp / "r.json").write_text(json.dumps({"c0": ["a man plays"]}))
    for flags in (["--no-meteor"], []):  # with METEOR too: its process is closed, nothing hangs
        r = run([tool("evalkit"), "score", "--pred", str(tmp / "p.json"), "--refs", str(tmp / "r.json"), *flags],
                env=env, timeout=120)
        assert one_line_error(r, "evalkit score") == (
            "the PTB tokenizer (java -cp stanford-corenlp-3.4.1.jar) failed with exit status 1: Error occurred during "
            "initialization of VM; Too small maximum heap")  # was: CalledProcessError traceback
        assert sorted(os.listdir(tmp)) == ["p.json", "r.json"]


@attack("X-4 METEOR's Java process dies while scoring")
def _(request, tmp):
    with evalkit.Scorer() as s:
        s._meteor.meteor_p.kill()
        s._meteor.meteor_p.wait()
        with pytest.raises(UserError, match=r"^METEOR \(java -jar meteor-1.5.jar\) failed \(exit status -9\)"):
            s.score({"c0": "a man"}, {"c0": ["a man plays"]})
    # closed without hanging on the lock the failed call held


@attack("A-6b backbone_weights=/nonexistent.pt with a backbone that has no weights")
def _(request, tmp):
    r = train_stage1(request, tmp, "backbone_weights=/nonexistent.pt")
    assert one_line_error(r, "train") == "backbone_weights=/nonexistent.pt: weights file not found"  # was ignored
    assert os.listdir(tmp / "run" / "stage1") == [".lock"]


@attack("A-6b backbone_weights=FILE given to the tiny backbone")
def _(request, tmp):
    weights = tmp / "w.pt"
    torch.save({"x": torch.zeros(1)}, weights)
    r = train_stage1(request, tmp, f"backbone_weights={weights}")
    assert one_line_error(r, "train") == (
        f"backbone_weights={weights}: backbone tiny has no pretrained weights to load (it is a small CNN for tests "
        "and the built-in dataset, always randomly initialised); leave backbone_weights out")


# ---- A-4e: the run lock of a SIGKILLed trainer -------------------------------------------------------
@attack("A-4e lock of a SIGKILLed trainer whose forked child lives on")
def _(request, tmp):
    """The trainer's DataLoader workers are forked children that outlive it for up to 5 s; here a
    forked child that outlives its parent for as long as the test needs."""
    stage = tmp / "run" / "stage1"
    code = ("import os, sys, time\nfrom vidcap.train import run_lock\n"
            f"run_lock.acquire({str(stage)!r})\nchild = os.fork()\n"
            "if child == 0:\n    time.sleep(60)\n    os._exit(0)\n"
            "print(child, flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    child = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        t0 = time.monotonic()
        r = train_stage1(request, tmp, "--resume")
        # the lock was free at once: the trainer got as far as looking for last.pt
        assert one_line_error(r, "train") == f"{stage / 'last.pt'}: nothing to resume"
        assert psutil.pid_exists(child) and time.monotonic() - t0 < 60
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("row", list(ATTACKS))
def test_hostile_input(row, request, tmp_path):
    ATTACKS[row](request, tmp_path)


def test_resume_one_moment_after_a_sigkilled_trainer(built_small, tmp_path):
    """A-4e as the red team ran it: a real trainer streaming frames through 2 DataLoader workers is
    killed with SIGKILL mid-epoch, after a step checkpoint, and --resume starts at once."""
    cmd = [tool("train"), "--stage", "1", "--data", str(built_small), "--run", str(tmp_path), "--preset", "tiny",
           "--quiet", "epochs=2", "batch_size=2", "num_workers=2", "save_every=1", "feature_cache=false",
           "shuffle_buffer=4"]
    # no pipes: the workers inherit them, and waiting for the pipes to close would wait for the workers
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    metrics, deadline = tmp_path / "stage1" / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            metrics.exists() and metrics.read_text().count('"event": "step"') >= 2):
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    orphans = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    # the scene of the log: the trainer is gone, its forked workers are not yet (torch's 5 s watchdog)
    assert orphans, f"none of the killed trainer's {len(workers)} DataLoader workers outlived it"
    r = run([*cmd, "--resume"], timeout=600)
    assert r.returncode == 0 and "another trainer" not in r.stderr, r.stderr[-3000:]
    assert (tmp_path / "stage1" / "best.pt").exists()
    steps = [json.loads(x) for x in metrics.read_text().splitlines() if '"event": "step"' in x]
    assert len({(s["epoch"], s["step"]) for s in steps}) == len(steps)  # resumed, no step twice
