"""The built-in dataset's caption grammar: the one table of phrases that the generator
(``pipeline.synth``) writes captions from and the grounded evaluation (``evalkit.grounding``)
parses them back with. Keeping both sides on this table is what stops them drifting apart: a new
synonym added here is emitted by the generator and understood by the parser in the same commit.

It lives in the foundation (``vidcap``), below both the pipeline and evalkit.

A caption describes the clip's *main* object (the one that acts and the biggest), optionally a
second one in a tail phrase (still, or with its own action after the main one's), and optionally
the background (gradients only):

    [intro] DET [SIZE] [COLOUR] SHAPE ACTION-PHRASE [TAIL] [BACKGROUND]
"""

from __future__ import annotations

COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
ACTIONS = ("left", "right", "up", "down", "grow", "shrink", "spin", "bounce")
BACKGROUNDS = ("black", "gray", "white")

SHAPE_WORDS: dict[str, list[str]] = {
    "circle": ["circle", "ball", "disc", "dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle"],
    "star": ["star"],
}
SIZE_WORDS: dict[str, list[str]] = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
ACTION_WORDS: dict[str, list[tuple[str, str]]] = {  # (3rd person present, -ing form)
    "left": [("moves to the left", "moving to the left"), ("slides left", "sliding left"),
             ("goes to the left", "going to the left"), ("travels left", "travelling left"),
             ("moves left across the screen", "moving left across the screen")],
    "right": [("moves to the right", "moving to the right"), ("slides right", "sliding right"),
              ("goes to the right", "going to the right"), ("travels right", "travelling right"),
              ("moves right across the screen", "moving right across the screen")],
    "up": [("moves up", "moving up"), ("rises", "rising"), ("goes upward", "going upward"),
           ("floats up", "floating up"), ("climbs up the screen", "climbing up the screen")],
    "down": [("moves down", "moving down"), ("falls", "falling"), ("drops down", "dropping down"),
             ("sinks", "sinking"), ("goes down the screen", "going down the screen")],
    "grow": [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding"),
             ("becomes larger", "becoming larger"), ("grows in size", "growing in size")],
    "shrink": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"),
               ("becomes smaller", "becoming smaller"), ("shrinks in size", "shrinking in size")],
    "spin": [("spins", "spinning"), ("rotates", "rotating"), ("turns around", "turning around"),
             ("spins around", "spinning around")],
    "bounce": [("bounces", "bouncing"), ("jumps up and down", "jumping up and down"),
               ("bounces up and down", "bouncing up and down"), ("hops", "hopping")],
}
# Round things also roll sideways.
ROLL: dict[str, tuple[str, str]] = {"left": ("rolls to the left", "rolling to the left"),
                                    "right": ("rolls to the right", "rolling to the right")}
BACKGROUND_WORDS: dict[str, list[str]] = {"black": ["black", "dark"], "gray": ["gray", "grey"], "white": ["white"]}
DETERMINERS = ("a", "the", "a", "one")  # "a" twice: drawn twice as often

# Sentence templates; {np}: the main object's phrase with the drawn determiner, {np_a}: "a" + size
# allowed, {np_a_plain}: "a" without size. {tail} and {bg} are empty or one of the phrases below.
TEMPLATES = (
    "{np} {present}{tail}{bg}",
    "{np} is {ing}{tail}{bg}",
    "there is {np_a} {ing}{bg}{tail}",
    "a video of {np_a_plain} {ing}{bg}",
    "we see {np_a} that {present}{tail}",
    "{np} {present} in this clip{bg}",
)
TAILS = (" while {other} stays still", " next to {other}", " and {other} does not move")
# A second object that moves too (the real world): its own action phrase, after the main one's.
MOVING_TAILS = (" while {other} {present}", " as {other} is {ing}", " and {other} {present}")
BACKGROUND_PHRASE = " on a {bg} background"

# Actions whose clip changes the object's size: captions never name a size for them.
SIZE_CHANGING = ("grow", "shrink")


def action_phrases(action: str, shape: str) -> list[tuple[str, str]]:
    """Every (present, -ing) phrase the generator may use for `action` done by a `shape`."""
    options = list(ACTION_WORDS[action])
    if shape == "circle" and action in ROLL:
        options.append(ROLL[action])
    return options
