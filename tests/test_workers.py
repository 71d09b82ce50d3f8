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
    with pytest.raises(ValueError, match="invalid literal"), workers.pool(2) as pool:
        list(workers.run(pool, int, [("7",), ("seven",)]))
