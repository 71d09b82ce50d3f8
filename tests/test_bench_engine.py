"""The engine's benches: the roofline bookkeeping and the prepared GPU script's dry run on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_roofline_counts_one_step_and_bounds_each_op():
    from bench.maximize import roofline, step_ops
    from generation.maximize import PRESETS, optimize, parts
    from generation.nets import PaperClassifier

    model = PaperClassifier(3)
    settings = PRESETS["paper"]["classifier"]

    def run(n, steps):
        return optimize(model, torch.arange(n) % 3, *parts(settings), steps=steps, batch_size=n)

    ops = step_ops(run, 4)
    # the one-channel first block runs fused on a CPU (generation.fused), the later pools compiled; the other convs as torch ops
    assert ops["conv_pool_2x2"][0] == 1 and ops["conv_pool_2x2_input_grad"][0] == 1
    assert ops["conv_pool_2x2"][1] == 2 * 16 * 4 * 8 * 44 * 39, "4 samples x 8 maps x 44 x 39 windows, 16 multiply-adds each"
    assert ops["conv_pool_2x2"][2] > 4 * 90 * 80 * 4, "at least its input's bytes"
    assert ops["convolution"][0] == 2 and ops["convolution_backward"][0] == 2, "two more conv layers, forward and input gradient"
    assert ops["addmm"][1] > 0 and ops["max_pool_2x2"][0] == 2 and "max_pool2d_with_indices" not in ops
    total, rows = roofline(ops, peak=1e10, bandwidth=1e9)
    by_name = {r[0]: r for r in rows}
    calls, flops, nbytes = ops["convolution"]
    assert by_name["convolution"][5] == pytest.approx(max(flops / 1e10, nbytes / 1e9) * 1e3)
    assert total == pytest.approx(sum(r[5] for r in rows) / 1e3)


@pytest.mark.slow
def test_gpu_script_runs_every_step_on_cpu(tmp_path):
    env = {**os.environ, "GPU_BENCH_OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--quick", "--device", "cpu"], env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_summary.json").read_text())
    modes = {(r["method"], r["precision"], r["forms"]) for r in summary["maximization"]}
    assert modes == {(m, p, "engine") for m in ("classifier", "decoder") for p in ("fp32", "bf16")} | \
        {(m, "bf16", "classifier_torch_ops") for m in ("classifier", "decoder")}
    assert all(r["engine_speedup"] > 0 for r in summary["maximization"] if r["forms"] != "engine")
    blocks = {(r["layer"], r["precision"]): r for r in summary["compiled_blocks"]}
    assert set(blocks) == {(layer, p) for layer in ("conv_pool_relu", "pool_relu") for p in ("fp32", "bf16")}
    assert blocks[("conv_pool_relu", "fp32")]["compiled"], "the CPU's compiled first block ran"
    assert all(r["max_value_difference"] < 1e-5 and r["same_gradient_support"] for r in blocks.values())
    assert all(0 <= r.get("same_argmax_as_fp32", 1) <= 1 for r in summary["maximization"])
    assert summary["griffin_lim"]["real_time_factor"] > 0
    objective = summary["objective"]
    assert objective["words"] == 35 and objective["full_experiment_seconds"] > 0
    assert objective["measured"] is False and "extrapolated" in objective["note"]
    assert (tmp_path / "A.pt").is_file() and (tmp_path / "AE.pt").is_file(), "the script trains its own models"


@pytest.mark.slow
def test_gpu_sweep_prints_every_measurement_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sweep.py"), "--quick", "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    steps = [r["steps"] for r in rows if "steps" in r]
    assert {(r["method"], r["layout"]) for r in steps} == {(m, l) for m in ("classifier", "decoder")
                                                           for l in ("contiguous", "channels_last")}
    assert {(r["method"], r["form"]) for r in steps} == {("classifier", "engine"), ("classifier", "torch_ops"),
                                                         ("decoder", "engine"), ("decoder", "torch_ops"),
                                                         ("decoder", "prior_as_written")}
    assert all(r["samples_per_s"] > 0 and 0 <= r["same_argmax"] <= 1 for r in steps)
    assert {r["noise"]["method"] for r in rows if "noise" in r} == {"classifier", "decoder"}
    assert "convolution" in done.stdout, "the profile table names the kernels"
