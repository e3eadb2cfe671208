"""Stages as data: a recipe says where training starts, whether the CNN learns, which losses with
which weights, and how many captions are sampled; a preset's schedule says the learning rate,
batch size and epochs. ``train --stage 1/2/3`` are the paper's three recipes (``xe``, ``rfc+``,
``e2e``); the other five are the rest of the paper's Table 3 ablation (``train ablate``). A recipe is
named for how it trains, never for an architecture: ``xe`` (cross-entropy, CNN frozen) was called
``s2vt``, the name of the architecture it trains by default, and that old name is still accepted
(``RENAMED``) by ``--recipe``, ``train ablate --rows`` and the config.json of older run folders.

Reading a row: ``rfc+`` starts from ``xe``'s best checkpoint, keeps the CNN frozen, and trains
with REINFORCE (M = 8 samples per clip, the greedy caption's reward as baseline) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str  # the row of the paper's Table 3
    dir: str  # RUN/<dir>/
    init: str | None  # the recipe whose best.pt this starts from; None: a fresh model
    train_cnn: bool  # end to end (CNN unfrozen) or on frozen CNN features
    xe: float = 0.0  # loss = xe * L_XE + rl * L_RL + attr * L_attr
    rl: float = 0.0
    attr: float = 0.0
    samples: int = 8  # M sampled captions per clip for L_RL
    schedule: str = "xe"  # which of the preset's schedules (lr, batch, epochs): xe | rl | e2e | scratch
    paper_cider: float | None = None  # MSVD greedy CIDEr in the paper's Table 3, where we have it


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("xe", "S2VT (step 1: cross-entropy, CNN frozen)", "stage1", None, False, xe=1.0,
           schedule="xe", paper_cider=0.750),
    Recipe("rfc", "RFC (step 2, M = 1)", "rfc", "xe", False, rl=1.0, samples=1, schedule="rl"),
    Recipe("rfc+", "RFC+ (step 2: REINFORCE+, M = 8)", "stage2", "xe", False, rl=1.0, samples=8,
           schedule="rl", paper_cider=0.816),
    Recipe("e2e-xe", "E2E xentropy", "e2e-xe", "xe", True, xe=1.0, schedule="e2e"),
    Recipe("e2e-att-xe", "E2E att + xentropy", "e2e-att-xe", "xe", True, xe=0.95, attr=0.05, schedule="e2e"),
    Recipe("e2e-no-attr", "E2E w/o attributes", "e2e-no-attr", "rfc+", True, rl=1.0, schedule="e2e"),
    Recipe("e2e-scratch", "E2E w/o RL, attributes, step 1 (from scratch)", "e2e-scratch", None, True, xe=1.0,
           schedule="scratch"),
    Recipe("e2e", "E2E (step 3: 0.95 RL + 0.05 attributes, CNN trained)", "stage3", "rfc+", True, rl=0.95,
           attr=0.05, schedule="e2e", paper_cider=0.865),
)}
STAGES = {1: "xe", 2: "rfc+", 3: "e2e"}  # `train --stage N`
TABLE3_ORDER = ("xe", "rfc", "rfc+", "e2e-xe", "e2e-att-xe", "e2e-no-attr", "e2e-scratch", "e2e")
RENAMED = {"s2vt": "xe"}  # old name -> name: accepted wherever a recipe is named, never written


def recipe_name(name: str) -> str:
    """A recipe's name, old names (``RENAMED``) included: what a checkpoint or run folder written
    before a rename says still finds its recipe. Unknown names come back unchanged."""
    return RENAMED.get(name, name)


def get_recipe(name: str) -> Recipe:
    name = recipe_name(name)
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r}: unknown; choose from {', '.join(TABLE3_ORDER)}")
    return RECIPES[name]


def prefix_chain(name: str) -> list[str]:
    """The recipes to run, in order, to reach `name` (its init chain, then itself)."""
    chain = []
    r: str | None = name
    while r is not None:
        chain.append(r)
        r = RECIPES[r].init
    return chain[::-1]
