"""evalkit: the paper's caption metrics (pycocoevalcap) and a fast CIDEr-D reward."""

from vidcap.evalkit.cider import CiderD
from vidcap.evalkit.coco import METRICS, Scorer, score

__all__ = ["CiderD", "METRICS", "Scorer", "score"]
