"""The run folder, in one place: every subfolder and file name a training run writes or reads, as
shards/layout.py is for a build. The trainer, ``train eval``, ``train export`` (its model card reads
the run back), ``train ablate``, ``train probe``, ``train robustness``, the run lock, the metrics log
and the bench scripts all name files through this module; none spells a name itself in code
(``tests/test_run_folder_names.py`` reads every Python file for one; the recipes' folder names are
``train/recipes.py``'s, and the Makefile's ``make demo``, which cannot import, spells its own).

```
RUN/                          --run
  features/                   the feature cache (train/features.py): SPLIT-FINGERPRINT.pt
  stage1/ stage2/ stage3/     one folder per recipe (Recipe.dir: rfc/, e2e-xe/ ... for the other rows)
    .lock                     one trainer per folder (train/run_lock.py), holding its pid
    config.json               the resolved TrainConfig
    metrics.jsonl             one JSON record per event: start, features, step, epoch
    tb/                       TensorBoard events (training, then `train eval`'s scalars)
    best.pt                   the best val CIDEr so far (greedy)
    last.pt                   the latest state, for --resume
    curves.png                training loss and val CIDEr per epoch
    eval-SPLIT-beamB/         `train eval`: predictions.json, metrics.json, action_confusion.{json,png},
                              grounded_groups.json, gallery.html (also in a model folder evaluated with --model)
    eval-DATA-SPLIT-beamB/    the same of another build (`make demo`: eval-clean-test-beam3, the clean world)
    robustness/               `train robustness`: robustness.json, robustness.md, robustness.png
    row.json                  `train ablate`: the row's test scores
  seed0/ seed1/ ...           `train ablate`: one run folder per training seed
  ablation.md ablation.json   `train ablate`: the table
```

Renaming a file is one edit here, and old runs keep working only if the old name is still read:
no name has changed since runs were first written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FEATURES = "features"
LOCK = ".lock"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TB = "tb"
BEST = "best.pt"
LAST = "last.pt"
CURVES = "curves.png"
ROW = "row.json"
ABLATION_MD, ABLATION_JSON = "ablation.md", "ablation.json"
# inside eval-SPLIT-beamB/
PREDICTIONS, EVAL_METRICS, GALLERY = "predictions.json", "metrics.json", "gallery.html"
CONFUSION_JSON, CONFUSION_PNG = "action_confusion.json", "action_confusion.png"
ROBUSTNESS = "robustness"  # a folder; inside it:
ROBUSTNESS_JSON, ROBUSTNESS_MD, ROBUSTNESS_PNG = "robustness.json", "robustness.md", "robustness.png"
# where the wrong slots' values came from (evalkit.grounding.error_sources); the occlusion maps of
# the first wrong clips (train eval --evidence N: train/evidence.py)
ERROR_SOURCES, EVIDENCE_PNG = "error_sources.json", "evidence.png"
GROUPS = "grounded_groups.json"  # the grounded accuracies per group of clips (seen / held-out, per nuisance)


def eval_name(split: str, beam: int, data: str | None = None) -> str:
    """The folder ``train eval`` writes by default: ``eval-test-beam3``; with `data`, a label of another
    build than the run's, ``eval-clean-test-beam3`` (what ``make demo`` names the clean world's)."""
    return f"eval-{data + '-' if data else ''}{split}-beam{beam}"


@dataclass(frozen=True)
class StageFolder:
    """RUN/<recipe dir>/: what one recipe's training writes."""

    path: Path

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def tb(self) -> Path:
        return self.path / TB

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def curves(self) -> Path:
        return self.path / CURVES

    @property
    def row(self) -> Path:
        return self.path / ROW

    def eval_dir(self, split: str, beam: int, data: str | None = None) -> Path:
        return self.path / eval_name(split, beam, data)

    @property
    def robustness(self) -> Path:
        return self.path / ROBUSTNESS

    def eval_metrics(self, split: str = "test") -> list[Path]:
        """Every ``eval-SPLIT-beam*/metrics.json`` here, sorted (the model card's test rows)."""
        return sorted(self.path.glob(f"eval-{split}-beam*/{EVAL_METRICS}"))


@dataclass(frozen=True)
class RunFolder:
    """RUN/: the stages of one run, their shared feature cache, and what ``train ablate`` adds."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def stage(self, recipe: str) -> StageFolder:
        """The folder of a recipe (``xe`` -> RUN/stage1/; train/recipes.py names each recipe's)."""
        from vidcap.train.recipes import get_recipe

        return StageFolder(self.path / get_recipe(recipe).dir)

    @property
    def features(self) -> Path:
        return self.path / FEATURES

    def seed(self, seed: int) -> RunFolder:
        return RunFolder(self.path / f"seed{seed}")

    @property
    def ablation_md(self) -> Path:
        return self.path / ABLATION_MD

    @property
    def ablation_json(self) -> Path:
        return self.path / ABLATION_JSON


def stage_of(checkpoint: str | Path) -> StageFolder:
    """The stage folder a checkpoint lies in (RUN/stage3/ for RUN/stage3/best.pt)."""
    return StageFolder(Path(checkpoint).parent)
