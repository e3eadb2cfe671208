"""The Dask client the pipeline runs on: a LocalCluster of worker processes by default, or an
existing cluster at ``tcp://HOST:PORT`` when one machine is not enough."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import UserError


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator:
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.worker", "distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except OSError as e:
            raise UserError(f"cannot reach Dask scheduler at {scheduler}: {e}") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or min(4, os.cpu_count() or 1)
    # One thread per worker process: shard tasks are CPU-bound and each runs one decoder subprocess.
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
