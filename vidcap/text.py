"""Caption normalisation shared by the vocabulary, attribute mining and the CIDEr-D reward.

Lower-case, every character that is not a letter or digit becomes a space, split on whitespace.
("A man's car." -> ["a", "man", "s", "car"]). Evaluation for the paper's tables uses the PTB
tokenizer instead (evalkit.coco); this one is for training, where speed and stability matter.
"""

import re

_NON_WORD = re.compile(r"[^0-9a-z]+")


def tokenize(caption: str) -> list[str]:
    return _NON_WORD.sub(" ", caption.lower()).split()


def normalize(caption: str) -> str:
    return " ".join(tokenize(caption))
