"""glibc's heap kept for reuse by torch's small-batch CPU loops (maximization steps, training batches).

glibc hands blocks above its mmap threshold (128 KiB at first, raised by itself up
to 32 MiB) back to the kernel when they are freed, and trims the heap's free top, so
each step's activations came back as fresh zeroed pages, faulted in one at a time:
14-17 % of a worker's CPU went to the kernel that way (an autoencoder step, a
decoder-prior maximization). Two ways to keep them, one per kind of process:

* worker processes that do nothing else get `KEEP_FREED_MEMORY` in their environment
  when they start (glibc reads it only then; it also keeps blocks above 32 MiB, which
  mallopt cannot: 0 faults for a reused 48 MiB block here, against 12,289 with mallopt);
* a process that does other things too keeps the heap for one run (`retained_heap`).
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

import torch

KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers
# read at import, i.e. as this process started: a parent that later sets them for its workers is not covered
_STARTED_KEEPING = all(os.environ.get(k) == v for k, v in KEEP_FREED_MEMORY.items())


def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        return ctypes.CDLL("libc.so.6") if os.name == "posix" and os.confstr("CS_GNU_LIBC_VERSION") else None
    except (OSError, ValueError):
        return None


@contextmanager
def retained_heap(device: torch.device) -> Iterator[None]:
    """On a CPU with glibc, keep freed tensors' memory for the next step of this run, then trim once.

    For the run the mmap threshold is 32 MiB (it stays there: glibc's own
    adjustment ends there) and the heap is not trimmed; afterwards it is trimmed
    once and its trim threshold set to 64 MiB (twice the mmap threshold, as glibc
    sets it). Nothing changes in a process started with `KEEP_FREED_MEMORY`.
    """
    libc = _glibc() if device.type == "cpu" and not _STARTED_KEEPING else None
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
            libc.malloc_trim(0)
