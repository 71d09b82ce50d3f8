"""`manage.py visualize`: what does a layer respond to? (seed 001)

For every chosen layer and total-variation weight λ, one input is learned that
maximizes the mean activation of the chosen units (the engine's `neuron`
objective minus λ x `total_variation`, run by `maximize.maximize`); the RMS step
is stateless, so running it in chunks and keeping each chunk's result gives the
animation frames without changing the result. Beside the learned inputs, the
top-N corpus clips that activate the same units most (the seed's "top
examples"). Writes a grid figure (layers x λ, then the top clips) with the
activation values, one GIF per λ, audio of every learned input and top clip,
CSV tables and run.json.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from hearsay.errors import HearsayError
from ..features import read_wave
from ..maximize import Context, Settings, capture, maximize, neuron
from ..vocoder import GriffinLimVocoder, Vocoder, finish, write_wav
from .common import RunFolder, load_classifier, load_clips, load_npz, plt, read_split, render, save_figure, save_npz, write_csv, write_gif


def default_layers(model: nn.Module) -> list[str]:
    """From the first layer to the logits: every convolution and dense layer outside residual shortcuts.

    Their outputs are pre-activations: a unit that is silent at the start (a ReLU
    output of 0) would have no gradient and could never be maximized.
    """
    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear)
    return [n for n, m in model.named_modules() if n and isinstance(m, kinds) and ".skip" not in n]


def layer_widths(model: nn.Module, layers: Sequence[str], shape: tuple[int, int], device) -> dict[str, int]:
    with capture(model, tuple(layers)) as acts, torch.no_grad():
        model(torch.zeros(1, *shape, device=device))
    return {name: int(acts[name].shape[1]) for name in layers}


def activations(model: nn.Module, feats: torch.Tensor, layer: str, units: Sequence[int], device, batch_size: int = 256) -> np.ndarray:
    """The `neuron` objective's value (mean activation of `units`) for every clip [N]."""
    objective = neuron(layer, tuple(units))
    out = []
    with capture(model, (layer,)) as acts, torch.no_grad():
        for lo in range(0, len(feats), batch_size):
            x = feats[lo : lo + batch_size].to(device)
            logits = model(x)
            out.append(objective(Context(x, logits, acts, x)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@dataclass
class VisualizeSummary:
    out: Path
    layers: list[str]
    tv: list[float]
    learned: list[dict]
    seconds: float


def run_visualize(classifier, out, *, layers: Sequence[str] | None = None, units: Sequence[int] = (), tv: Sequence[float] = (0.0, 0.05),
                  steps: int = 256, lr: float = 0.02, frames: int = 32, corpus: str | Path | None = None, split: str = "test",
                  top: int = 4, seed: int = 0, device: torch.device = torch.device("cpu"), vocoder: Vocoder | None = None,
                  progress: bool = False) -> VisualizeSummary:
    from tqdm import tqdm

    if steps < 1 or frames < 1 or not 0 < lr < math.inf or top < 0 or any(not 0 <= t < math.inf for t in tv) or not tv:
        raise HearsayError("steps and frames must be >= 1, lr > 0, top >= 0, tv non-negative values")
    tv = list(dict.fromkeys(float(t) for t in tv))  # `--tv 0,0.0` asks for one λ
    names: dict[str, float] = {}
    for lam in tv:  # files are named by λ's 6 significant digits: two λ sharing a name would share one result
        if f"{lam:g}" in names:
            raise HearsayError(f"--tv values {names[f'{lam:g}']!r} and {lam!r} are too close (both tv{lam:g}); "
                               "give λ values that differ within 6 significant digits")
        names[f"{lam:g}"] = lam
    started = time.time()
    ckpt = load_classifier(classifier, device)
    model, cfg = ckpt.model, ckpt.feature_config
    layers = list(dict.fromkeys(layers)) if layers else default_layers(model)
    widths = layer_widths(model, layers, cfg.shape, device)  # unknown names: one-line error from `capture`
    chosen_units = {}
    for name in layers:
        picked = list(units) if units else list(range(min(3, widths[name])))
        bad = [u for u in picked if not 0 <= u < widths[name]]
        if bad:
            raise HearsayError(f"unit {bad[0]} out of range: layer {name!r} has {widths[name]} units (0-{widths[name] - 1})")
        chosen_units[name] = picked
    chunk = max(1, steps // frames)
    vocoder = vocoder or GriffinLimVocoder(cfg, device=device)
    data = utts = None
    if corpus is not None and top:
        data, utts = read_split(corpus, ckpt, split)
    folder = RunFolder(out, "visualize", {
        "layers": layers, "units": chosen_units, "tv": list(tv), "steps": steps, "lr": lr, "frames": frames, "seed": seed,
        "classifier_sha256": ckpt.sha256, "top": top if data else 0, "split": split,
        "corpus_fingerprint": data.fingerprint() if data else None,
        "vocoder": vocoder.config() if hasattr(vocoder, "config") else type(vocoder).__name__,
    })
    out = folder.out
    record = folder.open({"classifier": str(classifier), "corpus": str(data.root) if data else ""}, device, {"arch": ckpt.arch})
    for sub in ("inputs", "wav", "figures"):
        (out / sub).mkdir(exist_ok=True)

    learned = []
    for name in tqdm(layers, desc="visualize", unit="layer", disable=not progress):
        for lam in tv:
            path = out / "inputs" / f"{name}_tv{lam:g}.npz"
            saved = load_npz(path)
            if saved is None:
                saved = _learn(model, name, chosen_units[name], lam, steps, chunk, lr, cfg.shape, seed, device)
                save_npz(path, **saved)
            wave = vocoder(torch.from_numpy(saved["history"][-1:]).float())[0]
            write_wav(out / "wav" / f"{name}_tv{lam:g}.wav", wave, vocoder.sample_rate)
            learned.append({"layer": name, "units": ",".join(map(str, chosen_units[name])), "tv": lam,
                            "activation": round(float(saved["activation"][-1]), 6), "activation_start": round(float(saved["activation"][0]), 6),
                            "total_variation": round(float(saved["total_variation"][-1]), 6), "file": f"wav/{name}_tv{lam:g}.wav"})
    write_csv(out / "learned.csv", list(learned[0]), [list(r.values()) for r in learned])

    tops: dict[str, list[tuple[str, float, np.ndarray]]] = {}
    if data is not None:
        cached = load_npz(out / "top_examples.npz") or {}
        clips = load_clips(ckpt, utts, device)
        all_acts = {name: cached[name] if name in cached else activations(model, clips.features, name, chosen_units[name], device)
                    for name in layers}
        if set(cached) != set(layers):
            save_npz(out / "top_examples.npz", **all_acts)
        table = []
        for name, act in all_acts.items():
            order = np.argsort(-act, kind="stable")[:top]
            tops[name] = [(utts[i].relpath, float(act[i]), clips.features[i].numpy()) for i in order]
            for rank, i in enumerate(order):
                dest = f"wav/top_{name}_{rank}.wav"
                wave, rate = read_wave(utts[i].path)
                write_wav(out / dest, finish(torch.from_numpy(wave)[None], rate)[0].numpy(), rate)
                table.append([name, rank, utts[i].relpath, round(float(act[i]), 6), dest])
        write_csv(out / "top_examples.csv", ["layer", "rank", "source_file", "activation", "file"], table)
    _grid(out / "figures" / "grid", out, layers, list(tv), chosen_units, learned, tops, top)
    for lam in tv:
        _gif(out / "figures" / f"learning_tv{lam:g}.gif", out, layers, lam)
    folder.finish(record, learned=learned, seconds_last_run=round(time.time() - started, 1))
    return VisualizeSummary(out, layers, list(tv), learned, time.time() - started)


def _learn(model, layer, units, lam, steps, chunk, lr, shape, seed, device) -> dict[str, np.ndarray]:
    """Maximize neuron(layer, units) - lam * TV in chunks of RMS steps; every chunk's input is an animation frame."""
    settings = Settings(steps=chunk, lr=lr, step="rms", objective="neuron", layer=layer, units=tuple(units), tv_weight=lam, clamp=True)
    target = torch.zeros(1, dtype=torch.long)
    res = maximize(model, target, settings=settings, seed=seed, device=device, shape=shape)
    history = [res.start_features[0], res.features[0]]
    done = chunk
    while done < steps:
        step = min(chunk, steps - done)
        res = maximize(model, target, settings=Settings(**{**settings.__dict__, "steps": step}), start=res.features,
                       seed=seed, device=device, shape=shape)
        history.append(res.features[0])
        done += step
    hist = torch.stack(history)
    from ..maximize import tv_value

    act = activations(model, hist, layer, units, device)
    return {"history": hist.numpy(), "activation": act, "total_variation": tv_value(hist).numpy()}


def _grid(stem: Path, out: Path, layers, tv, units, learned, tops, top: int) -> None:
    """Rows: one per λ (learned inputs), then the top corpus clips; columns: layers, first to logits."""
    pyplot = plt()
    rows = len(tv) + (top if tops else 0)
    fig, axes = pyplot.subplots(rows, len(layers), figsize=(1.9 * len(layers) + 0.6, 1.7 * rows + 0.4), squeeze=False)
    by_key = {(r["layer"], r["tv"]): r for r in learned}
    for col, name in enumerate(layers):
        for row, lam in enumerate(tv):
            x = load_npz(out / "inputs" / f"{name}_tv{lam:g}.npz")["history"][-1]
            ax = axes[row][col]
            ax.imshow(x.T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
            head = f"{name}\nunits {','.join(map(str, units[name]))}\n" if row == 0 else ""
            ax.set_title(f"{head}λ={lam:g}: act {by_key[(name, lam)]['activation']:.3g}", fontsize=6)
        for k, (rel, act, feats) in enumerate(tops.get(name, [])):
            ax = axes[len(tv) + k][col]
            ax.imshow(feats.T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"{rel}\nact {act:.3g}", fontsize=5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, stem)
    pyplot.close(fig)


def _gif(path: Path, out: Path, layers, lam: float) -> None:
    """The learned inputs of every layer side by side, frame by frame over the optimization."""
    pyplot = plt()
    hists = [load_npz(out / "inputs" / f"{name}_tv{lam:g}.npz")["history"] for name in layers]
    fig, axes = pyplot.subplots(1, len(layers), figsize=(1.6 * len(layers) + 0.4, 2.2), squeeze=False)
    images = []
    for ax, name, h in zip(axes[0], layers, hists):
        images.append(ax.imshow(h[0].T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1))
        ax.set_title(name, fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"learned inputs, λ={lam:g}", fontsize=8)
    frames = []
    for k in range(max(len(h) for h in hists)):
        for im, h in zip(images, hists):
            im.set_data(h[min(k, len(h) - 1)].T)
        frames.append(render(fig))
    pyplot.close(fig)
    write_gif(path, frames)
