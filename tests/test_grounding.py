"""The grounded evaluation -- the parser follows the generator's grammar, the accuracies
and the attribute mAP are right on hand-made cases."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from vidcap.evalkit.grounding import (
    Slots,
    attribute_map,
    average_precision,
    error_sources,
    parse_caption,
    slot_accuracy,
    slot_positions,
)
from vidcap.grammar import (
    ACTIONS,
    BACKGROUND_PHRASE,
    BACKGROUND_WORDS,
    COLOUR_NAMES,
    DETERMINERS,
    SHAPE_WORDS,
    SIZE_CHANGING,
    SIZE_WORDS,
    TAILS,
    TEMPLATES,
    action_phrases,
)
from vidcap.pipeline.synth import make_specs


def _sentences(action: str, shape: str, colour: str, size: str, dets=("a",), tails=("", TAILS[0]), bgs=("",),
               every_phrase: bool = True):
    """Sentences the generator can make for this main object: every template with the determiners,
    tail phrases and backgrounds given, and every (or only the first) action phrase and shape word."""
    size_words = [None] if action in SIZE_CHANGING else [None, *SIZE_WORDS[size]]
    phrases = action_phrases(action, shape) if every_phrase else action_phrases(action, shape)[:1]
    for present, ing in phrases:
        words = SHAPE_WORDS[shape] if every_phrase else SHAPE_WORDS[shape][:1]
        for word, sw, with_colour, det in itertools.product(words, size_words, (True, False), dets):
            def np(d, allow_size=True, word=word, sw=sw, with_colour=with_colour):
                return " ".join(x for x in (d, sw if allow_size else None, colour if with_colour else None, word) if x)

            for template, tail, bg in itertools.product(TEMPLATES, tails, bgs):
                text = template.format(np=np(det), np_a=np("a"), np_a_plain=np("a", False), present=present, ing=ing,
                                       tail=tail.format(other="a small green box"), bg=bg)
                named_size = sw is not None and "{np_a_plain}" not in template
                yield re.sub(r"\ba (?=[aeiou])", "an ", " ".join(text.split())), named_size, with_colour


def _check(text: str, action: str, shape: str, colour: str, size: str, named_size: bool, named_colour: bool) -> None:
    got = parse_caption(text)
    assert got.action == action and got.shape == shape, text
    assert got.colour == (colour if named_colour else None), text
    assert got.size == (size if named_size else None), text


def test_every_generator_phrase_parses_back_to_its_slot():
    checked = 0
    for action, shape, size in itertools.product(ACTIONS, SHAPE_WORDS, SIZE_WORDS):
        if action == "spin" and shape == "circle":
            continue  # the generator never makes a spinning circle
        for text, named_size, named_colour in _sentences(action, shape, "red", size):
            _check(text, action, shape, "red", size, named_size, named_colour)
            checked += 1
    # every colour, determiner, tail and background phrase, on one action phrase set per action
    bgs = ("", *(BACKGROUND_PHRASE.format(bg=w) for ws in BACKGROUND_WORDS.values() for w in ws))
    for action, colour in itertools.product(ACTIONS, COLOUR_NAMES):
        for text, named_size, named_colour in _sentences(action, "square", colour, "large", sorted(set(DETERMINERS)),
                                                         ("", *TAILS), bgs, every_phrase=False):
            _check(text, action, "square", colour, "large", named_size, named_colour)
            checked += 1
    assert checked > 50_000


def test_every_caption_of_a_generated_dataset_parses_to_its_truth():
    for spec in make_specs(200, seed=11):
        main = spec.objects[0]
        for caption in spec.captions:
            got = parse_caption(caption)
            assert (got.action, got.shape) == (main.action, main.shape), caption
            assert got.colour in (None, main.colour) and got.size in (None, main.size), caption


def test_unparseable_text_names_nothing():
    assert parse_caption("") == Slots()
    assert parse_caption("there is something on a white background") == Slots()
    assert parse_caption("a red") == Slots()
    assert parse_caption("moves up") == Slots(action="up")


def test_slot_accuracy_and_confusion_on_hand_made_predictions():
    objects = {
        "a": [{"shape": "circle", "colour": "red", "size": "small", "action": "left"}],
        "b": [{"shape": "square", "colour": "blue", "size": "large", "action": "grow"},
              {"shape": "star", "colour": "green", "size": "small", "action": "still"}],
        "c": [{"shape": "star", "colour": "yellow", "size": "large", "action": "spin"}],
        "d": [{"shape": "triangle", "colour": "orange", "size": "small", "action": "up"}],
    }
    preds = {
        "a": "a small red ball rolls to the left",          # all right
        "b": "a big blue box grows next to a green star",   # right, size not scored (it changes)
        "c": "the large yellow triangle moves up",          # shape and action wrong, colour and size right
        "d": "there is something",                          # nothing named
        "x": "a clip without truth is ignored",
    }
    r = slot_accuracy(preds, objects)
    assert r["clips"] == 4
    assert r["action_acc"] == pytest.approx(2 / 4) and r["colour_acc"] == pytest.approx(3 / 4)
    assert r["shape_acc"] == pytest.approx(2 / 4)
    assert r["size_named"] == 2 and r["size_acc"] == pytest.approx(1.0)
    m = np.array(r["confusion"]["matrix"])
    assert m.shape == (8, 9) and m.sum() == 4
    assert m[ACTIONS.index("left"), ACTIONS.index("left")] == 1
    assert m[ACTIONS.index("spin"), ACTIONS.index("up")] == 1
    assert m[ACTIONS.index("up"), 8] == 1  # no action named


def test_error_sources_tell_a_binding_error_from_a_word_no_object_has():
    objects = {
        "bind": [{"shape": "square", "colour": "blue", "size": "large", "action": "grow"},
                 {"shape": "star", "colour": "green", "size": "small", "action": "still"}],
        "scene": [{"shape": "star", "colour": "yellow", "size": "large", "action": "spin"}],
        "none": [{"shape": "triangle", "colour": "orange", "size": "small", "action": "up"}],
    }
    preds = {"bind": "a big green box grows next to a green star",  # the other object's colour
             "scene": "the large purple star spins around",          # a colour nothing in the clip has
             "none": "a small orange triangle"}                      # no action named
    nuisances = {"bind": {"background": "footage:bikes.mp4"}, "scene": None, "none": {"noise": 2.0}}
    r = error_sources(preds, objects, nuisances)
    assert r["all"]["colour"] == {"wrong": 2, "other_object": 1, "elsewhere": 1, "unnamed": 0}
    assert r["all"]["action"] == {"wrong": 1, "other_object": 0, "elsewhere": 0, "unnamed": 1}
    assert r["all"]["shape"]["wrong"] == 0
    assert r["by_background"]["footage"]["colour"]["other_object"] == 1
    assert r["by_background"]["gradient"]["colour"]["elsewhere"] == 1
    assert slot_positions("the large purple star spins around") == {"shape": 3, "colour": 2, "action": 4}
    assert slot_positions("there is something") == {}


def test_average_precision_and_map_on_hand_made_scores():
    # positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.1, 0.3, 0.3]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    r = attribute_map(scores, labels, ["NOUN", "VERB", "ADJ"])
    # attribute 0: AP 1; attribute 1: positives at ranks 1 and 2 -> 1; attribute 2: no positive
    assert r["mAP"] == pytest.approx(1.0) and r["attributes_scored"] == 2 and r["attributes_without_positives"] == 1
    assert r["mAP_NOUN"] == pytest.approx(1.0) and r["mAP_ADJ"] is None
    labels[2, 1], labels[0, 1] = 0, 1  # attribute 1 positives now at ranks 1 and 3 -> (1 + 2/3) / 2
    assert attribute_map(scores, labels, ["NOUN", "VERB", "ADJ"])["mAP_VERB"] == pytest.approx((1 + 2 / 3) / 2)
