"""The paper's numbers: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap (MS COCO caption
evaluation code), with its PTB tokenizer and METEOR running on Java.

Two things differ from calling pycocoevalcap by hand, both without changing a score:
- the PTB tokenizer runs with the same jar and arguments but its temporary file lives in the
  system temp directory, so a read-only site-packages works;
- METEOR's Java process (~8 s to start) is started once per Scorer and closed explicitly.

Other languages. What the PTB tokenizer (CoreNLP 3.4.1) does to them, measured: it keeps the letters
of Latin with accents, Cyrillic, Arabic and Devanagari ("un café très chaud" stays as it is), but it
does not NFC-normalise (``e`` + U+0301 and ``é`` stay different words), it does not segment Chinese
or Japanese ("一个男人在开车。" is the one word "一个男人在开车" plus "。", which pycocoevalcap's
ASCII punctuation list keeps as a word), and it drops emoji. It also reads ``\r`` and U+2028 as line
breaks, which would shift every later caption onto the wrong clip: line breaks of every kind are
spaces before it runs. So the tokenizer is a choice (``tokenizer=``, ``evalkit score --tokenizer``):
``ptb`` (pycocoevalcap's; the paper's numbers), ``unicode`` (vidcap.text, the rule of the vocabulary
and the reward: NFC, letters of every script, each CJK character a token), and the default ``auto``
-- ``ptb`` when every caption, predicted and reference, is ASCII, else ``unicode`` for all of them,
so English scores are pycocoevalcap's to the bit and one rule cuts a prediction and its references.
METEOR runs with its English settings (``-l en -norm``) on the tokens either way: on other languages
its stemmer and synonyms do not apply and it scores exact matches.

References that are empty or punctuation only (no vidcap.text token: what the build drops) are left
out; a clip with no other reference is an error. A Java process that fails (no memory, a bad
``JAVA_TOOL_OPTIONS``) is a UserError naming the tool and its own message, not a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
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
from vidcap.evalkit.metric_names import CAPTION
from vidcap.text import normalize, tokenize

METRICS = CAPTION  # Bleu_1..4, METEOR, ROUGE_L, CIDEr (evalkit/metric_names.py)
TOKENIZERS = ("auto", "ptb", "unicode")
# Every character str.splitlines breaks at: the PTB tokenizer reads some of them as line ends too.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


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
    text = "\n".join(_LINE_BREAKS.sub(" ", c) for caps in captions.values() for c in caps)
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8", "replace"))  # a lone surrogate (valid JSON, not text) becomes "?"
    try:
        run = subprocess.run(
            [require_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
             "-lowerCase", f.name], capture_output=True,
        )
    finally:
        os.unlink(f.name)
    if run.returncode != 0:
        raise UserError(f"the PTB tokenizer (java -cp {jar.name}) failed with exit status {run.returncode}: "
                        f"{_java_message(run.stderr, run.stdout)}")
    lines = run.stdout.decode().split("\n")
    if len(lines) < len(keys) or any(line.strip() for line in lines[len(keys):]):  # the captions would shift
        raise RuntimeError(f"the PTB tokenizer gave {len(lines)} lines for {len(keys)} captions")
    result: dict[str, list[str]] = {k: [] for k in captions}
    for k, line in zip(keys, lines, strict=False):
        result[k].append(" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS))
    return result


def unicode_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """vidcap.text's tokens of each caption, joined by spaces (the form pycocoevalcap's scorers take)."""
    return {k: [normalize(c) for c in caps] for k, caps in captions.items()}


def choose_tokenizer(name: str, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> str:
    """``ptb`` or ``unicode``: `name`, or for ``auto`` ptb when every caption is ASCII (see the module)."""
    if name not in TOKENIZERS:
        raise UserError(f"tokenizer {name!r}: choose from {', '.join(TOKENIZERS)}")
    if name != "auto":
        return name
    ascii_only = all(c.isascii() for c in predictions.values()) and all(
        c.isascii() for k in predictions for c in references.get(k, ()))
    return "ptb" if ascii_only else "unicode"


def _java_message(*outputs: bytes) -> str:
    """The first line of a Java process's complaint; the JVM's "Picked up JAVA_TOOL_OPTIONS" notice is
    not one, and "Error occurred during initialization of VM" needs the line after it."""
    lines = [x.strip() for out in outputs for x in out.decode("utf-8", "replace").splitlines()
             if x.strip() and not x.startswith("Picked up ")]  # the JVM's own errors go to stdout
    return "; ".join(lines[:2])[:200] if lines else "no message"


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
            if m.lock.locked():  # a compute_score that failed midway never released it
                m.lock.release()
            with m.lock:
                try:
                    m.meteor_p.stdin.close()
                except OSError:  # the process is gone and its pipe broken
                    pass
                m.meteor_p.kill()
                m.meteor_p.wait()
            m.__class__ = _ClosedMeteor  # its __del__ would close the process a second time

    def _meteor_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        """pycocoevalcap's Meteor.compute_score; its Java process failing is a UserError."""
        m = self._meteor
        try:
            return m.compute_score(gts, res)
        except (OSError, ValueError) as e:  # a broken pipe, or an empty line where a score should be
            if m.lock.locked():
                m.lock.release()
            m.meteor_p.kill()
            status = m.meteor_p.wait()
            raise UserError(f"METEOR (java -jar meteor-1.5.jar) failed (exit status {status}): "
                            f"{_java_message(m.meteor_p.stderr.read()) if m.meteor_p.stderr else type(e).__name__}"
                            ) from None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
              per_clip: bool = False, tokenizer: str = "auto") -> dict:
        """Corpus metrics; with per_clip=True also {"per_clip": {clip: {metric: value}}}. `tokenizer`:
        auto, ptb or unicode (see the module)."""
        check_inputs(predictions, references)
        ids = list(predictions)
        refs = {i: [c for c in references[i] if tokenize(c)] for i in ids}
        cut = ptb_tokenize if choose_tokenizer(tokenizer, predictions, refs) == "ptb" else unicode_tokenize
        gts = cut(refs)
        res = cut({i: [predictions[i]] for i in ids})
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
                corpus, each = self._meteor_score(gts, res) if scorer is self._meteor else scorer.compute_score(gts, res)
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
        if not [c for c in references[k] if tokenize(c)]:
            dropped = f" ({len(references[k])} empty or punctuation-only, which the build drops too)" if references[k] else ""
            raise UserError(f"clip {k!r} has no reference captions{dropped}")


def score(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], meteor: bool = True,
          per_clip: bool = False, tokenizer: str = "auto") -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) of {clip: caption} against {clip: [captions]}."""
    with Scorer(meteor=meteor) as s:
        return s.score(predictions, references, per_clip=per_clip, tokenizer=tokenizer)
