"""The caption vocabulary: special tokens, then training words by frequency.

Words are evalkit.text.tokenize tokens; a word needs ``min_count`` occurrences in the training
captions (default 2: drops one-off typos, which MSVD and MSR-VTT are full of). Captions are cut to
``max_len`` tokens including ``<eos>`` (paper: 35).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from evalkit.layout import SPECIALS
from evalkit.ngrams import reference_tokens
from evalkit.text import tokenize

PAD, BOS, EOS, UNK = range(4)
DEFAULT_MIN_COUNT = 2
MAX_LEN = 35


def build_vocab(captions: Iterable[str], min_count: int = DEFAULT_MIN_COUNT, max_len: int = MAX_LEN) -> dict:
    counts = Counter(w for c in captions for w in tokenize(c)[: max_len - 1])
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return {"itos": list(SPECIALS) + words, "min_count": min_count, "max_len": max_len,
            "counts": {w: counts[w] for w in words}}


def encode(caption: str, stoi: dict[str, int], max_len: int = MAX_LEN) -> list[int]:
    """Token ids of a caption, truncated, ending in <eos> (no <bos>): the reference form CIDEr-D scores."""
    return [stoi.get(w, UNK) for w in reference_tokens(caption, max_len)]


def decode(ids: Iterable[int], itos: list[str]) -> str:
    words = []
    for i in ids:
        if i == EOS:
            break
        if i not in (PAD, BOS):
            words.append(itos[i])
    return " ".join(words)
