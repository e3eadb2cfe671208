"""What a run shows a person: metrics.jsonl + TensorBoard while training, curves.png at the end of
a stage, and an HTML gallery (frames, prediction, references) from `train eval`."""

from __future__ import annotations

import base64
import errno
import html
import json
import math
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vidcap.atomic import write_bytes_atomic
from vidcap.train.run_folder import METRICS, TB


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl and mirrors numbers to TensorBoard.

    On ``--resume`` from a checkpoint taken after `resume_at` = (epochs done, optimiser steps done)
    the records written after that checkpoint -- the steps of an epoch that was interrupted, or
    finished without its checkpoint -- are dropped first (the file is rewritten atomically), so
    the resumed run does not log a second copy of them. Non-finite numbers are refused: NaN is not JSON.
    """

    def __init__(self, run_dir: Path, resume_at: tuple[int, int] | None = None):
        self.path = Path(run_dir) / METRICS
        if resume_at is not None and self.path.exists():
            write_bytes_atomic(self.path, records_until(self.path.read_bytes(), *resume_at))
        self.file = open(self.path, "a" if resume_at is not None else "w")
        self.tb_dir = Path(run_dir) / TB
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            self.tb = None
            return
        threading.excepthook = _quiet_writer_thread
        with tensorboard_errors(self.tb_dir):
            self.tb = SummaryWriter(str(self.tb_dir))

    def write(self, record: dict) -> None:
        try:
            line = json.dumps(record, allow_nan=False)
        except ValueError:
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            raise ValueError(f"{self.path}: refusing to log non-finite {', '.join(bad)}: {record}") from None
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        if self.tb is not None:
            x = record.get("step", record.get("epoch", 0))
            prefix = "epoch" if record.get("event") == "epoch" else record.get("event", "misc")
            with tensorboard_errors(self.tb_dir):
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                        self.tb.add_scalar(f"{prefix}/{k}", v, x)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            tb, self.tb = self.tb, None
            with tensorboard_errors(self.tb_dir):
                tb.close()


def _quiet_writer_thread(args) -> None:
    """threading.excepthook: TensorBoard's writer thread's OSError is reported by the main thread
    (its next write or close re-raises it, and :func:`tensorboard_errors` makes it one line), so
    the thread's own traceback is not printed; anything else is, as before."""
    if isinstance(args.exc_value, OSError) and "AsyncWriter" in type(args.thread).__name__:
        return
    _default_excepthook(args)


_default_excepthook = threading.excepthook


@contextmanager
def tensorboard_errors(tb_dir: Path):
    """TensorBoard's failures (a full disk, a read-only folder) as an OSError naming its folder -- the
    one-line path every command prints -- not a traceback from its writer (round 3, P-46)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(tb_dir)) from None
    except Exception as e:  # tensorboard wraps some in its own types
        raise OSError(errno.EIO, f"TensorBoard cannot write there ({type(e).__name__}: {str(e)[:120]})",
                      str(tb_dir)) from None


def records_until(data: bytes, epochs_done: int, steps_done: int) -> bytes:
    """The lines of a metrics.jsonl that a checkpoint taken after `epochs_done` whole epochs and
    `steps_done` optimiser steps had seen: everything up to the record of the last step it
    includes and, when it was taken at an epoch end, that epoch's record. Step records after it,
    and records of later epochs, are dropped; so are torn or unparseable lines."""
    kept: list[bytes] = []
    cut = None
    for line in data.splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not (line.endswith(b"\n") and isinstance(rec, dict)):
            continue  # a torn last line
        kept.append(line)
        event, epoch, step = rec.get("event"), rec.get("epoch"), rec.get("step")
        if (event == "step" and step == steps_done and isinstance(epoch, int) and epoch >= epochs_done) or (
                event == "epoch" and epoch == epochs_done - 1):
            cut = len(kept)  # the checkpoint came after this record
    if cut is not None:
        return b"".join(kept[:cut])

    def before(line: bytes) -> bool:
        rec = json.loads(line)
        epoch, step = rec.get("epoch"), rec.get("step")
        if rec.get("event") == "step":
            return isinstance(step, int) and step <= steps_done
        return not isinstance(epoch, int) or epoch < epochs_done

    return b"".join(x for x in kept if before(x))


class NullLog:
    """What ranks other than 0 log: nothing (only rank 0 writes metrics.jsonl and TensorBoard)."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("train_loss", "train_rl_loss", "train_attr_loss", "train_reward"):
        if key in history[0]:
            a.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key[6:])
    a.set_xlabel("epoch")
    a.legend()
    a.set_title(f"{title}: training")
    val = [(h["epoch"] + 1, 100 * h["val_CIDEr"]) for h in history if "val_CIDEr" in h]
    if val:
        b.plot(*zip(*val, strict=True), marker="o", color="C3")
    b.set_xlabel("epoch")
    b.set_ylabel("val CIDEr")
    b.set_title(f"{title}: validation")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(confusion: dict, path: Path, title: str) -> None:
    """The action confusion matrix (rows: truth, columns: what the caption says) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(confusion["matrix"])
    rows, cols = confusion["labels"], [*confusion["labels"], confusion["none"]]
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ax.imshow(m / np.maximum(1, m.sum(1, keepdims=True)), cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > 0.6 * max(1, m[i].sum()) else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("action in the caption")
    ax.set_ylabel("action in the clip")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_scalars(tb_dir: Path, prefix: str, metrics: dict, step: int) -> None:
    """Numbers of an evaluation into TensorBoard (e.g. test_beam3/CIDEr at the checkpoint's step)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with tensorboard_errors(tb_dir), SummaryWriter(str(tb_dir)) as tb:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and v is not None:
                tb.add_scalar(f"{prefix}/{k}", v, step)


_MARK = {True: "<span style='color:#080'>&#10003;</span>", False: "<span style='color:#c00'>&#10007;</span>"}


def gallery(path: Path, rows: list[dict], metrics: dict, title: str) -> None:
    """rows: {"clip_id", "jpegs": [bytes], "prediction", "references": [str], "correct": {slot: bool|None}|None}."""
    head = " ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items() if isinstance(v, float))
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px} img{width:96px}"
             " .slots{font-size:90%;color:#444} img.evidence{width:auto}</style>",
             f"<h2>{html.escape(title)}</h2><p>{html.escape(head)}</p><table>"]
    for r in rows:
        imgs = "".join(f"<img src='data:image/jpeg;base64,{base64.b64encode(j).decode()}'>" for j in r["jpegs"])
        if r.get("evidence"):  # train eval --evidence: the frames with where each wrong word was read
            imgs += f"<br><img class='evidence' src='data:image/png;base64,{base64.b64encode(r['evidence']).decode()}'>"
        refs = "".join(f"<li>{html.escape(c)}</li>" for c in r["references"][:5])
        slots = ""
        if r.get("correct"):
            slots = "<div class='slots'>" + " ".join(
                f"{name} {_MARK[ok]}" for name, ok in r["correct"].items() if name != "parsed" and ok is not None) + "</div>"
        parts.append(f"<tr><td>{imgs}</td><td><b>{html.escape(r['clip_id'])}</b><br>"
                     f"predicted: <b>{html.escape(r['prediction'])}</b>{slots}<ul>{refs}</ul></td></tr>")
    parts.append("</table>")
    Path(path).write_text("\n".join(parts))
