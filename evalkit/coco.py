"""The paper's numbers: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap (MS COCO caption
evaluation code), with its PTB tokenizer and METEOR running on Java.

Two things differ from calling pycocoevalcap by hand, both without changing a score:
- the PTB tokenizer runs with the same jar and arguments but its temporary file lives in the
  system temp directory, so a read-only site-packages works;
- METEOR's Java process (~8 s to start) is started once per Scorer and closed explicitly.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from vidcap.errors import UserError

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise UserError(
            "java not found: pycocoevalcap's PTB tokenizer and METEOR need a Java runtime "
            "(Debian/Ubuntu: `apt-get install -y default-jre-headless`, or run `make setup`)"
        )
    return java


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTBTokenizer.tokenize, with its temporary file outside the package directory."""
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    text = "\n".join(c.replace("\n", " ") for caps in captions.values() for c in caps)
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode())
    try:
        out = subprocess.run(
            [require_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
             "-lowerCase", f.name], capture_output=True, check=True,
        ).stdout.decode()
    finally:
        os.unlink(f.name)
    result: dict[str, list[str]] = {k: [] for k in captions}
    for k, line in zip(keys, out.split("\n"), strict=False):
        result[k].append(" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS))
    return result


class Scorer:
    """Reusable scorer; holds one METEOR process. Use as a context manager or call close()."""

    def __init__(self, meteor: bool = True):
        require_java()
        self._meteor = None
        if meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    def close(self) -> None:
        m, self._meteor = self._meteor, None
        if m is not None:
            with m.lock:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()
            m.__class__ = _ClosedMeteor  # its __del__ would close the process a second time

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
              per_clip: bool = False) -> dict:
        """Corpus metrics; with per_clip=True also {"per_clip": {clip: {metric: value}}}."""
        check_inputs(predictions, references)
        ids = list(predictions)
        gts = ptb_tokenize({i: list(references[i]) for i in ids})
        res = ptb_tokenize({i: [predictions[i]] for i in ids})
        # An empty prediction tokenises to "", which METEOR's and BLEU's asserts reject: score it as
        # a word that cannot match (every metric then gives that clip 0, as for a wrong caption).
        res = {i: [c if c.strip() else "<empty>"] for i, (c,) in res.items()}
        out: dict = {}
        clip_scores: dict[str, dict[str, float]] = {i: {} for i in ids}
        scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]
        if self._meteor is not None:
            scorers.insert(1, (self._meteor, ["METEOR"]))
        for scorer, names in scorers:
            with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
                corpus, each = scorer.compute_score(gts, res)
            if len(names) == 1:
                corpus, each = [corpus], [each]
            for name, c, e in zip(names, corpus, each, strict=True):
                out[name] = float(c)
                for i, v in zip(ids, e, strict=True):
                    clip_scores[i][name] = float(v)
        if per_clip:
            out["per_clip"] = clip_scores
        return out


class _ClosedMeteor:
    def __del__(self) -> None:
        pass


def check_inputs(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    if not predictions:
        raise UserError("no predictions to score")
    missing = [k for k in predictions if k not in references]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UserError(f"{len(missing)} prediction ids have no references: {missing[:5]}{more}")
    for k in predictions:
        if not [c for c in references[k] if c.strip()]:
            raise UserError(f"clip {k!r} has no reference captions")


def score(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], meteor: bool = True,
          per_clip: bool = False) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) of {clip: caption} against {clip: [captions]}."""
    with Scorer(meteor=meteor) as s:
        return s.score(predictions, references, per_clip=per_clip)
