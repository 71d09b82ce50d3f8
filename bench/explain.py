"""Attributions per second for every explanation method, batched vs one clip at a time.

Random weights (speed does not depend on training), paper feature shape (90 x 80).
Beside each method's rate stands its ceiling, measured in the same run: the
classifier's plain forward (+ input-gradient) throughput at the same batch size,
divided by the passes the method needs per clip (integrated gradients: its
steps; occlusion: its windows; LIME: its samples). A method at its ceiling
spends no time outside the network.

    .venv/bin/python bench/explain.py [--arch conv|paper] [--batch 32] [--loop 4] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from generation.explain.attribution import METHODS, AttributionSettings, Explainer, lrp_unsupported  # noqa: E402
from generation.features import FeatureConfig  # noqa: E402
from generation.nets import CLASSIFIERS  # noqa: E402


def rate(fn, clips: int, device: torch.device, repeats: int) -> float:
    """Best clips per second over `repeats` calls of `fn()` (after a warm-up call)."""
    fn()
    best = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, clips / (time.perf_counter() - t0))
    return best


def passes(method: str, settings: AttributionSettings, explainer: Explainer, shape) -> tuple[int, bool]:
    """(network passes per clip, whether they include an input gradient)."""
    if method == "integrated_gradients":
        return settings.ig_steps, True
    if method == "occlusion":
        (wt, wf), (frames, mels) = explainer.occlusion_window(shape), shape
        st, sf = max(1, wt // 2), max(1, wf // 2)
        return ((frames - wt) // st + 1) * ((mels - wf) // sf + 1) + 1, False
    if method == "lime":
        return settings.lime_samples, False
    return 1, True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="conv", choices=sorted(CLASSIFIERS))
    ap.add_argument("--classes", type=int, default=35)
    ap.add_argument("--batch", type=int, default=32, help="clips per batched call")
    ap.add_argument("--loop", type=int, default=4, help="clips explained one at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--lime-samples", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = FeatureConfig()
    model = CLASSIFIERS[args.arch](args.classes).to(device).eval()
    settings = AttributionSettings(lime_samples=args.lime_samples)
    explainer = Explainer(model, settings)
    x = torch.rand(args.batch, *cfg.shape, device=device)
    t = torch.arange(args.batch, device=device) % args.classes
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, {args.arch} classifier, "
          f"{args.classes} classes, input {cfg.shape}, batch {args.batch}, loop {args.loop}", flush=True)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def gradient() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method == "lrp" and lrp_unsupported(model):
            print(f"{method:>22}: not available for {args.arch} (no LRP rule for {', '.join(lrp_unsupported(model))})", flush=True)
            continue
        batched = rate(lambda: explainer.attribute(method, x, t), args.batch, device, args.repeats)

        def one_by_one() -> None:
            for i in range(args.loop):
                explainer.attribute(method, x[i : i + 1], t[i : i + 1])

        single = rate(one_by_one, args.loop, device, args.repeats)
        n, needs_grad = passes(method, settings, explainer, cfg.shape)
        # Measured right after the method, so both see the same load on a shared machine.
        ceiling = rate(gradient if needs_grad else forward, args.batch, device, args.repeats) / n
        print(f"{method:>22}: batched {batched:9.2f} clips/s | one at a time {single:8.2f} clips/s | ratio {batched / single:5.1f}x | "
              f"ceiling {ceiling:9.2f} clips/s ({n} {'forward+gradient' if needs_grad else 'forward'} passes per clip), "
              f"{100 * batched / ceiling:5.1f}% of it", flush=True)


if __name__ == "__main__":
    main()
