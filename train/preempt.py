"""Preemption: SIGTERM (a scheduler, torchrun passing one on) and SIGINT (Ctrl-C) end training at
the next step boundary, after ``last.pt`` is saved, with exit status 143 / 130 (128 + signal).

The handler only raises a flag: a signal can arrive in the middle of a step, a checkpoint write
or a collective, and none of those may be cut. The training loop looks at the flag between steps
(under torchrun every rank agrees on it first, so all stop at the same step), saves, and raises
:class:`Preempted`, which the ``train`` command turns into one line and the exit status.
DataLoader workers leave the trainer's process group (:func:`detach_worker`): a Ctrl-C or torchrun's
``killpg`` reaches the whole group, and a worker killed by it would break the batch the main process
is waiting for -- torch even raises that error asynchronously, in the middle of a step.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(BaseException):
    """Training stopped by a signal after saving; ``exit_status`` is 128 + the signal number.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` on the way out may swallow it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopFlag:
    """Installs the handlers while in use (``with StopFlag() as stop: ... stop.signum``)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopFlag:
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def detach_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: a process group of its own, so signals sent to the trainer's group
    (Ctrl-C, torchrun's ``killpg``) reach the main process only. The main process then saves and shuts
    its workers down; the DataLoader's own SIGTERM at shutdown still ends a worker, and a worker whose
    main process is gone notices within seconds (torch's watchdog)."""
    os.setpgrp()
