"""Vectorised CIDEr-D: the reward of stages 2 and 3, equal to pycocoevalcap's CiderScorer
(clipped tf-idf, n = 1..4, Gaussian length penalty sigma = 6, x10) with fixed document
frequencies, to 1e-6 per caption -- but scoring a whole batch of token-id sequences in a few
NumPy calls instead of Python dict work per n-gram.

How: every word gets an integer id (the model's vocabulary first, so candidate ids need no
mapping; words seen only in references after it). An n-gram is one int64 key,
sum((id_j + 1) * B**(n-1-j)), which also encodes its order. References are turned into sorted
(clip, n-gram) tables once per dataset; a call sorts each candidate's keys, counts runs, and
joins them to its clip's references with searchsorted.

Sequences are scored up to and including ``<eos>`` (self-critical convention); references carry
a trailing ``<eos>`` too (evalkit.ngrams.reference_tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from vidcap.evalkit.ngrams import EOS, MAX_N, document_frequencies, ngram_counts, reference_tokens
from vidcap.tokens import MAX_LEN

_MAX_KEY = np.iinfo(np.int64).max


class CiderD:
    """CIDEr-D over token-id sequences against per-clip references prepared once.

    vocab: id -> word of the model's vocabulary (must contain ``<eos>``).
    references: clip id -> reference token lists (each ending in ``<eos>``), or raw caption
        strings (then reference_tokens() is applied).
    df / n_docs: fixed document frequencies (e.g. from cider_df.parquet); default: computed
        from `references`, one document per clip.
    """

    def __init__(self, vocab: Sequence[str], references: Mapping[str, Sequence], df: Mapping | None = None,
                 n_docs: int | None = None, sigma: float = 6.0, max_len: int = MAX_LEN):
        self.n = MAX_N
        self.sigma = sigma
        self.vocab = list(vocab)
        if EOS not in self.vocab:
            raise ValueError("vocabulary has no '<eos>' token")
        self.eos_id = self.vocab.index(EOS)
        refs: dict[str, list[list[str]]] = {}
        for clip, caps in references.items():
            toks = [reference_tokens(c, max_len) if isinstance(c, str) else list(c) for c in caps]
            if not toks:
                raise ValueError(f"clip {clip!r} has no reference captions")
            refs[clip] = toks
        if df is None:
            df, n_docs = document_frequencies(refs.values(), self.n)
        if not n_docs:
            raise ValueError("n_docs must be given with df (the number of documents df was counted over)")
        self.ref_len = math.log(float(n_docs))

        self.word_id = {w: i for i, w in enumerate(self.vocab)}
        for toks in refs.values():
            for t in toks:
                for w in t:
                    self.word_id.setdefault(w, len(self.word_id))
        for gram in df:
            for w in gram:
                self.word_id.setdefault(w, len(self.word_id))
        self.base = len(self.word_id) + 1
        if self.base**self.n >= _MAX_KEY:
            raise ValueError(f"{self.base - 1} distinct words: too many for int64 n-gram keys (limit 55,107)")
        self.powers = np.array([self.base**k for k in range(1, self.n)], dtype=np.int64)

        # Every reference's n-grams, flat: key, count, order, which reference, which clip.
        keys, counts, orders, ref_id, clip_id, local, lengths = [], [], [], [], [], [], []
        for ci, toks in enumerate(refs.values()):
            for ri, t in enumerate(toks):
                grams = ngram_counts(t, self.n)
                keys.extend(self._key(g) for g in grams)
                counts.extend(grams.values())
                orders.extend(len(g) - 1 for g in grams)
                ref_id.extend([len(lengths)] * len(grams))
                clip_id.extend([ci] * len(grams))
                local.extend([ri] * len(grams))
                lengths.append(max(0, len(t) - 1))
        keys_a = np.array(keys, dtype=np.int64)
        df_keys = np.array([self._key(g) for g in df], dtype=np.int64)

        # Table of known n-grams (references and df): sorted keys with their idf.
        self.keys = np.union1d(keys_a, df_keys)
        dfv = np.zeros(len(self.keys))
        dfv[np.searchsorted(self.keys, df_keys)] = np.array(list(df.values()), dtype=np.float64)
        self.idf = self.ref_len - np.log(np.maximum(1.0, dfv))

        # References: one row per (clip, n-gram, ref) sorted by (clip, n-gram), plus per-ref norms.
        self.clip_index = {clip: i for i, clip in enumerate(refs)}
        self.n_refs = np.array([len(r) for r in refs.values()], dtype=np.int64)
        self.ref_offset = np.concatenate([[0], np.cumsum(self.n_refs)[:-1]])
        gid = np.searchsorted(self.keys, keys_a)
        val = np.array(counts, dtype=np.float64) * self.idf[gid]
        order_a, ref_a = np.array(orders, dtype=np.int64), np.array(ref_id, dtype=np.int64)
        self.ref_norm = np.sqrt(np.bincount(ref_a * self.n + order_a, val * val, minlength=len(lengths) * self.n)
                                ).reshape(len(lengths), self.n)
        self.ref_length = np.array(lengths, dtype=np.float64)
        comp = np.array(clip_id, dtype=np.int64) * len(self.keys) + gid
        sort = np.argsort(comp, kind="stable")
        self.ref_comp, self.ref_val = comp[sort], val[sort]
        self.ref_local = np.array(local, dtype=np.int64)[sort]

    def _key(self, gram: Sequence[str]) -> int:
        key = 0
        for w in gram:
            key = key * self.base + self.word_id[w] + 1
        return key

    def score(self, clip_ids: Sequence[str], seqs: np.ndarray) -> np.ndarray:
        """CIDEr-D of each row of `seqs` (N, T) int token ids against the references of clip_ids[i].

        A row ends at its first ``<eos>`` (included); a row without one is scored whole.
        """
        seqs = np.asarray(seqs, dtype=np.int64)
        if seqs.ndim != 2 or len(seqs) != len(clip_ids):
            raise ValueError(f"seqs must be (N, T) with N = len(clip_ids); got {seqs.shape} and {len(clip_ids)}")
        try:
            clip = np.array([self.clip_index[c] for c in clip_ids], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"clip {e.args[0]!r} has no references") from None
        n_rows, width = seqs.shape
        if n_rows == 0:
            return np.zeros(0)
        is_eos = seqs == self.eos_id
        lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, width)
        tok = seqs + 1
        # All n-gram keys of every row; invalid windows get the max key so they sort last.
        cols = []
        pos = np.arange(width)
        for k in range(1, self.n + 1):
            if width < k:
                break
            key = tok[:, : width - k + 1].copy()
            for j in range(1, k):
                key = key * self.base + tok[:, j : width - k + 1 + j]
            valid = pos[None, : width - k + 1] + k <= lengths[:, None]
            cols.append(np.where(valid, key, _MAX_KEY))
        keys = np.sort(np.concatenate(cols, axis=1), axis=1)
        per_row = keys.shape[1]
        flat = keys.ravel()
        start = np.ones(flat.shape, dtype=bool)
        start[1:] = flat[1:] != flat[:-1]
        start[::per_row] = True
        starts = np.flatnonzero(start)
        counts = np.diff(np.append(starts, flat.size)).astype(np.float64)
        ukeys = flat[starts]
        row = starts // per_row
        keep = ukeys != _MAX_KEY
        ukeys, counts, row = ukeys[keep], counts[keep], row[keep]
        order = np.searchsorted(self.powers, ukeys, side="right")  # 0 for unigrams
        gid = np.minimum(np.searchsorted(self.keys, ukeys), len(self.keys) - 1)
        found = self.keys[gid] == ukeys
        vec = counts * np.where(found, self.idf[gid], self.ref_len)
        norm_c = np.sqrt(np.bincount(row * self.n + order, vec * vec, minlength=n_rows * self.n)).reshape(n_rows, self.n)

        # Join candidate n-grams with the same n-grams of their clip's references.
        f_idx = np.flatnonzero(found)
        comp = clip[row[f_idx]] * len(self.keys) + gid[f_idx]
        lo = np.searchsorted(self.ref_comp, comp, side="left")
        hi = np.searchsorted(self.ref_comp, comp, side="right")
        n_match = hi - lo
        total = int(n_match.sum())
        max_refs = int(self.n_refs.max())
        val = np.zeros((n_rows, max_refs, self.n))
        if total:
            ent = np.repeat(f_idx, n_match)
            ref_pos = np.repeat(lo - np.concatenate([[0], np.cumsum(n_match)[:-1]]), n_match) + np.arange(total)
            vr = self.ref_val[ref_pos]
            contrib = np.minimum(vec[ent], vr) * vr
            flat_idx = (row[ent] * max_refs + self.ref_local[ref_pos]) * self.n + order[ent]
            val = np.bincount(flat_idx, contrib, minlength=val.size).reshape(val.shape)

        ref_glob = self.ref_offset[clip][:, None] + np.arange(max_refs)[None, :]
        ref_ok = np.arange(max_refs)[None, :] < self.n_refs[clip][:, None]
        ref_glob = np.where(ref_ok, ref_glob, 0)
        norm_r = self.ref_norm[ref_glob]  # (N, R, n)
        denom = norm_c[:, None, :] * norm_r
        val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
        delta = np.maximum(0, lengths - 1)[:, None] - self.ref_length[ref_glob]
        val = val * np.exp(-(delta**2) / (2 * self.sigma**2))[:, :, None]
        val = np.where(ref_ok[:, :, None], val, 0.0)
        return val.sum(1).mean(1) / self.n_refs[clip] * 10.0
