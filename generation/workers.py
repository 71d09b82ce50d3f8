"""Worker processes of one torch thread each, for steps made of independent units.

On the small CPU machines Hearsay runs on (2 cores), torch's intra-op threads scale
poorly on the demo's small batches and collapse when anything else wants a core
(their OpenMP threads spin waiting for each other: while other work ran, an autoencoder
epoch took 2.4-4x and a classifier epoch 7-20x longer on 2 threads than on 1). One
single-threaded process per core degrades gracefully instead. A unit's numbers depend on the threads
it ran on (reduction order), so every worker runs one thread: a step gives the same
results with any number of workers, and to float rounding the results of one
process on any number of threads.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable, Iterable, Iterator

import torch

from .heap import KEEP_FREED_MEMORY

_state: dict[str, Any] = {}


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_jobs(jobs: int) -> None:
    from hearsay.errors import HearsayError

    if jobs < 1:
        raise HearsayError(f"parallel jobs must be at least 1, got {jobs}")


@contextmanager
def _workers_keep_freed_memory() -> Iterator[None]:
    """`heap.KEEP_FREED_MEMORY` in the environment while a pool spawns its workers (a value already set is kept).

    glibc reads it only as a process starts, so it must be in the parent's environment
    then; restored afterwards, so that programs this process starts later (the survey's
    server after the demo) keep glibc's defaults.
    """
    before = {name: os.environ.get(name) for name in KEEP_FREED_MEMORY}
    for name, value in KEEP_FREED_MEMORY.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start(init: Callable[..., Any] | None, args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops handing out units
    torch.set_num_threads(1)
    _state["value"] = init(*args) if init is not None else None


def state() -> Any:
    """What this worker's `init` returned (its models, once per process rather than once per unit)."""
    return _state["value"]


@contextmanager
def pool(jobs: int, init: Callable[..., Any] | None = None, args: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """`jobs` fresh processes (spawned: the parent's torch threads and database connections stay its own).

    If the parent stops early (an error, Ctrl-C) the workers are ended at once rather than
    left to finish their units: every caller saves a unit atomically and redoes unfinished
    ones when resumed.
    """
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_start, initargs=(init, args))
    try:
        with _workers_keep_freed_memory():  # workers are spawned as units are handed out, so for the pool's whole life
            yield executor
    except BaseException:
        for process in list((executor._processes or {}).values()):  # no public way to stop running work before Python 3.14
            process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def run(pool_: ProcessPoolExecutor, fn: Callable[..., Any], calls: Iterable[tuple]) -> Iterator[tuple[tuple, Any]]:
    """(arguments, result) of `fn(*arguments)` for every call, in the order they finish; the first failure is raised."""
    futures: dict[Future, tuple] = {pool_.submit(fn, *call): call for call in calls}
    try:
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield futures[future], future.result()
    finally:
        for future in futures:
            future.cancel()
