"""Training of the classifiers and the autoencoder, resumable and evaluated on held-out speakers.

Models are chosen on the validation split and reported on the test split (whose
speakers never occur in training; the original evaluated on training data). Each
epoch ends with an atomic `OUT.partial` state, so an interrupted run continues
where it stopped and ends bit-identical to an uninterrupted one on CPU.
"""
from __future__ import annotations

import copy
import csv
import functools
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hearsay import atomic
from hearsay.errors import HearsayError, with_article
from hearsay.provenance import file_sha256, library_versions
from hearsay.runs import identity_differences

from . import cache, checkpoint, nets
from .checkpoint import Checkpoint
from .corpus import Corpus, read_corpus
from .features import PAPER, FeatureConfig

EpochCallback = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without it is a HearsayError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise HearsayError("device cuda was asked for, but no CUDA device is available (choose cpu or auto)")
        return torch.device(name)
    raise HearsayError(f"unknown device {name!r}: use auto, cpu or cuda")


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _load_partial(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state of an interrupted run, if any; refused when it was started with other arguments or data."""
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise HearsayError(f"{path} is unreadable; delete it to start training afresh") from None
    theirs = raw.get("identity", {}) if isinstance(raw, dict) else {}
    diff = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
    if diff:
        raise HearsayError(f"{path} belongs to a run with different {'data' if 'data_fingerprint' in diff else 'arguments'} "
                           f"({', '.join(diff)}); rerun with the same ones or delete it")
    return raw


def resume_partial(path: Path, identity: dict[str, Any], parts: dict[str, Any], gen: torch.Generator
                   ) -> tuple[int, list[dict[str, Any]], float, float]:
    """Restore an interrupted adversarial run: `parts` (networks and optimizers by name) and the random state.

    Returns (epochs done, history, wall seconds, CPU seconds); a fresh run gives (0, [], 0.0, 0.0).
    """
    raw = _load_partial(path, identity)
    if raw is None:
        return 0, [], 0.0, 0.0
    for name, part in parts.items():
        part.load_state_dict(raw[name])
    torch.set_rng_state(raw["rng_cpu"])
    gen.set_state(raw["rng_gen"])
    return int(raw["epoch"]), list(raw["history"]), float(raw["seconds"]), float(raw["cpu_seconds"])


def save_partial(path: Path, identity: dict[str, Any], parts: dict[str, Any], gen: torch.Generator, *, epoch: int,
                 history: list[dict[str, Any]], seconds: float, cpu_seconds: float) -> None:
    """Save where an adversarial run stands after an epoch, so `resume_partial` continues it exactly."""
    checkpoint.atomic_torch_save({
        "identity": identity, **{name: part.state_dict() for name, part in parts.items()}, "epoch": epoch,
        "history": history, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "rng_cpu": torch.get_rng_state(), "rng_gen": gen.get_state(),
    }, path)


def sibling(out: str | Path, suffix: str) -> Path:
    """`<out stem><suffix>` next to the checkpoint, e.g. A.confusion.csv for A.pt."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


def _check_writable(out: Path, kind: str | None = None) -> None:
    if out.is_dir():
        raise HearsayError(f"output {out} is a folder; give a file name such as {out / 'model.pt'}")
    if out.is_file():  # a rerun replaces its own checkpoint; anything else there would be lost
        found = checkpoint.kind_of(out)
        if found is None:
            raise HearsayError(f"output {out} exists and is not a Hearsay checkpoint; choose another file name")
        if kind is not None and found != kind:
            raise HearsayError(f"output {out} holds {with_article(found)}; "
                               f"choose another file name for {with_article(kind)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HearsayError(f"cannot write to {out.parent}: {exc.strerror}") from None


def _write_text(path: Path, text: str) -> None:
    atomic.write_text(path, text)


def _write_png(path: Path, fig) -> None:
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png", dpi=110))


def _load_data(corpus: Corpus, cfg: FeatureConfig, device: torch.device, cache_dir, progress: bool):
    """Features and labels of the three splits, on `device` (the corpus is small enough to hold there)."""
    data = {}
    for split in ("train", "validation", "test"):
        utts = corpus.split(split)
        feats = cache.features_for(utts, cfg, device, cache_dir, progress=progress)
        data[split] = (
            torch.from_numpy(feats).to(device),
            torch.tensor(corpus.labels(utts), dtype=torch.long, device=device),
        )
    if len(data["validation"][0]) == 0:
        raise HearsayError(f"{corpus.root} has no validation utterances (validation_list.txt): the best epoch cannot be chosen")
    return data


def prepare_features(corpus_root: str | Path, feature_config: FeatureConfig | None = None, cache_dir: str | Path | None = None,
                     progress: bool = True) -> None:
    """Fill the feature cache the trainers read, so several trainings started at once do not each compute it."""
    _load_data(read_corpus(corpus_root), feature_config or PAPER, torch.device("cpu"), cache_dir, progress)


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 8, mask_frames: int = 10, mask_mels: int = 8) -> torch.Tensor:
    """Random time shift plus one time and one mel mask per clip.

    The built-in corpus places each word at a random offset and speakers differ in
    pitch, so shifting and masking make the net rely on the word, not its timing or
    a single band. Peak normalisation makes gain augmentation pointless.
    """
    b, t, m = x.shape
    cpu = torch.device("cpu")
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=cpu)
    t0 = torch.randint(0, t, (b,), generator=gen, device=cpu)
    tw = torch.randint(0, mask_frames + 1, (b,), generator=gen, device=cpu)
    m0 = torch.randint(0, m, (b,), generator=gen, device=cpu)
    mw = torch.randint(0, mask_mels + 1, (b,), generator=gen, device=cpu)
    frames = torch.arange(t).unsqueeze(0)
    src = frames - shifts.unsqueeze(1)
    valid = (src >= 0) & (src < t)
    idx = src.clamp(0, t - 1)
    keep_t = valid & ~((frames >= t0.unsqueeze(1)) & (frames < (t0 + tw).unsqueeze(1)))
    mels = torch.arange(m).unsqueeze(0)
    keep_m = ~((mels >= m0.unsqueeze(1)) & (mels < (m0 + mw).unsqueeze(1)))
    idx, keep_t, keep_m = idx.to(x.device), keep_t.to(x.device), keep_m.to(x.device)
    shifted = torch.gather(x, 1, idx.unsqueeze(2).expand(b, t, m))
    return shifted * keep_t.unsqueeze(2) * keep_m.unsqueeze(1)


SCHEDULES = ("cosine", "constant")


def _cosine(steps: int) -> Callable[[int], float]:
    """Learning-rate factor decaying from 1 to 0 over the run: steadier final epochs than a constant rate."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(1, steps)))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    return list(order.split(batch_size))


@torch.no_grad()
def _evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and the predictions over a whole split."""
    model.eval()
    losses, preds = [], []
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        losses.append(nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum"))
        preds.append(logits.argmax(1))
    loss = float(torch.stack(losses).sum()) / max(1, len(x))
    return loss, torch.cat(preds) if preds else y.new_zeros(0)


@torch.no_grad()
def _evaluate_autoencoder(model: nets.Autoencoder, x: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean per-value BCE and MSE of the reconstructions over a whole split."""
    model.eval()
    bce, mse = 0.0, 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        logits = model.decode_logits(model.encode(xb))
        bce += float(nn.functional.binary_cross_entropy_with_logits(logits, xb, reduction="sum"))
        mse += float(((torch.sigmoid(logits) - xb) ** 2).sum())
    n = max(1, x.numel())
    return bce / n, mse / n


class _Run:
    """State shared by both trainers: identity, resumable state file, RNGs, best-so-far."""

    def __init__(self, out: Path, identity: dict[str, Any], seed: int, device: torch.device):
        self.out = out
        self.partial = partial_path(out)
        self.identity = identity
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "score": None, "state": None}

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer, sched=None) -> bool:
        """Continue from OUT.partial when it was started with the same arguments and data."""
        if not self.partial.is_file():
            return False
        try:
            raw = torch.load(self.partial, map_location="cpu", weights_only=True)
        except Exception:
            raise HearsayError(f"{self.partial} is unreadable; delete it to start training afresh") from None
        theirs = raw.get("identity", {}) if isinstance(raw, dict) else {}
        diff = identity_differences(theirs, self.identity)
        if diff:
            what = "data" if "data_fingerprint" in diff else "arguments"
            raise HearsayError(
                f"{self.partial} belongs to a run with different {what} ({', '.join(diff)}); rerun with the same ones or delete it"
            )
        model.load_state_dict(raw["model"])
        opt.load_state_dict(raw["optimizer"])
        if sched is not None:
            sched.load_state_dict(raw["scheduler"])
        self.epoch = int(raw["epoch"])
        self.history = list(raw["history"])
        self.best = dict(raw["best"])
        torch.set_rng_state(raw["rng_cpu"])
        if self.device.type == "cuda" and raw.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(raw["rng_cuda"], self.device)
        self.gen.set_state(raw["rng_gen"])
        return True

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, sched=None) -> None:
        checkpoint.atomic_torch_save(
            {
                "identity": self.identity,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "epoch": self.epoch,
                "history": self.history,
                "best": self.best,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "rng_gen": self.gen.get_state(),
            },
            self.partial,
        )

    def consider(self, model: nn.Module, score: float) -> None:
        """Keep the weights of the epoch with the highest validation score."""
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {"epoch": self.epoch, "score": score, "state": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})}


def _init_from(path: str | Path | None, kind: str, corpus: Corpus, cfg: FeatureConfig, arch: str) -> Checkpoint | None:
    if path is None:
        return None
    base = checkpoint.load(path, kind=kind)
    if base.feature_config != cfg:
        raise HearsayError(f"initial checkpoint {path} was trained on other features (FeatureConfig {base.feature_config.fingerprint()} vs {cfg.fingerprint()})")
    if base.classes != corpus.classes:
        raise HearsayError(f"initial checkpoint {path} knows other classes ({len(base.classes)} words) than the corpus at {corpus.root} ({len(corpus.classes)} words)")
    if base.arch != arch:
        raise HearsayError(f"initial checkpoint {path} is a {base.arch!r} net, not {arch!r}")
    return base


def _prepare(corpus_root, out, device, cfg, kind: str | None = None) -> tuple[Corpus, Path, torch.device, FeatureConfig]:
    out = Path(out).expanduser().resolve()
    _check_writable(out, kind)
    corpus = read_corpus(corpus_root)
    return corpus, out, resolve_device(device) if isinstance(device, str) else device, cfg or PAPER


def _confusion(y_true: torch.Tensor, y_pred: torch.Tensor, n: int) -> np.ndarray:
    conf = np.zeros((n, n), dtype=np.int64)
    np.add.at(conf, (y_true.cpu().numpy(), y_pred.cpu().numpy()), 1)
    return conf


def _write_confusion(out: Path, classes: list[str], conf: np.ndarray, accuracy: float) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true\\predicted", *classes])
    for word, row in zip(classes, conf):
        writer.writerow([word, *row.tolist()])
    _write_text(sibling(out, ".confusion.csv"), buf.getvalue())

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = max(4.0, 0.28 * len(classes) + 2)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rates = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{out.name}: test accuracy {accuracy:.1%}")
    fig.tight_layout()
    _write_png(sibling(out, ".confusion.png"), fig)


def finish_checkpoint(out: Path, ckpt: Checkpoint, partial: Path) -> Checkpoint:
    """Save the finished model and its metrics beside it, then drop the interrupted-run state it no longer needs."""
    checkpoint.save(out, ckpt)
    _write_text(sibling(out, ".metrics.json"), json.dumps({"train_config": ckpt.train_config, "metrics": ckpt.metrics}, indent=2))
    partial.unlink(missing_ok=True)
    ckpt.path = str(out)
    ckpt.sha256 = file_sha256(out)
    return ckpt


def train_classifier(
    corpus_root: str | Path,
    out: str | Path,
    *,
    epochs: int = 15,
    seed: int = 1,
    arch: str = "conv",
    batch_size: int = 32,
    lr: float = 1e-3,
    schedule: str = "cosine",
    augmentation: bool = True,
    device: str | torch.device = "auto",
    init_from: str | Path | None = None,
    feature_config: FeatureConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> Checkpoint:
    """Train a classifier, keep the epoch best on validation, report test accuracy; see module doc."""
    if epochs < 1 or batch_size < 1 or not 0 < lr < math.inf:
        raise HearsayError("epochs and batch size must be at least 1 and the learning rate positive and finite")
    if schedule not in SCHEDULES:
        raise HearsayError(f"unknown learning-rate schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if arch not in nets.CLASSIFIERS:
        raise HearsayError(f"unknown classifier architecture {arch!r}; choose from {', '.join(nets.CLASSIFIERS)}")
    corpus, out, dev, cfg = _prepare(corpus_root, out, device, feature_config, "classifier")
    base = _init_from(init_from, "classifier", corpus, cfg, arch)
    arch_kwargs = dict(base.arch_kwargs) if base else {"n_classes": len(corpus.classes), "input_shape": list(cfg.shape)}
    fingerprint = corpus.fingerprint()
    identity = {
        "kind": "classifier", "arch": arch, "arch_kwargs": arch_kwargs, "seed": seed, "batch_size": batch_size, "lr": lr,
        "schedule": schedule, "epochs": epochs if schedule == "cosine" else None, "augmentation": augmentation, "feature_config": cfg.fingerprint(), "data_fingerprint": fingerprint,
        "init_from_sha256": base.sha256 if base else None,
    }
    data = _load_data(corpus, cfg, dev, cache_dir, progress)
    run = _Run(out, identity, seed, dev)
    model = nets.build("classifier", arch, dict(arch_kwargs)).to(dev)
    if base:
        model.load_state_dict(base.model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_train, y_train = data["train"]
    steps = epochs * -(-len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(steps) if schedule == "cosine" else lambda step: 1.0)
    resumed = run.restore(model, opt, sched)
    bar = tqdm(total=epochs, initial=min(run.epoch, epochs), desc=f"{out.name} ({arch})", unit="epoch", disable=not progress)
    if resumed:
        bar.write(f"resuming {out.name} after epoch {run.epoch} from {run.partial.name}")
    while run.epoch < epochs:
        model.train()
        total, correct, seen = 0.0, 0, 0
        for idx in _batches(len(x_train), batch_size, run.gen):
            xb, yb = x_train[idx.to(dev)], y_train[idx.to(dev)]
            if augmentation:
                xb = augment(xb, run.gen)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        run.epoch += 1
        val_loss, val_pred = _evaluate_classifier(model, *data["validation"], 256)
        val_acc = float((val_pred == data["validation"][1]).float().mean())
        record = {"epoch": run.epoch, "train_loss": total / seen, "train_acc": correct / seen, "val_loss": val_loss, "val_acc": val_acc}
        run.history.append(record)
        run.consider(model, val_acc - 1e-6 * val_loss)
        run.save(model, opt, sched)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.3f}", val_acc=f"{val_acc:.3f}")
        bar.update(1)
        if on_epoch:
            on_epoch(record)
    bar.close()

    model.load_state_dict(run.best["state"])
    metrics: dict[str, Any] = {"n_train": len(x_train), "n_validation": len(data["validation"][0]), "n_test": len(data["test"][0])}
    predictions = {}
    for split in ("validation", "test"):
        metrics[f"{split}_loss"], predictions[split] = _evaluate_classifier(model, *data[split], 256)
        metrics[f"{split}_accuracy"] = float((predictions[split] == data[split][1]).float().mean())
    conf = _confusion(data["test"][1], predictions["test"], len(corpus.classes))
    metrics["test_per_class_accuracy"] = {
        word: (float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None) for i, word in enumerate(corpus.classes)
    }
    metrics["test_confusion"] = conf.tolist()
    metrics["test_speakers_unseen_in_training"] = not (corpus.speakers("test") & corpus.speakers("train"))
    metrics["history"] = run.history
    train_config = {
        **identity, "data": str(corpus.root), "epochs": epochs, "epochs_run": run.epoch, "best_epoch": run.best["epoch"],
        "device": str(dev), "init_from": str(init_from) if init_from else None, "selected_on": "validation accuracy",
    }
    ckpt = Checkpoint(
        kind="classifier", arch=arch, arch_kwargs=arch_kwargs, model=model.eval(), feature_config=cfg, classes=list(corpus.classes),
        train_config=train_config, metrics=metrics, data_fingerprint=fingerprint, versions=library_versions(),
    )
    _write_confusion(out, corpus.classes, conf, metrics["test_accuracy"])
    return finish_checkpoint(out, ckpt, run.partial)


def train_autoencoder(
    corpus_root: str | Path,
    out: str | Path,
    *,
    epochs: int = 8,
    seed: int = 1,
    latent: int = 256,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    init_from: str | Path | None = None,
    feature_config: FeatureConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    channels_last: bool = True,
) -> Checkpoint:
    """Train the paper's autoencoder with BCE; keep the epoch with the lowest validation BCE.

    On a CPU the weights are channels-last while training (`channels_last`); the checkpoint
    is saved in the default layout either way.
    """
    if epochs < 1 or batch_size < 1 or not 0 < lr < math.inf or latent < 1:
        raise HearsayError("epochs, batch size and latent size must be at least 1 and the learning rate positive and finite")
    corpus, out, dev, cfg = _prepare(corpus_root, out, device, feature_config, "autoencoder")
    base = _init_from(init_from, "autoencoder", corpus, cfg, "paper")
    arch_kwargs = dict(base.arch_kwargs) if base else {"latent": latent, "input_shape": list(cfg.shape)}
    if base and arch_kwargs.get("latent") != latent:
        raise HearsayError(f"initial checkpoint {init_from} has a {arch_kwargs.get('latent')}-d latent, not {latent}")
    fingerprint = corpus.fingerprint()
    identity = {
        "kind": "autoencoder", "arch": "paper", "arch_kwargs": arch_kwargs, "seed": seed, "batch_size": batch_size, "lr": lr,
        "feature_config": cfg.fingerprint(), "data_fingerprint": fingerprint, "init_from_sha256": base.sha256 if base else None,
    }
    data = _load_data(corpus, cfg, dev, cache_dir, progress)
    run = _Run(out, identity, seed, dev)
    model = nets.build("autoencoder", "paper", dict(arch_kwargs)).to(dev)
    if base:
        model.load_state_dict(base.model.state_dict())
    # its 2-d convolutions ran 1.5x as fast channels-last on a CPU (the default layout's 16->1 output convolution 3x slower)
    layout = torch.channels_last if dev.type == "cpu" and channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    resumed = run.restore(model, opt)
    x_train = data["train"][0]
    bar = tqdm(total=epochs, initial=min(run.epoch, epochs), desc=f"{out.name} (autoencoder)", unit="epoch", disable=not progress)
    if resumed:
        bar.write(f"resuming {out.name} after epoch {run.epoch} from {run.partial.name}")
    while run.epoch < epochs:
        model.train()
        total, seen = 0.0, 0
        for idx in _batches(len(x_train), batch_size, run.gen):
            xb = x_train[idx.to(dev)]
            loss = nn.functional.binary_cross_entropy_with_logits(model.decode_logits(model.encode(xb)), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            seen += len(xb)
        run.epoch += 1
        val_bce, val_mse = _evaluate_autoencoder(model, data["validation"][0], 256)
        record = {"epoch": run.epoch, "train_bce": total / seen, "val_bce": val_bce, "val_mse": val_mse}
        run.history.append(record)
        run.consider(model, -val_bce)
        run.save(model, opt)
        bar.set_postfix(bce=f"{record['train_bce']:.4f}", val_bce=f"{val_bce:.4f}", val_mse=f"{val_mse:.4f}")
        bar.update(1)
        if on_epoch:
            on_epoch(record)
    bar.close()

    model.load_state_dict(run.best["state"])
    metrics: dict[str, Any] = {"n_train": len(x_train), "n_validation": len(data["validation"][0]), "n_test": len(data["test"][0])}
    for split in ("validation", "test"):
        metrics[f"{split}_bce"], metrics[f"{split}_mse"] = _evaluate_autoencoder(model, data[split][0], 256)
    metrics["history"] = run.history
    train_config = {
        **identity, "data": str(corpus.root), "epochs": epochs, "epochs_run": run.epoch, "best_epoch": run.best["epoch"],
        "device": str(dev), "init_from": str(init_from) if init_from else None, "selected_on": "validation BCE",
    }
    ckpt = Checkpoint(
        kind="autoencoder", arch="paper", arch_kwargs=arch_kwargs, model=model.to(memory_format=torch.contiguous_format).eval(), feature_config=cfg, classes=list(corpus.classes),
        train_config=train_config, metrics=metrics, data_fingerprint=fingerprint, versions=library_versions(),
    )
    return finish_checkpoint(out, ckpt, run.partial)


def summary(ckpt: Checkpoint) -> str:
    """The line a training command ends with: held-out results and the epoch kept."""
    m, c = ckpt.metrics, ckpt.train_config
    if ckpt.kind == "classifier":
        return (f"{ckpt.path}: test accuracy {m['test_accuracy']:.2%} on {m['n_test']} held-out clips "
                f"(validation {m['validation_accuracy']:.2%}, best epoch {c['best_epoch']}/{c['epochs_run']})")
    return (f"{ckpt.path}: test BCE {m['test_bce']:.4f}, MSE {m['test_mse']:.5f} on {m['n_test']} held-out clips "
            f"(best epoch {c['best_epoch']}/{c['epochs_run']})")


def print_epoch(label: str, record: dict[str, Any]) -> None:
    """One line per epoch: the progress of trainings that run side by side, where bars would overwrite each other."""
    values = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
    print(f"{label} epoch {record['epoch']}: {values}", flush=True)


TRAINERS = {"classifier": train_classifier, "autoencoder": train_autoencoder}


def train_and_summarize(kind: str, options: dict[str, Any]) -> tuple[str, float]:
    """Train one model with per-epoch lines for progress (for `generation.workers`): (its summary, wall seconds)."""
    started = time.monotonic()
    ckpt = TRAINERS[kind](**options, progress=False, on_epoch=functools.partial(print_epoch, Path(options["out"]).name))
    return summary(ckpt), time.monotonic() - started
