"""Relevance maps -> rectangular time-frequency regions, their random controls, and how faithful they are (seed 002).

A region set is found by keeping the bins whose positive relevance reaches a
percentile of the map, clustering their (frame, mel) coordinates with
scikit-learn's HDBSCAN (noise points dropped), and taking each cluster's
bounding rectangle. Removing a region means setting its bins to 0, the -100 dB
floor (silence in feature space). A random control has exactly the same area:
the same rectangles moved together to a random place (a circular shift in time
and frequency), so shape and area are exactly those of the regions.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from hearsay.errors import HearsayError

PERCENTILES = (98, 95, 90, 80, 70)
MIN_CLUSTER_SIZES = (15, 20, 30, 40, 50, 60, 70)
MIN_SAMPLES = (5, 10, 15, 20, 25, 30)
RANDOM_RUNS = 5  # the seed's random_selection_comparison_runs


@dataclass(frozen=True)
class RegionParams:
    percentile: float
    min_cluster_size: int
    min_samples: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Rect:
    """Frames [t0, t1) x mel bands [f0, f1)."""

    t0: int
    t1: int
    f0: int
    f1: int

    @property
    def area(self) -> int:
        return (self.t1 - self.t0) * (self.f1 - self.f0)


def extract(relevance: np.ndarray, params: RegionParams) -> list[Rect]:
    """Rectangles around HDBSCAN clusters of the bins at or above the `percentile` of positive relevance."""
    from sklearn.cluster import HDBSCAN

    rel = np.nan_to_num(np.asarray(relevance, dtype=np.float64))
    positive = rel[rel > 0]
    if positive.size == 0:
        return []
    cut = np.percentile(rel, params.percentile)
    points = np.argwhere((rel >= cut) & (rel > 0))
    if len(points) < max(params.min_cluster_size, params.min_samples + 1, 2):
        return []
    # One compact blob is a legitimate explanation: HDBSCAN would call it all noise unless allowed a single cluster.
    labels = HDBSCAN(min_cluster_size=params.min_cluster_size, min_samples=params.min_samples, allow_single_cluster=True,
                     copy=True).fit_predict(points)
    rects = []
    for label in sorted(set(labels) - {-1}):
        members = points[labels == label]
        (t0, f0), (t1, f1) = members.min(axis=0), members.max(axis=0)
        rects.append(Rect(int(t0), int(t1) + 1, int(f0), int(f1) + 1))
    return rects


def mask_of(rects: list[Rect], shape: tuple[int, int]) -> np.ndarray:
    """Boolean [frames, mels] union of the rectangles."""
    mask = np.zeros(shape, dtype=bool)
    for r in rects:
        mask[r.t0 : r.t1, r.f0 : r.f1] = True
    return mask


def random_control(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same selection moved to a random place: a circular shift in time and frequency (exactly the same area)."""
    frames, mels = mask.shape
    if not mask.any() or mask.all():
        return mask.copy()
    while True:
        dt, df = int(rng.integers(0, frames)), int(rng.integers(0, mels))
        if dt or df:
            return np.roll(mask, (dt, df), axis=(0, 1))


def removed(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Features with the masked bins set to the floor (0)."""
    return features * (~masks.bool()).to(features.dtype)


def kept(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Only the masked bins survive (what the identification audio is made of)."""
    return features * masks.bool().to(features.dtype)


@dataclass
class Faithfulness:
    """Per clip: target probability before, after removing the regions, and after removing each random control."""

    prob: np.ndarray  # [N]
    prob_regions_removed: np.ndarray  # [N]
    prob_random_removed: np.ndarray  # [N, runs]
    area: np.ndarray  # [N] bins

    @property
    def drop_regions(self) -> np.ndarray:
        return self.prob - self.prob_regions_removed

    @property
    def drop_random(self) -> np.ndarray:
        return self.prob[:, None] - self.prob_random_removed


def faithfulness(probabilities, features: torch.Tensor, targets: torch.Tensor, region_masks: np.ndarray,
                 random_masks: np.ndarray, batch_size: int = 256) -> Faithfulness:
    """Target-probability drops for regions [N, T, F] and controls [N, runs, T, F]; `probabilities` maps features to softmax."""
    n, runs = random_masks.shape[:2]

    def target_prob(x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        out = [probabilities(x[lo : lo + batch_size]).cpu().gather(1, t[lo : lo + batch_size, None]).squeeze(1)
               for lo in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    base = target_prob(features, targets)
    reg = target_prob(removed(features, torch.from_numpy(region_masks)), targets)
    many = features[:, None].expand(-1, runs, -1, -1).reshape(n * runs, *features.shape[1:])
    rnd = target_prob(removed(many, torch.from_numpy(random_masks.reshape(n * runs, *features.shape[1:]))),
                      targets.repeat_interleave(runs)).reshape(n, runs)
    return Faithfulness(base, reg, rnd, region_masks.reshape(n, -1).sum(axis=1))


def grid(percentiles=PERCENTILES, min_cluster_sizes=MIN_CLUSTER_SIZES, min_samples=MIN_SAMPLES) -> list[RegionParams]:
    combos = [RegionParams(float(p), int(c), int(s)) for p, c, s in itertools.product(percentiles, min_cluster_sizes, min_samples)]
    for c in combos:
        if not 0 < c.percentile < 100 or c.min_cluster_size < 2 or c.min_samples < 1:
            raise HearsayError(f"bad region search value: percentile in (0, 100), min cluster size >= 2, min samples >= 1; got {c}")
    if not combos:
        raise HearsayError("the region search grid is empty")
    return combos


@dataclass
class TuningResult:
    best: RegionParams
    table: list[dict]  # one row per combination: params, score, mean area, clips with regions


def tune(probabilities, features: torch.Tensor, targets: torch.Tensor, relevance: np.ndarray, combos: list[RegionParams],
         seed: int, runs: int = RANDOM_RUNS, progress: bool = False) -> TuningResult:
    """The seed's grid search, scored on validation clips by how much more the regions matter than random ones.

    Score = mean over clips of (drop when the regions are removed - mean drop for
    equal-area random selections), divided by the mean share of the input the
    regions cover: without the division the score grows with area alone and the
    search would always pick the lowest percentile. Ties go to the smaller area.
    """
    from tqdm import tqdm

    bins = int(np.prod(features.shape[1:]))
    table = []
    for params in tqdm(combos, desc="region search", unit="combo", disable=not progress):
        _, masks, controls = regions_and_controls(relevance, params, seed, runs)
        f = faithfulness(probabilities, features, targets, masks, controls)
        gap = float((f.drop_regions - f.drop_random.mean(axis=1)).mean()) if len(f.prob) else 0.0
        share = float(f.area.mean()) / bins if len(f.prob) else 0.0
        table.append({**params.to_dict(), "score": gap / share if share > 0 else 0.0, "gap": gap, "mean_area": share * bins,
                      "clips_with_regions": int((f.area > 0).sum())})
    best = max(table, key=lambda r: (round(r["score"], 9), -r["mean_area"]))
    return TuningResult(RegionParams(best["percentile"], best["min_cluster_size"], best["min_samples"]), table)


def regions_and_controls(relevance: np.ndarray, params: RegionParams, seed: int, runs: int = RANDOM_RUNS):
    """Rectangles per clip, their masks [N, T, F] and random controls [N, runs, T, F]."""
    shape = relevance.shape[1:]
    rng = np.random.default_rng(seed)
    rects = [extract(rel, params) for rel in relevance]
    masks = np.stack([mask_of(r, shape) for r in rects]) if len(rects) else np.zeros((0, *shape), dtype=bool)
    controls = np.zeros((len(rects), runs, *shape), dtype=bool)
    for i, r in enumerate(rects):
        for k in range(runs):
            controls[i, k] = random_control(masks[i], rng)
    return rects, masks, controls
