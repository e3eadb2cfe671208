"""Benchmark: CIDEr-D rewards per second, evalkit.cider.CiderD against pycocoevalcap's Cider on
the same batch (64 clips x 8 sampled captions, 20 references each), in one run.

References: real MSVD captions from ../shared when present (else a synthetic corpus).
Candidates: other references of the same clip with words dropped/shuffled (realistic lengths).
Both score every candidate against its clip's references; CiderD's references and document
frequencies are prepared once per dataset (its constructor, reported separately), as in training.

Usage: python -m bench.speed.cider [--clips 64] [--samples 8] [--out bench/speed/cider_report.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
from pycocoevalcap.cider.cider import Cider

from bench.common import SHARED, best_of, report_path, write_report
from vidcap.evalkit.cider import CiderD
from vidcap.evalkit.ngrams import reference_tokens
from vidcap.pipeline.vocab import build_vocab
from vidcap.tokens import encode


def corpus(n_clips: int) -> dict[str, list[str]]:
    path = SHARED / "data" / "captions" / "msvd" / "msvd_train.json"
    if path.exists():
        data = json.loads(path.read_text())
        return {f: caps[:20] for f, _, caps in data if len(caps) >= 21}
    rng = random.Random(0)
    words = [f"w{i}" for i in range(800)]
    return {f"c{i}": [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(20)] for i in range(max(n_clips, 600))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(report_path(__file__)))
    a = ap.parse_args()
    refs = corpus(a.clips)
    vocab = build_vocab((c for caps in refs.values() for c in caps), min_count=1)["itos"]
    stoi = {w: i for i, w in enumerate(vocab)}
    t0 = time.perf_counter()
    cd = CiderD(vocab, refs)
    setup = time.perf_counter() - t0
    rng = random.Random(1)
    clips = rng.sample(sorted(refs), a.clips)
    ids, cands = [], []
    for c in clips:
        for _ in range(a.samples):
            words = reference_tokens(rng.choice(refs[c]))[:-1]
            rng.shuffle(words) if rng.random() < 0.3 else None
            words = [w for w in words if rng.random() > 0.15] or words
            ids.append(c)
            cands.append(" ".join(words))
    seqs = np.zeros((len(cands), 36), dtype=np.int64)
    for i, c in enumerate(cands):
        x = encode(c, stoi)
        seqs[i, : len(x)] = x
    # pycocoevalcap: one Cider call over the same candidates (df from the batch's own references)
    gts = {i: [" ".join(reference_tokens(r)) for r in refs[c]] for i, c in enumerate(ids)}
    res = {i: [c + " <eos>"] for i, c in enumerate(cands)}
    t_ref = best_of(lambda: Cider().compute_score(gts, res), a.repeat)
    t_ours = best_of(lambda: cd.score(ids, seqs), a.repeat)
    n = len(cands)
    report = {"candidates": n, "references_per_clip": 20, "ciderd_setup_s": round(setup, 3),
              "pycocoevalcap_s": round(t_ref, 5), "ciderd_s": round(t_ours, 5),
              "pycocoevalcap_rewards_per_s": round(n / t_ref), "ciderd_rewards_per_s": round(n / t_ours),
              "speedup": round(t_ref / t_ours, 1)}
    write_report(a.out, report, echo=True)


if __name__ == "__main__":
    main()
