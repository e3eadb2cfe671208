"""torchrun and torch.distributed in one place: the process group, the device of this rank, and
the few collectives the trainer needs.

Started by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment), a
trainer joins a process group: **gloo** on the CPU, **NCCL** on CUDA with the device
``cuda:LOCAL_RANK`` -- one code path, the device a parameter. Misconfiguration fails loudly: CUDA
asked for but absent, more processes on a node than GPUs, a rendezvous that cannot be reached.
Started plainly, it is one process and every collective is the identity.

A rank that dies must not leave the others waiting: the group has a timeout (``dist_timeout``,
seconds), gloo reports a closed peer at once, and torchrun's own failure handling stops the other
ranks and names the failed one. Errors of rank 0's start-up work (a missing checkpoint, a bad
build) reach the other ranks as messages (:meth:`Dist.on_main`), so every rank ends with one line.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vidcap.errors import UserError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800.0  # longest a rank waits in a collective (rank 0 evaluating, building caches)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _device(kind: str, local_rank: int) -> torch.device:
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda, but torch.cuda.is_available() is False (no GPU or a CPU-only torch)")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise UserError(f"LOCAL_RANK={local_rank}, but this node has {n} GPU(s): start at most {n} processes per "
                            f"node (torchrun --nproc_per_node {n})")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False  # a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (identities in one process) ----
    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0 if self.enabled else flag

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and hand its result -- or its UserError, as the same one line -- to every rank."""
        if not self.enabled:
            return fn()
        result: Any = None
        if self.is_main:
            try:
                result = ("ok", fn())
            except UserError as e:
                result = ("error", type(e), str(e))
                self.broadcast(result)
                raise
        result = self.broadcast(result)
        if result[0] == "error":
            raise result[1](result[2])
        return result[1]

    def close(self, synced: bool = False) -> None:
        """Leave the group. `synced` (every rank got here without an error): meet the others at a barrier
        first, so no rank tears its connections down while a peer's last collective is still in flight --
        under gloo a rank that left early once made its peer abort at exit ("terminate called without an
        active exception", CI at 48a77d4, 1 run in many). After an error the others may never come: no
        barrier then."""
        if self.enabled and dist.is_initialized():
            if synced:
                try:
                    dist.barrier()
                except Exception:  # a peer that left anyway: nothing more to wait for
                    pass
            dist.destroy_process_group()
        self.enabled = False


def setup(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Dist:
    """This process's place: one process, or a rank of torchrun's group (joined here)."""
    if not launched_by_torchrun():
        return Dist(device=_device(device, 0))
    env = os.environ
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}: not integers") from None
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    dev = _device(device, local)
    try:
        dist.init_process_group(backend_for(dev), timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    except (ValueError, RuntimeError) as e:  # no MASTER_ADDR, an unreachable rendezvous...
        raise UserError(f"cannot join the torchrun process group as rank {rank} of {world} "
                        f"({' '.join(str(e).split())[:200]})") from None
    return Dist(rank, world, local, dev, True)


def is_lost_peer(e: BaseException) -> bool:
    """An error of a collective whose peer is gone (died, killed) or that timed out."""
    return isinstance(e, (dist.DistError, pickle.UnpicklingError)) or (
        isinstance(e, RuntimeError) and any(w in str(e) for w in ("Connection closed", "Connection reset", "Timed out",
                                                                   "gloo", "NCCL", "Socket")))
