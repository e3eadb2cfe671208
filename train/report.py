"""What a run shows a person: metrics.jsonl + TensorBoard while training, curves.png at the end of
a stage, and an HTML gallery (frames, prediction, references) from `train eval`."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, append: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = open(self.path, "a" if append else "w")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            x = record.get("step", record.get("epoch", 0))
            prefix = "epoch" if record.get("event") == "epoch" else record.get("event", "misc")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, x)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


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


def gallery(path: Path, rows: list[dict], metrics: dict, title: str) -> None:
    """rows: {"clip_id", "jpegs": [bytes], "prediction", "references": [str]}."""
    head = " ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items() if isinstance(v, float))
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px} img{width:96px}</style>",
             f"<h2>{html.escape(title)}</h2><p>{html.escape(head)}</p><table>"]
    for r in rows:
        imgs = "".join(f"<img src='data:image/jpeg;base64,{base64.b64encode(j).decode()}'>" for j in r["jpegs"])
        refs = "".join(f"<li>{html.escape(c)}</li>" for c in r["references"][:5])
        parts.append(f"<tr><td>{imgs}</td><td><b>{html.escape(r['clip_id'])}</b><br>"
                     f"predicted: <b>{html.escape(r['prediction'])}</b><ul>{refs}</ul></td></tr>")
    parts.append("</table>")
    Path(path).write_text("\n".join(parts))
