"""The n-gram extraction of CIDEr-D, shared by evalkit's reward and the pipeline's document
frequencies (job 3): both must count exactly the same n-grams or the idf weights are wrong.

A reference is ``vidcap.tokens.reference_tokens``: tokenised, truncated to ``max_len - 1`` words and ends
with ``<eos>`` -- the same form the decoder produces, so the reward scores sequences up to and
including ``<eos>`` as self-critical training does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from vidcap.tokens import EOS_WORD as EOS
from vidcap.tokens import reference_tokens

__all__ = ["EOS", "MAX_N", "document_frequencies", "ngram_counts", "reference_tokens"]

MAX_N = 4


def ngram_counts(tokens: Sequence[str], n: int = MAX_N) -> Counter:
    """Counts of every 1..n-gram (as tuples), as pycocoevalcap's ``precook`` makes them."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def document_frequencies(clips: Iterable[Sequence[Sequence[str]]], n: int = MAX_N) -> tuple[Counter, int]:
    """df[ngram] = number of clips (documents) whose references contain it; and the clip count."""
    df: Counter = Counter()
    n_docs = 0
    for refs in clips:
        n_docs += 1
        seen = set()
        for ref in refs:
            seen.update(ngram_counts(ref, n))
        df.update(seen)
    return df, n_docs
