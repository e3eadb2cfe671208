"""Training under torchrun -- real 2-process gloo groups on 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tool

from vidcap.errors import UserError
from vidcap.model import S2VTCaptioner, make_config, save_checkpoint
from vidcap.shards.layout import DataInfo
from vidcap.train import distributed
from vidcap.train.config import make_train_config
from vidcap.train.data import SplitStream, torch_loader


def torchrun(n: int, *args: str) -> list[str]:
    """The README's command: torchrun ... $(which train) -- ARGS (the `--` keeps --run ours)."""
    return [tool("torchrun"), "--standalone", "--nproc_per_node", str(n), tool("train"), "--", *args]


def records(run: Path, stage: str = "stage1") -> list[dict]:
    return [json.loads(x) for x in (run / stage / "metrics.jsonl").read_text().splitlines()]


def one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_ranks_train_stages_1_and_2_on_uneven_shards(built_small, tmp_path):
    """17 training clips in shards of 4, 4, 4, 4, 1: each rank gets 9 (one seen twice), both run the
    same steps; stage 2 starts from the checkpoint only rank 0 reads, rewards per rank."""
    run = tmp_path / "run"
    common = ["--data", str(built_small), "--run", str(run), "--preset", "tiny", "--quiet", "num_workers=0"]
    for stage, extra in (("1", ["epochs=2", "feature_cache=false"]), ("2", ["batch_size=4"])):
        r = subprocess.run(torchrun(2, "--stage", stage, *common, *extra), capture_output=True, text=True,
                           timeout=300, env=one_thread())
        assert r.returncode == 0, f"stage {stage}: {r.stderr[:3000]}\n...\n{r.stderr[-3000:]}"
        assert r.stdout.count(" done: best val CIDEr ") == 1, r.stdout  # rank 0 reports, once
    for stage, batch in (("stage1", 8), ("stage2", 4)):
        recs = records(run, stage)
        starts = [x for x in recs if x["event"] == "start"]
        assert len(starts) == 1 and starts[0]["world_size"] == 2  # one writer
        per_epoch = math.ceil(math.ceil(17 / 2) / batch)  # on every rank
        epochs = [x for x in recs if x["event"] == "epoch"]
        assert epochs and all(x["steps"] == per_epoch for x in epochs)
        assert all("val_CIDEr" in x for x in recs if x["event"] == "epoch")
        assert len(list((run / stage / "tb").glob("events.out.tfevents.*"))) == 1
        ckpt = torch.load(run / stage / "last.pt", weights_only=True)
        assert ckpt["extra"]["world_size"] == 2 and len(ckpt["extra"]["rng"]) == 2
    assert all("reward" in x for x in records(run, "stage2") if x["event"] == "step")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(data: Path, n: int) -> dict:
    info = DataInfo.load(data)
    return next(iter(torch_loader(SplitStream(info, "train"), 64, n, 0)))


def _part(batch: dict, rank: int, world: int) -> dict:
    per = len(batch["clip_id"]) // world
    return {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}


def _two_steps(cfg_args: tuple, rank: int, world: int, port: int, out: str) -> None:
    """In one process (world 1) or as rank `rank` of a gloo group: two steps on the same global
    batch; rank 0 saves both steps' logged losses and the weights."""
    if world > 1:  # a spawned child: this process is rank `rank`
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        torch.set_num_threads(1)
    from vidcap.train.loop import Trainer

    data, run, init = cfg_args
    cfg = make_train_config("e2e-att-xe", "tiny", ["num_workers=0", "feature_cache=false"], data=data,
                            run=f"{run}/w{world}", init=init)
    t = Trainer(cfg, progress=False)
    weights0 = [p.detach().clone() for p in t.model.parameters()]
    synced = t.dist.gather(sum(float(w.double().sum()) for w in weights0))
    batch = _part(_global_batch(Path(data), 8), rank, world)
    losses = [t.step(batch, 0) for _ in range(2)]
    if rank == 0:
        torch.save({"losses": losses, "synced": synced, "weights": t.model.state_dict()}, out)
    t.close(synced=True)  # as fit() leaves: rank 1 waits for rank 0's save before the group goes


def test_one_step_under_ddp_equals_one_process_on_the_global_batch(built_small, tmp_path):
    """A recipe without sampling (cross-entropy + attributes, CNN trained), dropout 0: the 2-rank
    step is the 1-process step on the same 8 clips (4 per rank). With sampling (RL) the ranks draw
    from their own RNG streams, so only the statistics agree."""
    info = DataInfo.load(built_small)
    model = S2VTCaptioner(make_config("tiny", len(info.itos), n_attributes=len(info.attributes), dropout=0.0))
    save_checkpoint(tmp_path / "init.pt", model, info.itos, info.attributes)
    args = (str(built_small), str(tmp_path), str(tmp_path / "init.pt"))
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_two_steps, args=(args, r, 2, port, str(tmp_path / "ddp.pt"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    _two_steps(args, 0, 1, 0, str(tmp_path / "one.pt"))
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert ddp["synced"][0] == ddp["synced"][1]  # rank 1's model is rank 0's from the start
    for step in range(2):
        for k, v in one["losses"][step].items():
            assert abs(ddp["losses"][step][k] - v) < 1e-5, (step, k, ddp["losses"][step][k], v)
    for k, v in one["weights"].items():
        assert torch.allclose(ddp["weights"][k].float(), v.float(), atol=1e-5, rtol=0), k
    assert one["losses"][1]["loss"] != one["losses"][0]["loss"]  # the step did change the model


def test_a_rank_that_dies_ends_the_job_with_an_error_not_a_hang(built_small, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(torchrun(2, "--stage", "1", "--data", str(built_small), "--run", str(run), "--preset",
                                     "tiny", "--quiet", "num_workers=0", "feature_cache=false", "epochs=500",
                                     "eval_every=1000", "batch_size=2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=one_thread())
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "stage1" / "metrics.jsonl").exists() or not [
                x for x in records(run) if x["event"] == "step"]:
            time.sleep(0.2)
        rank1 = [c for c in psutil.Process(proc.pid).children(recursive=True)
                 if c.environ().get("RANK") == "1" and c.environ().get("LOCAL_RANK") == "1"]
        rank1[0].kill()  # SIGKILL: no handler, no goodbye
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL)" in out or "exitcode  : -9" in out, out[-3000:]


def test_cuda_misconfiguration_fails_loudly(monkeypatch):
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=r"^device=cuda, but torch.cuda.is_available\(\) is False"):
        distributed.setup("cuda")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match=r"^RANK=2 is outside 0..WORLD_SIZE-1 \(WORLD_SIZE=2\)$"):
        distributed.setup("cpu")


def test_sigterm_under_torchrun_saves_once_and_resumes(built_small, tmp_path):
    """torchrun passes SIGTERM to every rank; they agree on the step, rank 0 saves last.pt with both
    ranks' RNG states, and a resumed job finishes the epoch on the same batches, to the weights of
    an uninterrupted 2-process run; at an epoch end, another number of processes may take over."""
    run = tmp_path / "run"
    args = ["--stage", "1", "--data", str(built_small), "--run", str(run), "--preset", "tiny", "--quiet",
            "num_workers=0", "feature_cache=false", "batch_size=1", "epochs=2", "eval_every=9"]
    proc = subprocess.Popen(torchrun(2, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=one_thread())
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (run / "stage1" / "metrics.jsonl").exists() and [x for x in records(run) if x["event"] == "step"]):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    extra = torch.load(run / "stage1" / "last.pt", weights_only=True)["extra"]
    assert extra["world_size"] == 2 and len(extra["rng"]) == 2, out[-2000:]
    pos = extra["position"]
    assert 0 < pos["step"] < 18 and "stopped by SIGTERM" in out, (pos, out[-2000:])
    r = subprocess.run(torchrun(2, "--resume", *args), capture_output=True, text=True, timeout=300, env=one_thread())
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [x["step"] for x in records(run) if x["event"] == "step"]
    assert steps == list(range(1, 19))  # 9 batches per rank per epoch, each logged once
    whole = tmp_path / "whole"
    r = subprocess.run(torchrun(2, *[str(whole) if a == str(run) else a for a in args]), capture_output=True, text=True,
                       timeout=300, env=one_thread())
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(run / "stage1" / "last.pt", weights_only=True)["model"]
    b = torch.load(whole / "stage1" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)  # gloo, same world size: bit-exact here too
    r = subprocess.run(torchrun(1, "--resume", *args[:-2], "epochs=3", "eval_every=9"), capture_output=True, text=True,
                       timeout=300, env=one_thread())
    assert r.returncode == 0, r.stderr[-3000:]  # another world size: fine at an epoch end
    assert [x["world_size"] for x in records(run) if x["event"] == "start"][-1] == 1
