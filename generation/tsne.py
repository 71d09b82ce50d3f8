"""Where does maximization move real utterances in the autoencoder's latent space?

The paper's speaker / maximization-effect figure: encode a split's utterances,
push each toward its own word through the decoder (paper decoder preset), and
embed original and maximized latents jointly with t-SNE. One panel is coloured
by word, one by speaker; arrows run from original to maximized, and utterances
classifier A got wrong are marked. The 2-D coordinates go to a CSV so the figure
can be redrawn elsewhere; `tsne.json` records what produced it.
"""
from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from hearsay import atomic
from hearsay.errors import HearsayError
from hearsay.provenance import library_versions

from . import checkpoint
from .corpus import read_corpus
from .maximize import PRESETS, maximize
from .objective import save_figure, write_csv


OUTPUTS = ("tsne.csv", "tsne.png", "tsne.pdf", "tsne.json")


def claim_output(out: Path, identity: dict) -> None:
    """Refuse an output folder that holds something else, or a t-SNE made with other settings (it would be replaced).

    A folder holding a t-SNE of the same settings (a rerun), or only the files an interrupted run wrote before
    its tsne.json, is written again.
    """
    if out.exists() and not out.is_dir():
        raise HearsayError(f"output {out} exists and is not a folder")
    if not out.is_dir():
        return
    record_path = out / "tsne.json"
    if record_path.is_file():
        try:
            old = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise HearsayError(f"{record_path} is unreadable; delete {out} or choose another output folder") from None
        if not isinstance(old, dict):
            raise HearsayError(f"{record_path} is not a t-SNE record; choose another output folder")
        new = json.loads(json.dumps(identity))
        differ = sorted(k for k in new if old.get(k) != new[k])
        if differ:
            raise HearsayError(f"{out} holds a t-SNE made with other settings (differs in: {', '.join(differ)}); "
                               "choose another output folder")
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS and not p.name.startswith("."))
    if others:
        raise HearsayError(f"{out} is not empty and holds no t-SNE made here ({others[0]}); choose a new or empty output folder")


def _plot(coords: np.ndarray, words: list[str], speakers: list[str], wrong: np.ndarray, title: str):
    from matplotlib.lines import Line2D

    from hearsay import fonts

    plt = fonts.pyplot(words, speakers)  # Agg, with fonts for words in any installed script
    n = len(words)
    orig, maxi = coords[:n], coords[n:]
    fig, axes = plt.subplots(1, 2, figsize=(15, 7))
    for ax, labels, what in ((axes[0], words, "word"), (axes[1], speakers, "speaker")):
        names = sorted(set(labels))
        cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
        colour = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
        cols = [colour[x] for x in labels]
        for i in range(n):
            ax.annotate("", xy=maxi[i], xytext=orig[i], arrowprops={"arrowstyle": "->", "color": cols[i], "alpha": 0.35, "lw": 0.7})
        ax.scatter(orig[:, 0], orig[:, 1], c=cols, s=18, marker="o")
        ax.scatter(maxi[:, 0], maxi[:, 1], c=cols, s=22, marker="^")
        if wrong.any():
            ax.scatter(orig[wrong, 0], orig[wrong, 1], s=80, facecolors="none", edgecolors="red", linewidths=1.2)
        handles = [
            Line2D([], [], marker="o", ls="", color="grey", label="original"),
            Line2D([], [], marker="^", ls="", color="grey", label="maximized"),
            Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="red", label="misclassified by A"),
        ]
        if len(names) <= 20:
            handles += [Line2D([], [], marker="o", ls="", color=colour[x], label=x) for x in names]
        ax.legend(handles=handles, fontsize=7, loc="best", ncol=2)
        ax.set_title(f"coloured by {what}" + ("" if len(names) <= 20 else f" ({len(names)} {what}s, legend omitted)"))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig


def run_latent_tsne(
    encoder: str | Path,
    classifier: str | Path,
    corpus_root: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    max_utterances: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    progress: bool = True,
) -> dict:
    """Write tsne.png/.pdf, tsne.csv and tsne.json into `out`; returns the json record."""
    from sklearn.manifold import TSNE

    from .cache import features_for

    device = torch.device(device)
    ae = checkpoint.load(encoder, device, kind="autoencoder")
    a = checkpoint.load(classifier, device, kind="classifier")
    checkpoint.require_compatible(a, ae)
    corpus = read_corpus(corpus_root)
    utts = corpus.split(split)
    unknown = sorted({u.word for u in utts} - set(a.classes))
    if unknown:
        raise HearsayError(f"{Path(a.path).name} does not know the corpus word(s) {', '.join(unknown)}")
    if max_utterances is not None:
        if max_utterances < 2:
            raise HearsayError(f"max_utterances must be at least 2, got {max_utterances}")
        if len(utts) > max_utterances:
            utts = sorted(random.Random(seed).sample(utts, max_utterances), key=lambda u: str(u.path))
    if len(utts) < 2:
        raise HearsayError(f"the {split} split has {len(utts)} utterance(s); t-SNE needs at least 2")
    out = Path(out)
    settings = PRESETS["paper"]["decoder"]
    claim_output(out, {"split": split, "seed": seed, "settings": settings.to_dict(), "encoder_sha256": ae.sha256,
                       "classifier_sha256": a.sha256, "corpus_fingerprint": corpus.fingerprint(), "max_utterances": max_utterances})
    feats = torch.from_numpy(features_for(utts, a.feature_config, device=device, progress=progress))
    targets = torch.tensor([a.class_index(u.word) for u in utts])
    res = maximize(a.model, targets, method="decoder", decoder=ae.model, start=feats, settings=settings, seed=seed,
                   device=device, batch_size=batch_size, progress=progress)
    with torch.no_grad():
        pred_orig = torch.cat([a.model(feats[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(feats), batch_size)])
    wrong = (pred_orig != targets).numpy()
    ok = ~res.failed.numpy()
    if not ok.all():
        keep = np.flatnonzero(ok)
        utts, targets, wrong, pred_orig = [utts[i] for i in keep], targets[keep], wrong[keep], pred_orig[keep]
        res_z0, res_z1, prob = res.start_latents[keep], res.latents[keep], res.prob_a[keep]
    else:
        res_z0, res_z1, prob = res.start_latents, res.latents, res.prob_a
    n = len(utts)
    if n < 2:
        raise HearsayError(f"only {n} of {len(ok)} utterances were maximized without NaN/inf (is {Path(a.path).name} sound?); "
                           "t-SNE needs at least 2; nothing was written")
    joint = torch.cat([res_z0, res_z1]).numpy().astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (2 * n - 1) / 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(joint)

    words = [u.word for u in utts]
    speakers = [u.speaker for u in utts]
    rows = []
    for kind, offset in (("original", 0), ("maximized", n)):
        for i, u in enumerate(utts):
            p = prob[i] if kind == "maximized" else None
            rows.append([f"{u.word}/{u.path.name}", u.word, u.speaker, kind, f"{coords[offset + i, 0]:.4f}", f"{coords[offset + i, 1]:.4f}",
                         int(wrong[i]), a.classes[int(pred_orig[i])] if kind == "original" else a.classes[int(p.argmax())],
                         f"{float(p[targets[i]]):.4f}" if p is not None else ""])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "tsne.csv", ["utterance", "word", "speaker", "kind", "x", "y", "misclassified", "pred_a", "target_prob_a_after"], rows)
    fig = _plot(coords, words, speakers, wrong.astype(bool),
                f"t-SNE of autoencoder latents, {split} split: original (o) → maximized toward own word (^), n={n}")
    save_figure(fig, out / "tsne")
    import matplotlib.pyplot as plt

    plt.close(fig)
    record = {
        "split": split,
        "utterances": n,
        "failed": int((~ok).sum()),
        "misclassified": int(wrong.sum()),
        "seed": seed,
        "perplexity": perplexity,
        "settings": settings.to_dict(),
        "encoder_sha256": ae.sha256,
        "classifier_sha256": a.sha256,
        "corpus": str(corpus.root),
        "corpus_fingerprint": corpus.fingerprint(),
        "max_utterances": max_utterances,
        "versions": library_versions(),
        "written": datetime.now(timezone.utc).isoformat(),
    }
    atomic.write_with(out / "tsne.json", lambda fh: fh.write(json.dumps(record, indent=2).encode()))
    return record
