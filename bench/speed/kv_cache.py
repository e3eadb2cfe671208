"""Benchmark: how the transformer captioner decodes incrementally -- a self-attention key/value
cache (model/transformer.py) against recomputing the decoder over the whole prefix at every step --
for the three uses: greedy (validation, the RL baseline), beam 3 (`train eval`, `caption`) and 8
samples per clip with the REINFORCE backward pass (a stage-2 step).

cpu-small sizes, random weights with <eos> suppressed so every sequence runs the full 35 words (the
worst case), a batch of pooled Lite0 features (1280-d), the built-in dataset's vocabulary size.
Both variants run the same decoders of model/decoding.py -- the recompute variant is only another
step function, defined here -- and must give the same sequences; each timing is the best of
--repeats, the two variants interleaved.

Usage: python -m bench.speed.kv_cache [--clips 32] [--vocab 111] [--repeats 3] [--out bench/speed/kv_cache_report.json]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import report_path, write_report
from vidcap.model import create_model, decoding, make_config
from vidcap.tokens import EOS


class Recompute:
    """The transformer's step interface without a cache: each step re-runs the decoder over the prefix."""

    def __init__(self, model):
        self.model, self.cfg = model, model.cfg

    def encode(self, feats: torch.Tensor, max_len: int) -> tuple:
        mem_k, mem_v = self.model.memory(feats)
        return mem_k, mem_v, torch.zeros(feats.shape[0], 0, dtype=torch.long)

    def step(self, state: tuple, words: torch.Tensor, t: int) -> tuple:
        mem_k, mem_v, prefix = state
        prefix = torch.cat([prefix, words[:, None]], 1)
        return self.model.decode_words(prefix, mem_k, mem_v)[:, -1], (mem_k, mem_v, prefix)

    def reorder(self, state: tuple, index: torch.Tensor) -> tuple:
        mem_k, mem_v, prefix = state
        return mem_k.index_select(1, index), mem_v.index_select(1, index), prefix.index_select(0, index)


def run(variant, feats: torch.Tensor, use: str) -> torch.Tensor:
    if use == "greedy":
        return decoding.greedy(variant, feats)
    if use == "beam3":
        return decoding.beam(variant, feats, 3)
    torch.manual_seed(0)
    seqs, logps = decoding.sample(variant, feats, n=8)
    logps.sum().backward()
    return seqs


def main() -> None:
    p = argparse.ArgumentParser(description="KV cache vs prefix recompute for the transformer's decoders")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--vocab", type=int, default=111)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(report_path(__file__)))
    a = p.parse_args()
    torch.manual_seed(0)
    model = create_model(make_config("cpu-small", a.vocab, arch="transformer", pretrained=False)).eval()
    with torch.no_grad():
        model.out.bias[EOS] = -1e4  # never stop: every sequence is max_len words
    feats = torch.randn(a.clips, 5, model.feature_dim)
    variants = {"kv_cache": model, "recompute": Recompute(model)}
    report = {"clips": a.clips, "vocab": a.vocab, "max_len": model.cfg.max_len, "threads": torch.get_num_threads(),
              "d_model": model.cfg.d_model, "dec_layers": model.cfg.dec_layers, "seconds": {}, "speedup": {}}
    for use in ("greedy", "beam3", "sample8+backward"):
        best = {name: float("inf") for name in variants}
        outs = {}
        for _ in range(a.repeats):
            for name, variant in variants.items():
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                outs[name] = run(variant, feats, use)
                best[name] = min(best[name], time.perf_counter() - t0)
        assert torch.equal(outs["kv_cache"], outs["recompute"]), f"{use}: the two variants decode differently"
        report["seconds"][use] = {k: round(v, 4) for k, v in best.items()}
        report["speedup"][use] = round(best["recompute"] / best["kv_cache"], 2)
        print(f"{use:>17}: cache {best['kv_cache']:.3f} s, recompute {best['recompute']:.3f} s "
              f"-> cache {report['speedup'][use]:.2f}x", flush=True)
    write_report(a.out, report)


if __name__ == "__main__":
    main()
