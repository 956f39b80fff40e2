"""Memorization criteria: per-sample verdicts from nearest-neighbour distances, and their share.

Criteria register in ``CRITERIA`` by kebab-case name. Each takes the (n, k) sorted neighbour
distances of the samples in one feature space and returns a per-sample score and verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from memaudit.errors import InputError

WILSON_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Verdicts:
    """Per-sample scores and memorized flags under one criterion."""

    criterion: str
    threshold: float
    scores: np.ndarray  # float64 (n,)
    memorized: np.ndarray  # bool (n,)

    def summary(self) -> dict:
        """Count, share and 95% Wilson interval of memorized samples, JSON-ready."""
        n = int(len(self.memorized))
        count = int(self.memorized.sum())
        low, high = wilson_interval(count, n)
        return {
            "threshold": self.threshold,
            "memorized": count,
            "n": n,
            "fraction": count / n if n else 0.0,
            "ci95": [low, high],
        }


def nn_ratio_scores(distances: np.ndarray) -> np.ndarray:
    """d1/d2 of each row of sorted neighbour distances (Gu et al. 2023, after Yoon et al. 2023).

    When both nearest training images are at distance 0 (the sample copies an image that the
    training set holds twice) the ratio is 0/0; it is taken as 1, equidistant neighbours, which
    is what the paper's criterion makes of it: not memorized.
    """
    if distances.ndim != 2 or distances.shape[1] < 2:
        raise InputError("distances: the nn-ratio criterion needs the two nearest neighbours of each sample (k >= 2)")
    d1 = distances[:, 0].astype(np.float64)
    d2 = distances[:, 1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 1.0)


def nn_ratio(distances: np.ndarray, threshold: float = 1.0 / 3.0) -> Verdicts:
    """The paper's criterion: a sample is memorized when d(x, NN1) / d(x, NN2) < threshold (strict)."""
    scores = nn_ratio_scores(distances)
    return Verdicts("nn-ratio", threshold, scores, scores < threshold)


def cosine(similarities: np.ndarray, threshold: float = 0.5) -> Verdicts:
    """Replication by copy-detection similarity (Somepalli et al. 2023): memorized when the
    cosine similarity to the nearest training image exceeds ``threshold`` (0.5 for SSCD)."""
    scores = similarities[:, 0].astype(np.float64)
    return Verdicts("cosine", threshold, scores, scores > threshold)


def tiled_l2_scores(samples: np.ndarray, train_images: np.ndarray, candidates: np.ndarray, grid: int = 4) -> np.ndarray:
    """Carlini et al. (2023)'s tiled L2: images in [0, 1] cut into grid x grid tiles; the distance
    to a training image is the largest per-tile RMS difference; a sample's score is the smallest
    such distance over its candidate training images (its nearest pixel-space neighbours)."""
    height, width = samples.shape[1:3]
    if height < grid or width < grid:
        raise InputError(f"tiled-l2: images of {height}x{width} cannot be cut into {grid}x{grid} tiles")
    rows = np.array_split(np.arange(height), grid)
    cols = np.array_split(np.arange(width), grid)
    scores = np.empty(len(samples))
    for i, sample in enumerate(samples):
        x = sample.astype(np.float64) / 255.0
        ys = np.asarray(train_images[np.sort(candidates[i])], dtype=np.float64) / 255.0
        worst = np.zeros(len(ys))
        for r in rows:
            for c in cols:
                diff = ys[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1, :] - x[r[0]:r[-1] + 1, c[0]:c[-1] + 1, :]
                worst = np.maximum(worst, np.sqrt((diff * diff).reshape(len(ys), -1).mean(axis=1)))
        scores[i] = worst.min()
    return scores


def tiled_l2(samples: np.ndarray, train_images: np.ndarray, candidates: np.ndarray, threshold: float = 0.15) -> Verdicts:
    """Memorized when the tiled L2 distance to the nearest candidate is below ``threshold``."""
    scores = tiled_l2_scores(samples, train_images, candidates)
    return Verdicts("tiled-l2", threshold, scores, scores < threshold)


CRITERIA: dict[str, Callable[..., Verdicts]] = {"nn-ratio": nn_ratio, "cosine": cosine, "tiled-l2": tiled_l2}
DEFAULT_THRESHOLDS = {"nn-ratio": 1.0 / 3.0, "cosine": 0.5, "tiled-l2": 0.15}


def get_criterion(name: str) -> Callable[..., Verdicts]:
    try:
        return CRITERIA[name]
    except KeyError:
        raise InputError(f"criterion {name!r}: unknown; valid criteria are {', '.join(sorted(CRITERIA))}") from None


def wilson_interval(successes: int, n: int, z: float = WILSON_Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% with the default z)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)
