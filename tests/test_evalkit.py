"""evalkit: pycocoevalcap metrics as the paper reports them, and the fast CIDEr-D reward."""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path, tool
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

import vidcap.evalkit as evalkit
from vidcap.errors import UserError
from vidcap.evalkit.cider import CiderD
from vidcap.evalkit.coco import ptb_tokenize
from vidcap.evalkit.ngrams import document_frequencies, reference_tokens
from vidcap.shards.layout import Build
from vidcap.tokens import SPECIALS as TOKEN_SPECIALS

SPECIALS = list(TOKEN_SPECIALS)


class _Docs(list):
    """pycocoevalcap sets ref_len = log(len(crefs)); with fixed df it must be log(n_docs)."""

    def __init__(self, items, n_docs):
        super().__init__(items)
        self.n_docs = n_docs

    def __len__(self):
        return self.n_docs


def reference_cider_d(cands: dict, refs: dict, df, n_docs) -> np.ndarray:
    """pycocoevalcap's own CiderScorer.compute_cider, with fixed document frequencies."""
    sc = CiderScorer(n=4, sigma=6.0)
    for k in cands:
        sc.cook_append(" ".join(cands[k]), [" ".join(r) for r in refs[k]])
    sc.document_frequency = df
    sc.crefs = _Docs(sc.crefs, n_docs)
    return np.array(sc.compute_cider())


def _ids(tokens_list, vocab):
    wid = {w: i for i, w in enumerate(vocab)}
    width = max(len(t) for t in tokens_list) + 3
    out = np.zeros((len(tokens_list), width), dtype=np.int64)
    for i, t in enumerate(tokens_list):
        x = [wid.get(w, 3) for w in t]
        out[i, : len(x)] = x
    return out


def _as_model_sees(tokens, vocab):
    known = set(vocab)
    return [w if w in known else "<unk>" for w in tokens]


def test_cider_d_matches_pycocoevalcap_on_real_msvd_captions():
    root = shared_path("data", "captions", "msvd")
    train = json.loads((root / "msvd_train.json").read_text())
    val = json.loads((root / "msvd_test.json").read_text())[:200]
    df, n_docs = document_frequencies([[reference_tokens(c) for c in caps] for _, _, caps in train])
    refs = {f: [reference_tokens(c) for c in caps[1:]] for f, _, caps in val}
    cands = {f: reference_tokens(caps[0]) for f, _, caps in val}
    words = sorted({w for caps in refs.values() for r in caps for w in r} - {"<eos>"})
    vocab = SPECIALS + words[::2]  # half the words out of vocabulary: <unk> must never match
    cd = CiderD(vocab, refs, df, n_docs)
    seen = {k: _as_model_sees(v, vocab) for k, v in cands.items()}
    ours = cd.score(list(cands), _ids(list(seen.values()), vocab))
    theirs = reference_cider_d(seen, refs, df, n_docs)
    assert np.abs(ours - theirs).max() < 1e-6
    assert theirs.max() > 0.5  # a real test: held-out references do score


def test_cider_d_matches_pycocoevalcap_on_a_random_corpus():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    refs = {f"c{i}": [[rng.choice(words) for _ in range(rng.randint(1, 12))] + ["<eos>"] for _ in range(rng.randint(1, 6))]
            for i in range(60)}
    vocab = SPECIALS + words
    clips = [f"c{rng.randrange(60)}" for _ in range(300)]
    cands = [[rng.choice(words) for _ in range(rng.randint(0, 15))] + ["<eos>"] for _ in clips]
    cd = CiderD(vocab, refs)  # df from the references themselves
    df, n_docs = document_frequencies(refs.values())
    ours = cd.score(clips, _ids(cands, vocab))
    theirs = np.array([reference_cider_d({"x": c}, {"x": refs[k]}, df, n_docs)[0] for k, c in zip(clips, cands, strict=True)])
    assert np.abs(ours - theirs).max() < 1e-6
    # tokens after <eos> are ignored; a row without <eos> is scored whole
    ids = _ids(cands, vocab)
    tail = ids.copy()
    tail[:, -1] = 5
    assert np.allclose(cd.score(clips, tail), ours)


def test_cider_d_loads_pipeline_document_frequencies(built_small):
    df, n_docs = Build(built_small).cider_df()
    vocab = json.loads((built_small / "vocab.json").read_text())["itos"]
    metas = Build(built_small).split("train").metas
    refs = {m["clip_id"]: [reference_tokens(c) for c in m["captions"][1:]] for m in metas}
    cands = {m["clip_id"]: _as_model_sees(reference_tokens(m["captions"][0]), vocab) for m in metas}
    cd = CiderD(vocab, refs, df, n_docs)
    ours = cd.score(list(cands), _ids(list(cands.values()), vocab))
    assert np.abs(ours - reference_cider_d(cands, refs, df, n_docs)).max() < 1e-6


def test_cider_d_bad_input():
    with pytest.raises(ValueError, match="has no reference captions"):
        CiderD(SPECIALS, {"a": []})
    cd = CiderD(SPECIALS + ["x"], {"a": ["x"]})
    with pytest.raises(ValueError, match="'b' has no references"):
        cd.score(["b"], np.array([[4, 2]]))
    assert cd.score([], np.zeros((0, 3), dtype=np.int64)).shape == (0,)


PREDS = {"v1": "a man is playing a guitar", "v2": "a dog runs on the grass.", "v3": "A woman slices a tomato!"}
REFS = {"v1": ["a man plays the guitar", "someone is playing guitar", "A man is strumming a guitar."],
        "v2": ["a dog is running", "the dog runs across a field", "a puppy plays on grass"],
        "v3": ["a woman is cutting a tomato", "someone slices tomatoes", "a lady chops a tomato"]}


@pytest.fixture(scope="module")
def coco_reference():
    """pycocoevalcap's own flow (its PTBTokenizer writes into its package directory)."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    out = {}
    for scorer, names in ((Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])):
        s, _ = scorer.compute_score(gts, res)
        out.update(zip(names, s if isinstance(s, list) else [s], strict=True))
    return out, gts, res


def test_score_equals_pycocoevalcap_exactly(coco_reference):
    ref, _, _ = coco_reference
    ours = evalkit.score(PREDS, REFS)
    for k, v in ref.items():
        assert ours[k] == v, k
    assert 0 < ours["METEOR"] < 1 and ours["CIDEr"] > 0.5


def test_ptb_tokenize_matches_and_leaves_the_package_directory_alone(coco_reference, tmp_path):
    _, gts, _ = coco_reference
    pkg = Path(ptbtokenizer.__file__).parent
    before = sorted(os.listdir(pkg))
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp_path)
    try:
        ours = ptb_tokenize(REFS)
    finally:
        tempfile.tempdir = old
    assert ours == gts and sorted(os.listdir(pkg)) == before


def test_empty_prediction_scores_zero_and_bad_ids_are_listed():
    r = evalkit.score({"v1": "", "v2": PREDS["v2"]}, REFS, meteor=False, per_clip=True)
    assert r["per_clip"]["v1"]["CIDEr"] == 0 and r["per_clip"]["v1"]["ROUGE_L"] == 0 and r["per_clip"]["v1"]["Bleu_4"] < 1e-6
    with pytest.raises(UserError, match=r"7 prediction ids have no references: \['x0', 'x1', 'x2', 'x3', 'x4'\] \(and 2 more\)"):
        evalkit.score({f"x{i}": "a" for i in range(7)}, REFS, meteor=False)
    with pytest.raises(UserError, match="clip 'v1' has no reference captions"):
        evalkit.score({"v1": "a"}, {"v1": ["", " "]}, meteor=False)


def test_scorer_starts_meteor_once_and_closes_it():
    with evalkit.Scorer() as s:
        proc = s._meteor.meteor_p
        a = s.score(PREDS, REFS)
        b = s.score(PREDS, REFS)
        assert a == b and s._meteor.meteor_p is proc
    assert proc.poll() is not None


def test_evalkit_cli(tmp_path, built_small):
    (tmp_path / "p.json").write_text(json.dumps([{"image_id": k, "caption": v} for k, v in PREDS.items()]))
    (tmp_path / "r.json").write_text(json.dumps(REFS))
    r = subprocess.run([tool("evalkit"), "score", "--pred", str(tmp_path / "p.json"), "--refs", str(tmp_path / "r.json"),
                        "--per-clip", str(tmp_path / "c.csv"), "--no-meteor"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "CIDEr" in r.stdout and len((tmp_path / "c.csv").read_text().splitlines()) == 4
    metrics = json.loads((tmp_path / "p.metrics.json").read_text())
    assert metrics["CIDEr"] == evalkit.score(PREDS, REFS, meteor=False)["CIDEr"]
    test_ids = list(Build(built_small).references("test"))
    (tmp_path / "s.json").write_text(json.dumps({i: "a red circle moves to the left" for i in test_ids}))
    r = subprocess.run([tool("evalkit"), "score", "--pred", str(tmp_path / "s.json"), "--refs", str(built_small),
                        "--no-meteor"], capture_output=True, text=True)
    assert r.returncode == 0 and "Bleu_4" in r.stdout, r.stderr
    r = subprocess.run([tool("evalkit"), "score", "--pred", str(tmp_path / "s.json"), "--refs", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "have no references" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_java_is_explained(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="apt-get install -y default-jre-headless"):
        evalkit.score(PREDS, REFS)
