"""evalkit: the paper's caption metrics (pycocoevalcap) and a fast CIDEr-D reward."""

from evalkit.cider import CiderD
from evalkit.coco import METRICS, Scorer, score

__all__ = ["CiderD", "METRICS", "Scorer", "score"]
