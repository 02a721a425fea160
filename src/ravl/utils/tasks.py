"""Execution backends: run one plain function over many tasks, in this process or on a Ray cluster.

The benchmark grids (:mod:`ravl.benchmarks`) run one setting per task; sharded embedding
extraction (:mod:`ravl.models.sharded`) one shard of images per task. A caller hands
:func:`run_tasks` a function and a list of tasks and consumes ``(task, result)`` pairs as they
complete::

    from ravl.utils.tasks import run_tasks

    for task, result in run_tasks(run_one_setting, tasks, backend="ray", num_workers=4, threads=1):
        append_rows(result)        # in completion order; sort afterwards for a canonical file

The contract (also in ``docs/dev/interfaces.md``):

- ``fn`` is a **top-level, picklable** function (importable as ``module.name`` on every worker;
  no lambda, no closure over open files or models), called as ``fn(task)`` once per task.
- Every ``task`` and every result is picklable (frozen dataclasses, tuples, dicts, strings,
  numbers). A task names its own spec, work folder and config; the backend adds nothing to it.
- ``fn`` must make its result independent of the process it runs in: it sets the thread counts
  it needs itself (torch, BLAS), seeds only local generators, and writes only inside its own work
  folder (atomically, so that an interrupted task can be rerun). Two tasks must not share a work
  folder; the caller deduplicates tasks.
- Results are yielded **in completion order**, not task order; the caller sorts when it needs a
  canonical order. An exception raised by ``fn`` propagates from the iterator (under Ray as the
  original exception type); tasks still queued are cancelled when the iterator is closed or fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ravl.exceptions import InvalidParameterError
from ravl.utils.optional import require
from ravl.utils.progress import progress as bar
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["BACKENDS", "run_tasks"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Names accepted by :func:`run_tasks`'s ``backend``.
BACKENDS = ("serial", "ray")


def _call(fn: Callable[[Any], Any], task: Any) -> Any:
    """What a Ray worker runs: ``fn(task)`` (a module-level function, so Ray can ship it)."""
    return fn(task)


def run_tasks(fn: Callable[[T], R], tasks: Iterable[T], *, backend: str = "serial", num_workers: int | None = None,
              ray_address: str | None = None, threads: int | None = None, gpus: float = 0,
              progress: bool = True, desc: str = "tasks") -> Iterator[tuple[T, R]]:
    """Run ``fn(task)`` for every task, serially or as Ray tasks; yield ``(task, result)`` as they finish.

    Args:
        fn: A top-level picklable function of one argument (see the module docstring).
        tasks: Picklable task objects; consumed once, before the first result.
        backend: ``"serial"`` (this process, task order) or ``"ray"`` (Ray remote tasks, completion
            order). Ray is imported only in the ``"ray"`` branch (``pip install 'ravl[ray]'``).
        num_workers: Ray only: at most this many tasks run at once. Default: the number of CPUs
            of this machine divided by ``threads`` for a local Ray; the cluster's CPUs divided
            by ``threads`` for an existing cluster.
        ray_address: Ray only: address of an existing cluster (``"auto"``, ``"HOST:PORT"`` or
            ``"ray://HOST:PORT"``). ``None`` starts a private local Ray instance with
            ``num_cpus = num_workers * threads`` and shuts it down when the iterator ends. When
            this process is already connected to Ray, that connection is used as is.
        threads: CPUs reserved per task (Ray's ``num_cpus``, which also sets the worker's
            ``OMP_NUM_THREADS``); default 1. ``fn`` still sets its own thread counts: this only
            tells the scheduler how many tasks fit on a machine.
        gpus: Ray only: GPUs reserved per task (Ray's ``num_gpus``; Ray sets the task's
            ``CUDA_VISIBLE_DEVICES``). ``0`` (default): CPU tasks.
        progress: Show a progress bar over tasks (``RAVL_PROGRESS=0`` silences it too).
        desc: Label of the progress bar.

    Yields:
        ``(task, fn(task))`` pairs, one per task.

    Raises:
        ValueError: An unknown ``backend`` or a bad ``num_workers`` / ``threads``, or
            ``ray_address`` given with the serial backend.
        MissingDependencyError: ``backend="ray"`` without Ray installed.
    """
    check_choice(backend, "backend", "run_tasks", BACKENDS)
    if num_workers is not None:
        check_int(num_workers, "num_workers", "run_tasks", low=1)
    if threads is not None:
        check_int(threads, "threads", "run_tasks", low=1)
    check_float(gpus, "gpus", "run_tasks", low=0)
    if not callable(fn):
        raise InvalidParameterError(f"The 'fn' parameter of run_tasks must be callable. Got {fn!r} instead.")
    if backend == "serial" and ray_address is not None:
        raise InvalidParameterError("The 'ray_address' parameter of run_tasks is only used with backend='ray'. "
                                    f"Got {ray_address!r} with backend='serial' instead.")
    tasks = list(tasks)
    if backend == "serial":
        return _run_serial(fn, tasks, progress=progress, desc=desc)
    return _run_ray(fn, tasks, num_workers=num_workers, ray_address=ray_address, threads=threads or 1,
                    gpus=float(gpus), progress=progress, desc=desc)


def _bar(total: int, progress: bool, desc: str):
    return bar(total=total, desc=desc, disable=None if progress else True, leave=True)


def _run_serial(fn, tasks: list, *, progress: bool, desc: str) -> Iterator[tuple[Any, Any]]:
    with _bar(len(tasks), progress, desc) as pbar:
        for task in tasks:
            result = fn(task)
            pbar.update(1)
            yield task, result


def _run_ray(fn, tasks: list, *, num_workers: int | None, ray_address: str | None, threads: int,
             gpus: float, progress: bool, desc: str) -> Iterator[tuple[Any, Any]]:
    ray = require("ray", extra="ray", purpose="the Ray backend")
    if not tasks:
        return
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if ray_address is None:
            workers = num_workers or max(1, (os.cpu_count() or 1) // threads)
            # address="local": always a private instance, never a cluster found through RAY_ADDRESS.
            ray.init(address="local", num_cpus=workers * threads, **kw)  # GPUs: Ray detects them
        else:
            ray.init(address=ray_address, **kw)
        started = True
    elif ray_address is not None:
        logger.info("Ray is already initialised in this process; ignoring ray_address=%r.", ray_address)
    pending: dict[Any, Any] = {}
    try:
        if num_workers is None:
            res = ray.cluster_resources()
            num_workers = max(1, int(res.get("CPU", 1)) // threads)
            if gpus:
                num_workers = min(num_workers, max(1, int(res.get("GPU", 0) // gpus)))
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_call)
        fn_ref = ray.put(fn)
        queue = iter(tasks)

        def submit() -> None:
            for task in queue:
                pending[remote.remote(fn_ref, task)] = task
                if len(pending) >= num_workers:
                    return

        submit()
        with _bar(len(tasks), progress, desc) as pbar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                pbar.update(1)
                submit()
                yield task, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
