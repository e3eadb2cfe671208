"""Grounded evaluation: does the caption say what happens in the clip?

CIDEr rewards n-gram overlap with the references, so a captioner that says "moves to the left" for
every clip of the built-in dataset still scores well (the template is right, the event is not).
Here each predicted caption is parsed back into the slots of the clip's main object -- action,
colour, shape, size -- with the same phrase table the generator wrote the references from
(``vidcap.grammar``), and compared with the generator's ground truth.

Also the attribute head's quality: average precision per attribute over the clips of a split,
averaged (mAP) over all attributes and per part of speech.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from vidcap.grammar import (
    ACTIONS,
    COLOUR_NAMES,
    SHAPE_WORDS,
    SIZE_CHANGING,
    SIZE_WORDS,
    action_phrases,
)
from vidcap.text import tokenize

SLOTS = ("action", "colour", "shape", "size")
NONE = "none"  # the parsed caption names no value for a slot

_SHAPE_OF = {w: shape for shape, words in SHAPE_WORDS.items() for w in words}
_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_COLOURS = set(COLOUR_NAMES)
# Every action phrase (both verb forms, any shape) as token tuples, indexed by first token and
# longest first, so that "bounces up and down" wins over "bounces" at the same position.
_ACTION_PHRASES: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _phrase, _action in sorted({(tuple(tokenize(p)), a) for a in ACTIONS for shape in SHAPE_WORDS
                                for pair in action_phrases(a, shape) for p in pair}, key=lambda x: (-len(x[0]), x)):
    _ACTION_PHRASES.setdefault(_phrase[0], []).append((_phrase, _action))


@dataclass(frozen=True)
class Slots:
    action: str | None = None
    colour: str | None = None
    shape: str | None = None
    size: str | None = None


def parse_caption(caption: str) -> Slots:
    """The main object's slots as a caption of the built-in grammar names them (None: not named).

    The main object is the first shape word; its size and colour are the modifiers between it and
    its determiner. The action is the earliest action phrase after it (the second object's tail
    phrases -- "stays still", "does not move" -- are not action phrases).
    """
    toks = tokenize(caption)
    head = next((i for i, t in enumerate(toks) if t in _SHAPE_OF), None)
    if head is None:
        return Slots(action=_first_action(toks, 0))
    colour = size = None
    for t in toks[max(0, head - 2) : head]:
        colour = t if t in _COLOURS else colour
        size = _SIZE_OF.get(t, size)
    return Slots(_first_action(toks, head + 1), colour, _SHAPE_OF[toks[head]], size)


def _first_action(toks: list[str], start: int) -> str | None:
    for i in range(start, len(toks)):
        for phrase, action in _ACTION_PHRASES.get(toks[i], ()):
            if tuple(toks[i : i + len(phrase)]) == phrase:
                return action
    return None


def slot_accuracy(predictions: Mapping[str, str], objects: Mapping[str, Sequence[Mapping]]) -> dict:
    """Per-slot accuracy of the main object over the clips that have ground truth.

    objects: clip id -> the clip's objects (objects[0] acts), each with shape, colour, size, action.
    A slot the caption does not name counts as wrong for action, colour and shape; size is scored
    only where the caption names one and the clip's size does not change (the references never name
    it then). Returns {"action_acc", "colour_acc", "shape_acc", "size_acc", "size_named", "clips",
    "confusion": {"labels", "none", "matrix"}} (accuracies in 0..1; None when nothing was scored).
    """
    ids = [c for c in predictions if objects.get(c)]
    correct = {s: 0 for s in SLOTS}
    all_three = 0
    size_scored = 0
    confusion = np.zeros((len(ACTIONS), len(ACTIONS) + 1), dtype=np.int64)
    for c in ids:
        truth = objects[c][0]
        got = parse_caption(predictions[c])
        right = [getattr(got, slot) == truth[slot] for slot in ("action", "colour", "shape")]
        for slot, ok in zip(("action", "colour", "shape"), right, strict=True):
            correct[slot] += int(ok)
        all_three += int(all(right))
        if got.size is not None and truth["action"] not in SIZE_CHANGING:
            size_scored += 1
            correct["size"] += int(got.size == truth["size"])
        col = ACTIONS.index(got.action) if got.action is not None else len(ACTIONS)
        confusion[ACTIONS.index(truth["action"]), col] += 1
    n = len(ids)
    return {
        "clips": n,
        "action_acc": correct["action"] / n if n else None,
        "colour_acc": correct["colour"] / n if n else None,
        "shape_acc": correct["shape"] / n if n else None,
        "all_acc": all_three / n if n else None,  # action, colour and shape all right
        "size_acc": correct["size"] / size_scored if size_scored else None,
        "size_named": size_scored,
        "confusion": {"labels": list(ACTIONS), "none": NONE, "matrix": confusion.tolist()},
    }


def triple(obj: Mapping) -> tuple[str, str, str]:
    """The (colour, shape, action) combination of an object: the unit of the compositional split."""
    return obj["colour"], obj["shape"], obj["action"]


def clip_groups(objects: Mapping[str, Sequence[Mapping]], nuisances: Mapping[str, Mapping | None],
                heldout: Sequence[Sequence[str]] | None) -> dict[str, list[str]]:
    """Named groups of clips to report accuracies on: ``seen`` / ``unseen`` (the main object's
    combination is in the held-out list or not), ``clean`` (no nuisance recorded) and, for each
    recorded nuisance or background kind, the clips that have it (``noise``, ``background:photo``)."""
    groups: dict[str, list[str]] = {}
    held = {tuple(t) for t in heldout or ()}
    for cid, objs in objects.items():
        if held:
            groups.setdefault("unseen" if triple(objs[0]) in held else "seen", []).append(cid)
        rec = nuisances.get(cid)
        if rec is None:
            continue
        names = [k for k in rec if k != "background"]
        bg = str(rec.get("background", "gradient")).split(":")[0]
        if bg != "gradient":
            names.append(f"background:{bg}")
        for name in names or ["clean"]:
            groups.setdefault(name, []).append(cid)
    return dict(sorted(groups.items()))


def grouped_accuracy(predictions: Mapping[str, str], objects: Mapping[str, Sequence[Mapping]],
                     groups: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """Per group: clips, action / colour / shape / all-three accuracy (0..1)."""
    out = {}
    for name, ids in groups.items():
        acc = slot_accuracy({c: predictions[c] for c in ids if c in predictions}, objects)
        out[name] = {k: acc[k] for k in ("clips", "action_acc", "colour_acc", "shape_acc", "all_acc")}
    return out


def per_clip_correct(predictions: Mapping[str, str], objects: Mapping[str, Sequence[Mapping]]) -> dict[str, dict]:
    """clip id -> {slot: True/False/None} (None: not scored), for galleries and paired statistics."""
    out = {}
    for c, caption in predictions.items():
        if not objects.get(c):
            continue
        truth, got = objects[c][0], parse_caption(caption)
        row = {s: getattr(got, s) == truth[s] for s in ("action", "colour", "shape")}
        row["size"] = (got.size == truth["size"]) if got.size is not None and truth["action"] not in SIZE_CHANGING \
            else None
        row["parsed"] = asdict(got)
        out[c] = row
    return out


def slot_positions(caption: str) -> dict[str, int]:
    """Token index (in ``tokenize(caption)``) of the word that names each of the main object's slots
    in a caption of the built-in grammar: its colour, its shape (the first shape word), the first word
    of its action phrase. A slot the caption does not name is left out."""
    toks = tokenize(caption)
    head = next((i for i, t in enumerate(toks) if t in _SHAPE_OF), None)
    out = {}
    if head is not None:
        out["shape"] = head
        colour = next((i for i in range(head - 1, max(-1, head - 3), -1) if toks[i] in _COLOURS), None)
        if colour is not None:
            out["colour"] = colour
    for i in range(0 if head is None else head + 1, len(toks)):
        if any(tuple(toks[i : i + len(p)]) == p for p, _ in _ACTION_PHRASES.get(toks[i], ())):
            out["action"] = i
            break
    return out


ERROR_SOURCES = ("other_object", "elsewhere", "unnamed")


def error_sources(predictions: Mapping[str, str], objects: Mapping[str, Sequence[Mapping]],
                  nuisances: Mapping[str, Mapping | None] | None = None) -> dict:
    """Where each wrong slot's value came from, per slot: ``other_object`` -- another object in the clip
    has it (a binding error: the right word for the wrong object), ``elsewhere`` -- no object in the clip
    has it (the scene behind, or the model's prior), ``unnamed`` -- the caption names no value. Counted
    over all clips and per background kind (``gradient``, ``photo``, ``footage``...), with the wrong-slot
    total and the clips with a second object, so a share can be read against what was possible."""
    def empty() -> dict:
        return {slot: {"wrong": 0, **dict.fromkeys(ERROR_SOURCES, 0)} for slot in ("action", "colour", "shape")}

    out: dict = {"all": empty(), "by_background": {}}
    for cid, caption in predictions.items():
        objs = objects.get(cid)
        if not objs:
            continue
        rec = (nuisances or {}).get(cid) or {}
        bg = str(rec.get("background", "gradient")).split(":")[0]
        got = parse_caption(caption)
        for table in (out["all"], out["by_background"].setdefault(bg, empty())):
            for slot in table:
                value = getattr(got, slot)
                if value == objs[0][slot]:
                    continue
                row = table[slot]
                row["wrong"] += 1
                if value is None:
                    row["unnamed"] += 1
                elif any(o[slot] == value for o in objs[1:]):
                    row["other_object"] += 1
                else:
                    row["elsewhere"] += 1
    return out


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP (the mean of precision at each positive's rank); NaN without positives."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = labels[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def attribute_map(scores: np.ndarray, labels: np.ndarray, pos: Sequence[str]) -> dict:
    """mAP of attribute scores (clips x attributes) against 0/1 labels, overall and per part of
    speech; attributes without a positive clip in the split are left out (and counted)."""
    aps = np.array([average_precision(scores[:, j], labels[:, j]) for j in range(labels.shape[1])])
    ok = ~np.isnan(aps)
    out = {"mAP": float(aps[ok].mean()) if ok.any() else None, "attributes_scored": int(ok.sum()),
           "attributes_without_positives": int((~ok).sum())}
    for p in sorted(set(pos)):
        sel = ok & (np.asarray(pos) == p)
        out[f"mAP_{p}"] = float(aps[sel].mean()) if sel.any() else None
    return out
