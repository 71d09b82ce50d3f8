"""Worker processes of one thread each (generation.workers): what every parallel step relies on."""
import os

import pytest
import torch

from generation import workers


def test_workers_run_one_thread_keep_freed_memory_and_raise_a_units_error(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # a value someone set is kept
    with workers.pool(2) as pool:
        threads = [result for _, result in workers.run(pool, torch.get_num_threads, [(), ()])]
        env = dict(workers.run(pool, os.getenv, [("MALLOC_MMAP_THRESHOLD_",), ("MALLOC_TRIM_THRESHOLD_",)]))
    assert threads == [1, 1]
    assert env == {("MALLOC_MMAP_THRESHOLD_",): str(1 << 32), ("MALLOC_TRIM_THRESHOLD_",): "12345"}
    # the parent's own environment is as it was, for the programs it starts later
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
    with pytest.raises(ValueError, match="invalid literal"), workers.pool(2) as pool:
        list(workers.run(pool, int, [("7",), ("seven",)]))


def test_a_run_keeps_the_heap_only_where_the_process_did_not_start_keeping_it(monkeypatch):
    """retained_heap sets glibc's thresholds for one run and trims after, but leaves a worker's start-up settings alone."""
    from generation import heap

    class Libc:
        def __init__(self):
            self.calls = []

        def mallopt(self, *args):
            self.calls.append(("mallopt", *args))

        def malloc_trim(self, pad):
            self.calls.append(("trim", pad))

    libc = Libc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    monkeypatch.setattr(heap, "_STARTED_KEEPING", False)
    with heap.retained_heap(torch.device("cpu")):
        assert libc.calls == [("mallopt", -3, 32 << 20), ("mallopt", -1, 1 << 30)]
    assert libc.calls[2:] == [("mallopt", -1, 64 << 20), ("trim", 0)]
    libc.calls.clear()
    monkeypatch.setattr(heap, "_STARTED_KEEPING", True)
    with heap.retained_heap(torch.device("cpu")):
        pass
    assert libc.calls == []


def _started_keeping() -> bool:
    from generation import heap

    return heap._STARTED_KEEPING


def test_worker_processes_start_keeping_freed_memory():
    with workers.pool(1) as pool:
        [(_, started)] = list(workers.run(pool, _started_keeping, [()]))
    assert started is True
