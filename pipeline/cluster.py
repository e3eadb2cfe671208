"""The pipeline's one seam to its distributed engine (Dask), as video2dataset's distributor: the
client the jobs run on (:func:`dask_client`: a LocalCluster of worker processes by default, or an
existing cluster at ``tcp://HOST:PORT`` when one machine is not enough) and the one way a job runs
its tasks (:func:`run_tasks`: submit them all, take each result as it finishes). pipeline/build.py
calls nothing else of Dask, so running the pipeline on another engine (Ray, Spark, a process pool)
is these two functions rewritten. Waiting gives up with a clear error when the cluster has had no
worker for ``worker_timeout`` seconds (a cluster whose workers are gone would otherwise wait forever)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from vidcap.errors import UserError

# A host name or IPv4 address, or an IPv6 address in brackets (a lone "[" made Dask raise ValueError).
SCHEDULER_URL = re.compile(r"^(tcp|tls|ws|wss|ucx)://([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})/?$")


def check_scheduler_url(url: str) -> None:
    m = SCHEDULER_URL.match(url)
    if not m or not 1 <= int(m.group(3)) <= 65535:
        raise UserError(f"--scheduler {url}: expected a Dask scheduler address like tcp://HOST:PORT")


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator:
    from distributed import Client, LocalCluster

    # A task's exception reaches the driver and is reported there, once; Dask's own log lines about
    # it (and about workers shutting down after an error) would break the one-line error.
    for name in ("distributed", "distributed.worker", "distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except OSError as e:
            raise UserError(f"cannot reach Dask scheduler at {scheduler}: {e}") from None
        except ValueError as e:  # an address Dask cannot parse, whatever our check let through
            raise UserError(f"--scheduler {scheduler}: not an address Dask can use ({e})") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or min(4, os.cpu_count() or 1)
    # One thread per worker process: shard tasks are CPU-bound and each runs one decoder subprocess.
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def run_tasks(client, fn: Callable, calls: Sequence[tuple], worker_timeout: float, what: str,
              keys: Sequence[str] | None = None) -> Iterator[tuple[int, object]]:
    """``fn(*calls[i])`` for every i on the cluster: (i, result) as each finishes (completion order),
    its result then released on the cluster. `keys` name the tasks (Dask keys; a task whose key
    already ran is not run twice). `what` names the job in errors."""
    futures = {}
    for i, args in enumerate(calls):
        named = {"key": keys[i]} if keys is not None else {}
        futures[client.submit(fn, *args, pure=False, **named)] = i
    for fut in as_finished(client, list(futures), worker_timeout, what):
        result = fut.result()
        fut.release()
        yield futures[fut], result


def as_finished(client, futures: list, worker_timeout: float, what: str) -> Iterator:
    """Yield each future once it has finished (in completion order). Raises a UserError when the
    cluster has had no worker for `worker_timeout` seconds while tasks are pending, or when a task
    killed its worker too often (Dask's KilledWorker)."""
    from distributed import wait
    from distributed.scheduler import KilledWorker

    pending, idle_since = set(futures), None
    while pending:
        try:
            done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in done:
            try:
                fut.result()
            except KilledWorker as e:
                task = getattr(e, "task", "?")
                raise UserError(f"{what}: Dask workers died running task {task!r} (out of memory, or killed?)") from None
            yield fut
        if not pending:
            return
        if client.scheduler_info(n_workers=1).get("workers"):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > worker_timeout:
            raise UserError(f"{what}: the Dask cluster at {client.scheduler.address} has had no worker for "
                            f"{worker_timeout:g} s; {len(pending)} of {len(futures)} tasks unfinished "
                            "(start workers, or raise --worker-timeout)")
