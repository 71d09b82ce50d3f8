"""Where the GPU time of maximization goes, and which layout, precision, batch and compilation make it fastest.

Prints, per method (classifier-only, decoder prior; paper preset, 20 RMS steps):
1. the CUDA kernels that take the time in one batch (torch.profiler, fp32), then the operators by input shape;
2. samples/s of the gradient steps alone (noise and host copies excluded) for
   weights channels-last or contiguous x fp32 / TF32 / bf16 autocast, in the
   engine's forms and in others: the classifier's 2x2 blocks as torch ops
   besides the compiled kernels the engine runs (`generation.fused_gpu` on
   CUDA), and for the decoder the prior as written besides its upsampling
   convolutions run as transposed ones (`generation.upsampling`); with the
   share of samples whose final arg-max agrees with contiguous fp32, and the
   fastest of them again with cuDNN's algorithm search (`cudnn.benchmark`);
3. larger batches and `torch.compile` for the fastest of those (compile time printed);
4. the cost of drawing the per-sample seeded noise starts on the host, one thread vs several.

    python3 bench/gpu_sweep.py [--methods classifier,decoder] [--no-compile] [--quick --device cpu]   # the quick CPU run only checks that every step runs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from generation.fused import fused_layers  # noqa: E402
from generation.maximize import PRESETS, ascend, frozen, noise, parts, pool_before_relu, precision  # noqa: E402
from generation.nets import Autoencoder, PaperClassifier  # noqa: E402
from generation.upsampling import transposed_upsampling  # noqa: E402

N_CLASSES = 35


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def emit(key: str, row: dict) -> None:
    print(json.dumps({key: row}), flush=True)


class Case:
    """One method's models and parts, armed for timing the 20 gradient steps of one batch."""

    def __init__(self, method: str, a: torch.nn.Module, ae: torch.nn.Module, device: torch.device):
        self.method, self.a, self.ae, self.device = method, a, ae, device
        self.settings = PRESETS["paper"][method]

    def armed(self, batch: int):
        """(parameterization, objective, step rule, targets, starts) for one batch; the same starts every call."""
        param, objective, step = parts(self.settings, self.method, self.ae if self.method == "decoder" else None)
        targets = (torch.arange(batch) % N_CLASSES).to(self.device)
        gen = torch.Generator().manual_seed(0)
        shape = (self.ae.latent,) if self.method == "decoder" else (90, 80)
        return param, objective, step, targets, (0.1 * torch.randn(batch, *shape, generator=gen)).to(self.device)

    def net(self, objective, form: str) -> torch.nn.Module:
        """The classifier as the engine runs it (its 2x2 blocks as compiled kernels); for form "torch_ops" as torch ops."""
        net = pool_before_relu(self.a, objective.layers)
        return net if form == "torch_ops" else fused_layers(net, objective.layers)

    def run(self, batch: int, layout: str, mode: str, compiled: bool = False, reps: int = 2, form: str = "engine",
            benchmark: bool = False) -> tuple[float, torch.Tensor, float]:
        """(samples/s, final arg-max per sample, seconds of the first call, which includes any compilation)."""
        param, objective, step, targets, x0 = self.armed(batch)
        searched = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark
        with frozen(self.a, *param.modules(), channels_last=layout == "channels_last"), precision(mode, self.device):
            net = self.net(objective, form)
            if form != "prior_as_written":
                param = param.with_networks(transposed_upsampling)
            decode = None
            if compiled:
                net = torch.compile(net, dynamic=False)
                if self.method == "decoder":
                    decode = self.ae.decode
                    self.ae.decode = torch.compile(decode, dynamic=False)
            try:
                sync(self.device)
                t0 = time.perf_counter()
                param.start(x0, targets)
                ascend(self.a, param, objective, targets, step, self.settings.steps, net)
                sync(self.device)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                for _ in range(reps):
                    param.start(x0, targets)
                    _, _, _, logits = ascend(self.a, param, objective, targets, step, self.settings.steps, net)
                sync(self.device)
                seconds = (time.perf_counter() - t0) / reps
            finally:
                torch.backends.cudnn.benchmark = searched
                if decode is not None:
                    self.ae.decode = decode
        return batch / seconds, logits.float().argmax(1).cpu(), first

    def profile(self, batch: int, layout: str) -> str:
        from torch.profiler import ProfilerActivity, profile

        self.run(min(batch, 256), layout, "fp32", reps=1)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        param, objective, step, targets, x0 = self.armed(batch)
        with frozen(self.a, *param.modules(), channels_last=layout == "channels_last"):
            net = self.net(objective, "engine")
            param = param.with_networks(transposed_upsampling)
            with profile(activities=activities, record_shapes=True) as prof:
                param.start(x0, targets)
                ascend(self.a, param, objective, targets, step, self.settings.steps, net)
                sync(self.device)
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        # the kernels, then the operators by input shape: which layer each time belongs to
        return "\n".join((prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60),
                          prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=24,
                                                                              max_name_column_width=40,
                                                                              max_shapes_column_width=70)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny batches, no compilation: checks every step runs")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--methods", default="classifier,decoder", help="comma-separated: classifier, decoder")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    a = PaperClassifier(N_CLASSES).to(device)
    ae = Autoencoder().to(device)
    batches = {"classifier": 8192, "decoder": 4096} if not args.quick else {"classifier": 8, "decoder": 2}
    larger = {"classifier": (16384, 32768), "decoder": (8192,)} if not args.quick else {"classifier": (16,), "decoder": (4,)}
    # bf16 convolutions are slow on most CPUs: the quick dry run keeps to fp32 there
    modes = ("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32",) if args.quick else ("fp32", "bf16")
    emit("device", {"name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU", "torch": torch.__version__})

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        case = Case(method, a, ae, device)
        print(f"--- {method}: kernels of one batch of {batches[method]}, fp32, contiguous weights, as the engine runs it", flush=True)
        print(case.profile(batches[method], "contiguous"), flush=True)
        results = {}
        # the engine's forms first (the reference), then the classifier's 2x2 blocks as torch ops, then the prior as written
        forms = ("engine", "torch_ops", "prior_as_written") if method == "decoder" else ("engine", "torch_ops")
        for form in forms:
            for layout in ("contiguous", "channels_last"):
                for mode in modes:
                    rate, argmax, _ = case.run(batches[method], layout, mode, form=form)
                    results[(layout, mode, form)] = rate
                    ref = results[("contiguous", "fp32", "engine")]
                    if (layout, mode, form) == ("contiguous", "fp32", "engine"):
                        ref_argmax = argmax
                    emit("steps", {"method": method, "batch": batches[method], "layout": layout, "precision": mode,
                                   "form": form,
                                   "samples_per_s": round(rate, 1), "x_contiguous_fp32": round(rate / ref, 2),
                                   "same_argmax": round(float((argmax == ref_argmax).float().mean()), 4)})
        best = max(results, key=results.get)
        for layout, mode, form in sorted(results, key=results.get, reverse=True)[:2]:
            rate, _, first = case.run(batches[method], layout, mode, form=form, benchmark=True)
            emit("cudnn_benchmark", {"method": method, "layout": layout, "precision": mode, "form": form,
                                     "samples_per_s": round(rate, 1), "x_without": round(rate / results[(layout, mode, form)], 2),
                                     "first_call_seconds": round(first, 1)})
        for batch in larger[method]:
            try:
                rate, argmax, _ = case.run(batch, best[0], best[1], form=best[2])
                emit("batch", {"method": method, "layout": best[0], "precision": best[1], "form": best[2], "batch": batch,
                               "samples_per_s": round(rate, 1)})
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                emit("batch", {"method": method, "batch": batch, "error": "out of memory"})
        if not args.quick and not args.no_compile:
            try:
                rate, argmax, first = case.run(batches[method], best[0], best[1], form=best[2], compiled=True)
                emit("compiled", {"method": method, "layout": best[0], "precision": best[1], "batch": batches[method],
                                  "samples_per_s": round(rate, 1), "x_uncompiled": round(rate / results[best], 2),
                                  "first_call_seconds": round(first, 1)})
            except Exception as exc:  # a compiler failure is a finding to print, not a reason to lose the rest
                emit("compiled", {"method": method, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})

    count = 10000 if not args.quick else 300
    for method, shape in (("classifier", (90, 80)), ("decoder", (256,))):
        row = {"method": method, "samples": count}
        for workers in (1, 8):
            t0 = time.perf_counter()
            noise(shape, 0.1, 0, 0, count, workers=workers)
            row[f"seconds_{workers}_threads"] = round(time.perf_counter() - t0, 3)
        emit("noise", row)


if __name__ == "__main__":
    main()
