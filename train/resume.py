"""What a checkpoint holds for ``--resume``, and reading it back.

``extra`` of best.pt / last.pt: the recipe, the optimiser, best val CIDEr and the history; the
position -- in ``epoch``, ``batch`` batches done, ``step`` optimiser steps since the stage began --
with the partial sums of the epoch record (``epoch_progress``), so a resumed epoch logs the record
an uninterrupted one would; ``world_size`` and every rank's RNG state (train/rng_state.py), in rank
order. Checkpoints written before step checkpoints (epoch ends, one process, torch's RNG only) are
read as what they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from vidcap.errors import UserError


@dataclass
class Position:
    """Where training stands: in `epoch`, `batch` batches done; `step` optimiser steps since the start."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class ResumeState:
    position: Position
    best: float
    history: list[dict]
    optimizer: dict
    rng: dict | None  # this rank's RNG state; None: start a fresh stream
    epoch_progress: dict | None
    lr_schedule: str  # the one it was trained with: a resume under another would bend the curve


def training_extra(recipe: str, pos: Position, best: float, history: list[dict], optimizer: dict, rngs: list[dict],
                   init_from: str | None, epoch_progress: dict | None, lr_schedule: str = "constant") -> dict:
    return {"recipe": recipe, "epoch": pos.epoch - 1, "best": best, "history": history, "optimizer": optimizer,
            "rng": rngs, "init_from": init_from, "position": asdict(pos), "world_size": len(rngs),
            "epoch_progress": epoch_progress, "lr_schedule": lr_schedule}


def read_extra(extra: dict, path: Path, rank: int, world: int) -> ResumeState:
    """This rank's state from a checkpoint's extra; a UserError naming `path` if it holds none, or if
    it was saved mid-epoch by another number of processes (each rank's position is its own slice)."""
    try:  # a checkpoint that passed load_checkpoint but holds no usable training state
        optimizer, rng = extra["optimizer"], extra["rng"]
        best, history = float(extra["best"]), list(extra["history"])
        lr_schedule = str(extra.get("lr_schedule", "constant"))  # written before lr_schedule: constant
        if "position" in extra:
            pos, saved_world, progress = Position(**extra["position"]), int(extra["world_size"]), extra.get("epoch_progress")
        else:  # written before step checkpoints: at an epoch end, by one process
            pos = Position(int(extra["epoch"]) + 1, 0, sum(h.get("steps", 0) for h in history))
            saved_world, progress, rng = 1, None, [{"torch": rng, "cuda": extra.get("cuda_rng")}]
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: not a checkpoint to resume from ({type(e).__name__}: {str(e)[:100]})") from None
    if saved_world != world and pos.batch:
        raise UserError(f"{path}: saved in the middle of epoch {pos.epoch + 1} by {saved_world} process(es); resume "
                        "it with the same number (torchrun --nproc_per_node), or from an epoch end")
    # another world size (allowed at an epoch end): rank 0 keeps its stream, the others start fresh ones
    mine = rng[rank] if (rank == 0 or saved_world == world) else None
    return ResumeState(pos, best, history, optimizer, mine, progress, lr_schedule)
