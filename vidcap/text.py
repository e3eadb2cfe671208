"""Caption normalisation shared by the vocabulary, attribute mining, the CIDEr-D document
frequencies and reward, and ``evalkit score`` for captions that are not plain ASCII.

The rule, for every script:

- NFC first (``é`` typed as ``e`` + U+0301 is the same word as ``é``), then lower case;
- a token is a run of letters, combining marks and digits (Unicode categories L*, M*, N*): marks
  stay with their letter, so Devanagari vowel signs and Arabic harakat are inside the word
  ("un café très chaud" -> ["un", "café", "très", "chaud"]);
- everything else -- punctuation (incl. ``。`` and ``«»``), symbols and emoji, spaces, the zero-width
  space -- separates tokens; invisible format characters (zero-width joiners, soft hyphen, bidi
  marks, BOM) are removed, so they neither split a word nor make one;
- Chinese and Japanese, written without spaces: each Han, Hiragana, Katakana or Bopomofo character
  (with its combining marks) is a token of its own -- the character-level convention of CIDEr on
  Chinese captions, and the only segmentation that needs no dictionary and no model. Thai, Lao,
  Khmer and Burmese runs are kept whole (a run between spaces is one token): segment them with
  spaces before building if words matter.

ASCII text takes a fast path with the original rule (``[^0-9a-z]+`` separates after lower-casing),
which the rule above equals on ASCII: English captions give the very tokens, vocabularies, df and
scores they gave before Unicode support ("A man's car." -> ["a", "man", "s", "car"]).

For English, ``evalkit score`` keeps pycocoevalcap's PTB tokenizer, as the paper's tables do
(``evalkit.coco``); this rule is the training one, and evalkit's for other languages.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^0-9a-z]+")
_SEP, _WORD, _ALONE, _DROP = 0, 1, 2, 3
_SEPARATING_FORMAT = {"\u200b"}  # ZERO WIDTH SPACE: the word break of Thai and Khmer text
# Scripts written without spaces whose characters are tokens by themselves (code point ranges).
_ALONE_RANGES = ((0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3031, 0x3035), (0x3038, 0x303C),
                 (0x3040, 0x30FF), (0x3100, 0x312F), (0x31A0, 0x31BF), (0x31F0, 0x31FF), (0x3400, 0x4DBF),
                 (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF66, 0xFF9D), (0x20000, 0x323AF))
_CLASS: dict[str, int] = {}


def _char_class(ch: str) -> int:
    """Separator, word character, a token by itself, or dropped (see the module's rule); cached."""
    cls = _CLASS.get(ch)
    if cls is None:
        cat = unicodedata.category(ch)
        cp = ord(ch)
        if cat[0] in "LN" and any(lo <= cp <= hi for lo, hi in _ALONE_RANGES):
            cls = _ALONE
        elif cat[0] in "LMN":
            cls = _WORD
        elif cat == "Cf" and ch not in _SEPARATING_FORMAT:
            cls = _DROP
        else:
            cls = _SEP
        _CLASS[ch] = cls
    return cls


def tokenize(caption: str) -> list[str]:
    """The caption's tokens under the module's rule (NFC, lower case, letters of every script)."""
    if caption.isascii():
        return _NON_WORD.sub(" ", caption.lower()).split()
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", caption).lower())
    tokens: list[str] = []
    word: list[str] = []
    alone = False  # the current token is one CJK character (it takes only combining marks after it)
    for ch in text:
        cls = _char_class(ch)
        if cls == _DROP:
            continue
        if cls == _WORD and word and (not alone or unicodedata.category(ch)[0] == "M"):
            word.append(ch)
            continue
        if word:
            tokens.append("".join(word))
            word = []
        if cls in (_WORD, _ALONE):
            word, alone = [ch], cls == _ALONE
    if word:
        tokens.append("".join(word))
    return tokens


def normalize(caption: str) -> str:
    """The caption as its tokens joined by single spaces: what spaCy tags for the attributes."""
    return " ".join(tokenize(caption))


def is_word(token: str) -> bool:
    """Letters only (with their combining marks), no digits: what may be an attribute. On ASCII this
    is ``str.isalpha``; unlike it, "चला" (a vowel sign is a mark, not a letter) is a word too."""
    if token.isascii():
        return token.isalpha()
    return bool(token) and unicodedata.category(token[0])[0] == "L" and all(
        unicodedata.category(c)[0] in "LM" for c in token)
