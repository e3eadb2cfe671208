"""Every number vidcap reports about captions, by key and label, in one table: what ``evalkit
score`` prints, what ``train eval`` writes to metrics.json and prints under the table, the columns of
``train ablate``'s Table 3 and of the model card, and what training logs for val (``val_`` + key).

Adding a metric to ``train eval``: compute it in evalkit (a scorer in coco.py, a parse in
grounding.py), put its key in the metrics dict that train/evaluate.py writes, and give it a row here;
the printed line, the ablation table and the model card pick it up by kind.

Kinds: ``caption`` -- the paper's metrics (pycocoevalcap), 0..1 in files, shown x 100 (the ablation
table keeps the paper's 0..1); ``slot`` -- how often the caption names the clip's main object's
action, colour, shape or size (built-in dataset), a share shown as a percentage; ``attribute`` --
the attribute head's mean average precision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str  # in metrics.json and the scorers' dicts
    label: str  # in tables and printed lines
    kind: str  # caption | slot | attribute
    hub: str  # the metric's id in a model hub's card (the `type` of a model-index metric)

    @property
    def percent(self) -> bool:
        """A share of clips, shown as a percentage (the others are scores shown x 100)."""
        return self.kind == "slot"


TABLE: tuple[Metric, ...] = (
    Metric("Bleu_1", "BLEU-1", "caption", "bleu"), Metric("Bleu_2", "BLEU-2", "caption", "bleu"),
    Metric("Bleu_3", "BLEU-3", "caption", "bleu"), Metric("Bleu_4", "BLEU-4", "caption", "bleu"),
    Metric("METEOR", "METEOR", "caption", "meteor"), Metric("ROUGE_L", "ROUGE-L", "caption", "rouge"),
    Metric("CIDEr", "CIDEr", "caption", "cider"),
    Metric("action_acc", "action", "slot", "accuracy"), Metric("colour_acc", "colour", "slot", "accuracy"),
    Metric("shape_acc", "shape", "slot", "accuracy"),
    Metric("all_acc", "all", "slot", "accuracy"),  # action, colour and shape all right
    Metric("size_acc", "size", "slot", "accuracy"),
    Metric("attribute_mAP", "attribute mAP", "attribute", "map"),
)
BY_KEY = {m.key: m for m in TABLE}

CAPTION = tuple(m.key for m in TABLE if m.kind == "caption")  # evalkit.METRICS: what `evalkit score` gives
SLOTS = tuple(m.key for m in TABLE if m.kind == "slot")  # evalkit.grounding.slot_accuracy's accuracies
OBJECT_SLOTS = ("action_acc", "colour_acc", "shape_acc")  # scored on every clip (size only where it is named)
# The short lists each report shows, in its order:
ABLATION = ("Bleu_4", "ROUGE_L", "METEOR", "CIDEr", *OBJECT_SLOTS)  # `train ablate`'s Table 3 columns
MODEL_CARD = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr", *OBJECT_SLOTS, "size_acc", "attribute_mAP")  # the card's test row


def metric(key: str) -> Metric:
    return BY_KEY[key]


def label(key: str) -> str:
    return BY_KEY[key].label
