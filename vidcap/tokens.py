"""Token ids and caption length, in one place: every vocabulary starts with the same four special
words, so their ids are fixed, and captions are cut to ``MAX_LEN`` tokens including ``<eos>``
(the paper's 35 decoder steps). The vocabulary file, the decoders, the losses, the CIDEr-D reward
and its document frequencies all read these names; none spells an id or the length itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from vidcap.text import tokenize

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # the first four words of every vocabulary
PAD, BOS, EOS, UNK = range(len(SPECIALS))
EOS_WORD = SPECIALS[EOS]
MAX_LEN = 35


def reference_tokens(caption: str, max_len: int = MAX_LEN) -> list[str]:
    """A caption's words, cut to ``max_len - 1`` and ending in ``<eos>``: the form the decoder
    produces, so the reward and its document frequencies count n-grams up to and incl. ``<eos>``."""
    return tokenize(caption)[: max_len - 1] + [EOS_WORD]


def encode(caption: str, stoi: dict[str, int], max_len: int = MAX_LEN) -> list[int]:
    """Token ids of a caption, truncated, ending in <eos> (no <bos>): the reference form CIDEr-D scores."""
    return [stoi.get(w, UNK) for w in reference_tokens(caption, max_len)]


def decode(ids: Iterable[int], itos: list[str]) -> str:
    """The sentence of a token-id sequence: words up to the first <eos>, <pad> and <bos> left out."""
    words = []
    for i in ids:
        if i == EOS:
            break
        if i not in (PAD, BOS):
            words.append(itos[i])
    return " ".join(words)
