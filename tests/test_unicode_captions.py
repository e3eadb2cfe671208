"""Captions in every script. One rule (vidcap.text: NFC, lower case, letters and
marks of every script, each Chinese/Japanese character a token) from the build's captions through
the vocabulary, the spaCy attributes, the CIDEr-D document frequencies, the training reward and
`evalkit score` -- asserted token by token over Latin with accents, Cyrillic, Chinese, Arabic and
Devanagari, with a real build (Dask, real spaCy), real Java (PTB) and the real console scripts."""

from __future__ import annotations

import csv
import json
import string
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tool

from vidcap.evalkit.coco import choose_tokenizer, ptb_tokenize, unicode_tokenize
from vidcap.pipeline.build import BuildConfig, build
from vidcap.shards.layout import Build
from vidcap.text import is_word, normalize, tokenize
from vidcap.tokens import encode
from vidcap.train.reward import make_reward

NFD_CAFE = "cafe\u0301"  # "café" typed as e + COMBINING ACUTE ACCENT
RULE = [
    ("Un homme boit un café très chaud.", ["un", "homme", "boit", "un", "café", "très", "chaud"]),
    (f"un homme boit un {NFD_CAFE} tre\u0300s chaud", ["un", "homme", "boit", "un", "café", "très", "chaud"]),
    ("Мужчина едет на красной машине.", ["мужчина", "едет", "на", "красной", "машине"]),
    ("一个男人在开车。", ["一", "个", "男", "人", "在", "开", "车"]),
    ("男性が「赤い」車を運転している", ["男", "性", "が", "赤", "い", "車", "を", "運", "転", "し", "て", "い", "る"]),
    ("رجل يقود سيارة حمراء.", ["رجل", "يقود", "سيارة", "حمراء"]),
    ("एक आदमी लाल कार चला रहा है।", ["एक", "आदमी", "लाल", "कार", "चला", "रहा", "है"]),
    ("l\u2019homme «\u00a0rouge\u00a0» — 2 chats", ["l", "homme", "rouge", "2", "chats"]),
    ("\u200b\u200d🐶\u200e …", []),  # zero-width, emoji, bidi mark, ellipsis: nothing to train on
    ("pro\u00adgram ze\u200bro", ["program", "ze", "ro"]),  # soft hyphen removed; zero-width space splits
    ("A man's car.", ["a", "man", "s", "car"]),
]


@pytest.mark.parametrize("caption, tokens", RULE)
def test_the_rule_in_every_script(caption, tokens):
    assert tokenize(caption) == tokens
    assert all(unicodedata.is_normalized("NFC", t) for t in tokens)


def test_ascii_keeps_the_old_rule_exactly():
    """The ASCII fast path equals the Unicode rule on ASCII text: English tokens, vocabularies, df and
    scores are what they were before (a trailing non-ASCII word forces the Unicode path)."""
    text = string.printable + "A man's car, e.g. 3D_printing: x-ray & rock'n'roll!"
    for i in range(0, len(text), 7):
        chunk = text[i : i + 23]
        assert tokenize(chunk + " é")[:-1] == tokenize(chunk) == __import__("re").sub(
            r"[^0-9a-z]+", " ", chunk.lower()).split()
    assert is_word("man") and not is_word("3d") and is_word("चला") and is_word("café") and not is_word("x2")


def test_ptb_on_other_languages_as_measured():
    """What pycocoevalcap's PTB tokenizer (Java) really does to other languages, the reason for
    `evalkit score --tokenizer auto`: Latin, Cyrillic, Arabic, Devanagari kept; no NFC; Chinese one
    word plus the full stop (its punctuation list is ASCII)."""
    got = ptb_tokenize({"fr": ["un café très chaud"], "nfd": [f"un {NFD_CAFE}"], "ru": ["Мужчина едет."],
                        "zh": ["一个男人在开车。"], "ar": ["رجل يقود"], "hi": ["एक आदमी"], "emoji": ["a dog 🐶 runs"]})
    assert got == {"fr": ["un café très chaud"], "nfd": [f"un {NFD_CAFE}"], "ru": ["мужчина едет"],
                   "zh": ["一个男人在开车 。"], "ar": ["رجل يقود"], "hi": ["एक आदमी"], "emoji": ["a dog runs"]}
    assert unicode_tokenize({"zh": ["一个男人在开车。"], "nfd": [f"un {NFD_CAFE}"]}) == {
        "zh": ["一 个 男 人 在 开 车"], "nfd": ["un café"]}
    assert choose_tokenizer("auto", {"a": "a man"}, {"a": ["a man runs"]}) == "ptb"
    assert choose_tokenizer("auto", {"a": "a man"}, {"a": ["un café"]}) == "unicode"
    assert choose_tokenizer("ptb", {"a": "a man"}, {"a": ["un café"]}) == "ptb"


# ---- one build in five scripts ------------------------------------------------------------------
TRAIN = {
    "t_fr": ["Un homme boit un café très chaud.", f"un homme boit un {NFD_CAFE} tre\u0300s chaud",
             "Une femme boit du café."],
    "t_ru": ["Мужчина едет на красной машине.", "Мужчина ведёт красную машину."],
    "t_zh": ["一个男人在开车。", "男人开着一辆红色的车"],
    "t_ar": ["رجل يقود سيارة حمراء", "رجل يقود سيارة"],
    "t_hi": ["एक आदमी लाल कार चला रहा है", "आदमी कार चला रहा है"],
    "t_en": ["a man is driving a red car", "!!!", "…"],  # two punctuation-only captions: dropped and counted
}
TEST = {"x_café": ["un homme boit un café très chaud"], "x_ru": ["мужчина едет на красной машине"],
        "x_zh": ["一个男人在开车"], "x_ar": ["رجل يقود سيارة حمراء"], "x_hi": ["एक आदमी लाल कार चला रहा है"]}
LONG_ID = "l" * 300  # a clip id longer than any file name may be


@pytest.fixture(scope="module")
def unicode_build(synth_small, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unicode")
    videos = sorted((synth_small / "videos").glob("*.mp4"))
    entries = [(cid, "train", caps) for cid, caps in TRAIN.items()] + [("v_en", "val", ["a man drives a car"])] + [
        (cid, "test", caps) for cid, caps in TEST.items()]
    items = [{"id": cid, "path": str(videos[i]), "split": split, "captions": caps}
             for i, (cid, split, caps) in enumerate(entries)]
    items.append({"id": LONG_ID, "path": str(videos[0]), "split": "train", "captions": ["a man drives"]})
    items.append({"id": "gone", "path": str(root / f"{LONG_ID}.mp4"), "split": "train", "captions": ["a man"]})
    (root / "dataset.json").write_text(json.dumps({"videos": items}, ensure_ascii=False), "utf-8")
    out = root / "out"
    build(BuildConfig(dataset="json", root=str(root / "dataset.json"), out=str(out), frames=5, size=32, quality=90,
                      shard_size=8, workers=1, attributes=50, min_count=1, progress=False))
    return out


def test_the_build_keeps_every_script(unicode_build):
    summary = json.loads((unicode_build / "build.json").read_text("utf-8"))
    assert summary["empty_captions_dropped"] == 2  # the "!!!" and "…" of t_en, nothing else
    assert summary["splits"]["train"] == {"clips_in": 8, "clips_out": 7, "failures": 1}
    failure, = [json.loads(x) for x in (unicode_build / "failures.jsonl").read_text("utf-8").splitlines()]
    assert failure["clip_id"] == "gone" and failure["reason"] == "missing" and "File name too long" in failure["error"]
    refs = Build(unicode_build).references("train")
    assert refs[LONG_ID] == ["a man drives"] and refs["t_fr"] == TRAIN["t_fr"]  # captions stored as written
    # vocabulary: the words of every script, NFC, the NFD spelling counted as the same word
    vocab = json.loads((unicode_build / "vocab.json").read_text("utf-8"))
    assert {"café", "très", "мужчина", "машине", "男", "人", "车", "سيارة", "आदमी", "चला"} <= set(vocab["itos"])
    assert vocab["counts"]["café"] == 3 and vocab["counts"]["très"] == 2 and vocab["counts"]["男"] == 2
    assert all(unicodedata.is_normalized("NFC", w) for w in vocab["itos"]) and NFD_CAFE not in vocab["itos"]
    assert "一个男人在开车" not in vocab["itos"]  # characters, not the whole sentence


def test_attributes_are_vocabulary_words_in_any_script(unicode_build):
    """Real spaCy, the English model (the default): it tags the Devanagari nouns NOUN, and a word with a
    vowel sign (a combining mark, so not str.isalpha) is kept; the build says the model is English."""
    vocab = set(json.loads((unicode_build / "vocab.json").read_text("utf-8"))["itos"])
    attrs = pq.read_table(unicode_build / "attributes.parquet").to_pylist()
    words = {a["word"]: a for a in attrs}
    assert set(words) <= vocab and {a["pos"] for a in attrs} <= {"NOUN", "VERB", "ADJ"}
    assert words["आदमी"]["pos"] == "NOUN" and words["car"]["pos"] == "NOUN"
    assert not [w for w in words if not is_word(w)]
    labels = {r["clip_id"]: r["attribute_ids"] for r in pq.read_table(unicode_build / "clip_attributes.parquet").to_pylist()}
    assert words["आदमी"]["attribute_id"] in labels["t_hi"] and words["आदमी"]["attribute_id"] in labels["x_hi"]
    note = json.loads((unicode_build / "build.json").read_text("utf-8"))["attributes"]["note"]
    assert "tokens are not English, but spaCy model en_core_web_sm" in note and "--spacy-model" in note


def test_df_and_reward_use_the_same_tokens(unicode_build):
    b = Build(unicode_build)
    df, n_docs = b.cider_df()
    assert n_docs == 8  # the training clips of the annotations, one document each
    assert df[("café",)] == 1 and df[("男", "人")] == 1 and df[("мужчина",)] == 1 and df[("आदमी", "लाल")] == 1
    assert df[("رجل", "يقود", "سيارة")] == 1 and df[("man",)] == 3 and ("cafe",) not in df
    itos = json.loads((unicode_build / "vocab.json").read_text("utf-8"))["itos"]
    stoi = {w: i for i, w in enumerate(itos)}
    refs = b.references("train")
    reward = make_reward("cider-d", itos=itos, references=refs, df=df, n_docs=n_docs, max_len=35)

    def ids(caption: str) -> np.ndarray:
        x = encode(caption, stoi)
        return np.array([x + [0] * (12 - len(x))])

    nfc, nfd = ids("un homme boit un café très chaud"), ids(f"un homme boit un {NFD_CAFE} tre\u0300s chaud")
    assert np.array_equal(nfc, nfd) and 3 not in nfc  # same ids, none <unk>
    assert reward(["t_fr"], nfc)[0] == reward(["t_fr"], nfd)[0] > 1.0
    assert reward(["t_zh"], ids("男人在开车"))[0] > 0.5  # characters earn partial credit
    assert reward(["t_zh"], ids("мужчина едет на красной машине"))[0] == 0.0
    assert reward(["t_hi"], ids("आदमी कार चला रहा है"))[0] > 1.0


def evalkit_score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("evalkit"), "score", *args, "--no-meteor"], capture_output=True, text=True,
                          timeout=300)


def per_clip(path: Path) -> dict[str, dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["clip_id"]: {k: float(v) for k, v in r.items() if k not in ("clip_id", "prediction")}
                for r in csv.DictReader(f)}


def test_evalkit_score_in_five_scripts(unicode_build, tmp_path):
    preds = {f"x_{NFD_CAFE}": f"un homme boit un {NFD_CAFE} tre\u0300s chaud",  # key and caption typed NFD
             "x_ru": "мужчина едет на машине", "x_zh": "一个男人开车", "x_ar": "رجل يقود سيارة حمراء",
             "x_hi": "एक आदमी कार चला रहा है"}
    (tmp_path / "p.json").write_text(json.dumps(preds, ensure_ascii=False), "utf-8")
    r = evalkit_score("--pred", str(tmp_path / "p.json"), "--refs", str(unicode_build), "--per-clip",
                      str(tmp_path / "u.csv"))
    assert r.returncode == 0, r.stderr
    assert ("5 clips scored (of 5 in the references); tokenizer unicode (vidcap.text's Unicode rule, chosen because "
            f"not every caption is ASCII); 1 prediction ids matched by their NFC form ('x_{NFD_CAFE}')") in r.stdout
    metrics = json.loads((tmp_path / "p.metrics.json").read_text())
    assert metrics["clips"] == 5 and metrics["tokenizer"] == "unicode" and metrics["CIDEr"] > 0.5
    unicode_scores = per_clip(tmp_path / "u.csv")
    assert unicode_scores["x_café"]["Bleu_1"] == pytest.approx(1.0) and unicode_scores["x_ar"]["Bleu_4"] == pytest.approx(1.0)
    assert unicode_scores["x_zh"]["Bleu_1"] > 0.8  # 6 of the 7 reference characters
    # the tokens evalkit scored: vidcap.text's, the same as the vocabulary's and the reward's
    assert unicode_tokenize({"x": [TEST["x_zh"][0], preds["x_zh"]]})["x"] == ["一 个 男 人 在 开 车", "一 个 男 人 开 车"]
    assert normalize(preds[f"x_{NFD_CAFE}"]) == normalize(TEST["x_café"][0])
    # forced PTB: the sentence is one Chinese "word" and the NFD spelling another word than the NFC one
    r = evalkit_score("--pred", str(tmp_path / "p.json"), "--refs", str(unicode_build), "--per-clip",
                      str(tmp_path / "p.csv"), "--tokenizer", "ptb", "--out", str(tmp_path / "ptb.json"))
    assert r.returncode == 0, r.stderr
    assert "tokenizer ptb (pycocoevalcap's PTB)" in r.stdout
    ptb_scores = per_clip(tmp_path / "p.csv")
    assert ptb_scores["x_zh"]["Bleu_1"] < 1e-6 and ptb_scores["x_café"]["Bleu_1"] < 1.0
    assert ptb_scores["x_ar"]["Bleu_4"] == pytest.approx(1.0)  # Arabic has spaces: PTB keeps it whole
