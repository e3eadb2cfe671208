"""The memory options (issue 39) change memory, never the step. Lean REINFORCE (always on) gives the
full-distribution path's loss and gradients while keeping less for backward; grad_checkpoint=true
and accumulate=N each give the plain step's gradients on a tiny model; each switches off; bad
values are one line naming the key."""

from __future__ import annotations

import pytest
import torch

from vidcap.errors import UserError
from vidcap.evalkit.cider import CiderD
from vidcap.model import ARCHS, create_model, decoding, make_config
from vidcap.model.backbones import _CheckpointedForward, checkpoint_blocks, set_grad_checkpointing
from vidcap.tokens import SPECIALS
from vidcap.train.config import make_train_config
from vidcap.train.losses import rl_loss
from vidcap.train.step import RecipeLoss

WORDS = ["a", "man", "woman", "dog", "cat", "red", "blue", "car", "runs", "jumps", "sits", "on", "the", "road"]
ITOS = [*SPECIALS, *WORDS]
STOI = {w: i for i, w in enumerate(ITOS)}
CLIPS = [f"c{i}" for i in range(6)]
CAPTIONS = [["a man runs on the road", "a man runs"], ["a dog jumps", "the dog jumps on the car"],
            ["a red car", "a red car on the road"], ["a cat sits", "the blue cat sits"],
            ["a woman runs", "the woman runs on the road"], ["a blue car", "the car on the road"]]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict, b: dict, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        scale = a[k].abs().max().item() + 1e-12
        assert (a[k] - b[k]).abs().max().item() <= rtol * scale + 1e-7, k


# ---- lean REINFORCE ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_lean_reinforce_equals_the_full_distribution_path(arch, monkeypatch):
    """Same samples, same log-probs, same loss and gradients (dropout on: the masks are the sampling pass's)."""
    torch.manual_seed(0)
    model = create_model(make_config("tiny", 300, arch=arch)).double().train()
    feats = torch.randn(4, 5, 128, dtype=torch.float64)
    rewards, base = torch.rand(12, dtype=torch.float64), torch.rand(12, dtype=torch.float64)
    out = []
    for lean in (False, True):
        monkeypatch.setattr(decoding, "LEAN_SAMPLING", lean)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        seqs, logps = model.sample(feats, n=3)
        loss = rl_loss(logps, seqs, rewards, base)
        loss.backward()
        out.append((seqs, logps.detach(), loss.item(), _grads(model)))
    (s0, l0, loss0, g0), (s1, l1, loss1, g1) = out
    assert torch.equal(s0, s1) and torch.allclose(l0, l1, atol=1e-12) and loss0 == pytest.approx(loss1, abs=1e-12)
    _assert_same_grads(g0, g1, 1e-9)


def _saved_bytes(fn, model: torch.nn.Module | None = None) -> int:
    """Bytes of the tensors autograd keeps for backward while `fn` runs (each storage once; the
    parameters of `model`, which exist anyway, left out)."""
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()} if model is not None else set()

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # not t: an output saved by its own grad_fn would make a reference cycle

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_lean_reinforce_keeps_the_chosen_words_not_the_distribution(monkeypatch):
    """What sampling keeps for backward grows with the vocabulary by (rows x steps x words) floats on
    the full path; on the lean path by the vocabulary layer's weights alone."""
    saved = {}
    for vocab in (2000, 4000):
        torch.manual_seed(0)
        model = create_model(make_config("tiny", vocab)).train()
        feats = torch.randn(8, 5, 128)
        for lean in (False, True):
            monkeypatch.setattr(decoding, "LEAN_SAMPLING", lean)
            torch.manual_seed(1)
            saved[vocab, lean] = _saved_bytes(lambda m=model, f=feats: m.sample(f, n=8, max_len=20))
    layer = 2000 * (64 + 1) * 4  # the added words' weights and biases
    assert saved[4000, True] - saved[2000, True] <= layer
    assert saved[4000, False] - saved[2000, False] > 10 * layer


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_teacher_forced_chosen_log_probs_equal_the_sampled_ones(arch):
    torch.manual_seed(0)
    model = create_model(make_config("tiny", 300, arch=arch)).double().eval()
    feats = torch.randn(4, 5, 128, dtype=torch.float64)
    with torch.no_grad():
        seqs, logps = model.sample(feats, n=3)
    assert torch.allclose(decoding.chosen_logprobs(model, feats.repeat_interleave(3, 0), seqs), logps, atol=1e-10)


# ---- the step with and without each option ----------------------------------------------------

def _batch(n: int = 6, frames: bool = True) -> dict:
    g = torch.Generator().manual_seed(3)
    batch = {"clip_id": CLIPS[:n], "captions": CAPTIONS[:n],
             "attrs": (torch.rand(n, 16, generator=g) > 0.5).float()}
    if frames:
        batch["frames"] = torch.randint(0, 256, (n, 5, 3, 64, 64), dtype=torch.uint8, generator=g)
    else:
        batch["feats"] = torch.randn(n, 5, 128, generator=g)
    return batch


def _step(recipe: str, overrides: list[str], batch: dict, dropout: float = 0.0) -> tuple[dict, dict]:
    """One step's gradients and statistics, from the same weights and RNG state each call."""
    cfg = make_train_config(recipe, "tiny", ["batch_size=6", "samples=3", *overrides])
    torch.manual_seed(0)
    model = create_model(make_config("tiny", len(ITOS), dropout=dropout, init_range=0.5))
    model.freeze_backbone(not cfg.train_cnn)
    model.train()
    reward = CiderD(ITOS, dict(zip(CLIPS, CAPTIONS, strict=True))).score if cfg.rl_weight else None
    step = RecipeLoss(model, cfg, STOI, reward)
    torch.manual_seed(1)
    if cfg.accumulate > 1:
        stats = step.accumulate(batch, 0)
    else:
        loss, stats = step(batch, 0)
        loss.backward()
    return _grads(model), stats


@pytest.mark.parametrize("recipe", ["rfc+", "e2e", "e2e-att-xe"])
def test_accumulate_gives_the_plain_steps_loss_and_gradients(recipe):
    """4 micro-batches of 2, 2, 1, 1 clips: the same samples, rewards and greedy baselines, the same sums."""
    batch = _batch(frames=recipe != "rfc+")
    g0, s0 = _step(recipe, [], batch)
    g1, s1 = _step(recipe, ["accumulate=4"], batch)
    assert s0.keys() == s1.keys()
    for k in s0:
        assert s1[k] == pytest.approx(s0[k], rel=1e-4, abs=1e-6), k
    if "rl_loss" in s0:
        assert s0["rl_loss"] != 0.0  # the samples' rewards differ from the baseline: a real gradient
    _assert_same_grads(g0, g1)
    if recipe == "e2e":
        assert any(k.startswith("backbone.") for k in g1)


def test_accumulate_with_dropout_draws_the_same_samples():
    """Dropout on: the same draws (reward, baseline); the loss is the same estimate under other masks."""
    batch = _batch(frames=False)
    _, s0 = _step("rfc+", [], batch, dropout=0.3)
    _, s1 = _step("rfc+", ["accumulate=3"], batch, dropout=0.3)
    assert s1["reward"] == s0["reward"] and s1["baseline"] == s0["baseline"]


@pytest.mark.parametrize("recipe", ["e2e", "e2e-att-xe"])
def test_grad_checkpoint_gives_the_plain_steps_gradients(recipe):
    batch = _batch()
    g0, s0 = _step(recipe, [], batch, dropout=0.2)
    g1, s1 = _step(recipe, ["grad_checkpoint=true"], batch, dropout=0.2)
    assert s1["loss"] == pytest.approx(s0["loss"], rel=1e-5)
    _assert_same_grads(g0, g1)
    g2, _ = _step(recipe, ["grad_checkpoint=true", "accumulate=2"], batch)
    g3, _ = _step(recipe, [], batch)
    _assert_same_grads(g3, g2)


def test_grad_checkpoint_keeps_less_and_switches_off():
    torch.manual_seed(0)
    model = create_model(make_config("tiny", 30))
    model.freeze_backbone(False)
    frames = torch.randint(0, 256, (4, 5, 3, 64, 64), dtype=torch.uint8)
    plain = _saved_bytes(lambda: model.frame_features(frames))
    blocks = checkpoint_blocks(model.backbone)
    assert set_grad_checkpointing(model.backbone, True) == len(blocks) > 0
    assert all(isinstance(b.__dict__["forward"], _CheckpointedForward) for b in blocks)
    lean = _saved_bytes(lambda: model.frame_features(frames))
    assert lean < 0.6 * plain  # the first convolution keeps its input, the images, either way
    assert set(model.state_dict()) == set(create_model(make_config("tiny", 30)).state_dict())
    set_grad_checkpointing(model.backbone, False)
    assert not any("forward" in b.__dict__ for b in blocks)
    assert _saved_bytes(lambda: model.frame_features(frames)) == plain


@pytest.mark.parametrize(("override", "message"), [
    ("accumulate=0", "accumulate=0: must be between 1 and 1024"),
    ("accumulate=7", "accumulate=7: more micro-batches than the batch's 6 clips"),
    ("accumulate=two", "accumulate=two: expected an integer"),
    ("grad_checkpoint=maybe", "grad_checkpoint=maybe: expected true or false"),
])
def test_bad_values_are_one_line(override, message):
    with pytest.raises(ValueError) as e:
        make_train_config(3, "tiny", ["batch_size=6", override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_options_with_batch_statistics_or_torchrun_are_refused():
    with pytest.raises(ValueError, match="grad_checkpoint=true with bn_stats=true"):
        make_train_config(3, "tiny", ["bn_stats=true", "grad_checkpoint=true"])
    with pytest.raises(ValueError, match="accumulate=2 with bn_stats=true"):
        make_train_config(3, "tiny", ["bn_stats=true", "accumulate=2"])
    cfg = make_train_config(3, "tiny", ["accumulate=2"])
    with pytest.raises(UserError, match="accumulate=2 runs in one process"):
        RecipeLoss(create_model(make_config("tiny", 30)), cfg, STOI, None, world=2)


def test_lean_rnn_gives_onednns_gradients_and_keeps_less(monkeypatch):
    """On the CPU the LSTMs' training passes skip oneDNN's RNN kernel (its workspace per row and step
    is ~56x the native kernel's at the paper's sizes): the same loss and gradients, to float rounding."""
    from vidcap.model import s2vt

    torch.manual_seed(0)
    model = create_model(make_config("tiny", 300, hidden=256, embed=128)).train()
    feats = torch.randn(4, 5, 128)
    out = {}
    for lean in (False, True):
        monkeypatch.setattr(s2vt, "LEAN_RNN", lean)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        saved = _saved_bytes(lambda k=lean: out.setdefault(k, model.sample(feats, n=4, max_len=12)), model)
        seqs, logps = out[lean]
        rl_loss(logps, seqs, torch.linspace(0, 1, 16), torch.full((16,), 0.5)).backward()
        out[lean] = (seqs, logps.detach(), _grads(model), saved)
    (s0, l0, g0, b0), (s1, l1, g1, b1) = out[False], out[True]
    assert torch.equal(s0, s1) and torch.allclose(l0, l1, atol=1e-5)
    _assert_same_grads(g0, g1, 1e-3)
    assert b1 * 3 < b0


def test_the_readme_memory_table_is_what_bench_experiments_memory_measured():
    """The README's peak-RSS figures for the paper preset are bench/experiments/memory.py's report rows,
    not numbers typed by hand (the driver itself takes about an hour: not in CI)."""
    import json

    from conftest import REPO

    from bench.experiments import memory  # noqa: F401 -- the driver imports without editing sys.path

    rows = {r["name"]: r for r in json.loads((REPO / "bench" / "experiments" / "memory_report.json").read_text())["steps"]}
    readme = (REPO / "README.md").read_text()
    for name in ("s2 lean", "s3 lean ckpt"):
        assert f"{rows[name]['peak_rss_gb']:.1f} GB" in readme, name
        assert rows[name]["peak_rss_gb"] <= 12 and rows[name]["vocab"] == 9439
