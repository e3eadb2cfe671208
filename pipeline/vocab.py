"""The caption vocabulary: special tokens, then training words by frequency.

Words are vidcap.text.tokenize tokens; a word needs ``min_count`` occurrences in the training
captions (default 2: drops one-off typos, which MSVD and MSR-VTT are full of). Captions are cut to
``max_len`` tokens including ``<eos>`` (paper: 35).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vidcap.text import tokenize
from vidcap.tokens import MAX_LEN, SPECIALS

DEFAULT_MIN_COUNT = 2


def build_vocab(captions: Iterable[str], min_count: int = DEFAULT_MIN_COUNT, max_len: int = MAX_LEN) -> dict:
    counts = Counter(w for c in captions for w in tokenize(c)[: max_len - 1])
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return {"itos": list(SPECIALS) + words, "min_count": min_count, "max_len": max_len,
            "counts": {w: counts[w] for w in words}}
