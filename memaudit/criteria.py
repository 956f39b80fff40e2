"""Memorization criteria: per-sample verdicts from one feature space's nearest neighbours.

Criteria register in ``CRITERIA`` by kebab-case name. Each reads what it needs from a
``Neighbours`` (distances, cosine similarities, the pixels themselves, duplicate groups) and
applies to a space only when that is there: ``cosine`` needs a cosine space, ``tiled-l2`` the
native pixel space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from memaudit.errors import InputError
from memaudit.storage import image_digests

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


def first_copies(images: np.ndarray) -> np.ndarray:
    """For each image, the index of the first image with identical bytes (itself if unique)."""
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(digest, i) for i, digest in enumerate(image_digests(images))], dtype=np.int64)


def nn_ratio_dedup_scores(distances: np.ndarray, duplicates: np.ndarray) -> np.ndarray:
    """d1/d2 with NN2 the nearest training image that is not a (near-)duplicate of NN1.

    A training set holding an image twice makes the plain ratio 0/0 (or near it) for a copy of
    it; here the second neighbour skips NN1's duplicates (``duplicates``: (n, k) bool, True where
    candidate j duplicates NN1). When all k candidates found are duplicates, d2 is taken as the
    k-th distance, a lower bound: the ratio can only be overstated (not memorized).
    """
    differs = ~duplicates
    differs[:, -1] = True  # fallback: the farthest neighbour found
    column = differs.argmax(axis=1)
    second = distances[np.arange(len(distances)), column]
    return nn_ratio_scores(np.stack([distances[:, 0], second], axis=1))


@dataclass(frozen=True)
class Neighbours:
    """What the criteria see of one feature space's search for n samples."""

    distances: np.ndarray  # (n, k) L2 distances, ascending (on unit vectors in cosine spaces)
    indices: np.ndarray  # (n, k) training rows
    similarities: np.ndarray | None = None  # (n, k) cosine similarities, in cosine spaces
    samples: np.ndarray | None = None  # uint8 NHWC samples, in the native pixel space
    train_images: np.ndarray | None = None  # uint8 NHWC training images, with samples
    duplicates: np.ndarray | None = None  # (n, k) bool: candidate j is a (near-)duplicate of NN1


@dataclass(frozen=True)
class Criterion:
    name: str
    default_threshold: float
    memorized_below: bool  # memorized when the score is below the threshold (else above it)
    score_range: tuple[float, float]  # for histograms
    needs: tuple[str, ...]  # Neighbours fields that must be present
    score: Callable[[Neighbours], np.ndarray]
    description: str

    def applies(self, neighbours: Neighbours) -> bool:
        return all(getattr(neighbours, field) is not None for field in self.needs)

    def verdicts(self, neighbours: Neighbours, threshold: float | None = None) -> Verdicts:
        threshold = self.default_threshold if threshold is None else threshold
        scores = np.asarray(self.score(neighbours), dtype=np.float64)
        memorized = scores < threshold if self.memorized_below else scores > threshold
        return Verdicts(self.name, threshold, scores, memorized)


TILED_L2_CANDIDATES = 16  # nearest pixel-space neighbours among which tiled-l2 takes its minimum

CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("nn-ratio", 1.0 / 3.0, True, (0.0, 1.0), ("distances",),
              lambda nb: nn_ratio_scores(nb.distances[:, :2]),
              "d(x, NN1) / d(x, NN2) below the threshold (Gu et al. 2023)"),
    Criterion("nn-ratio-dedup", 1.0 / 3.0, True, (0.0, 1.0), ("distances", "duplicates"),
              lambda nb: nn_ratio_dedup_scores(nb.distances, nb.duplicates),
              "nn-ratio with NN2 the nearest training image that is not a near-duplicate of NN1"),
    Criterion("cosine", 0.5, False, (-1.0, 1.0), ("similarities",),
              lambda nb: nb.similarities[:, 0],
              "cosine similarity to NN1 above the threshold (Somepalli et al. 2023; 0.5 for SSCD)"),
    Criterion("tiled-l2", 0.15, True, (0.0, 1.0), ("samples", "train_images"),
              lambda nb: tiled_l2_scores(nb.samples, nb.train_images, nb.indices[:, :TILED_L2_CANDIDATES]),
              "largest per-tile RMS distance of 4x4 tiles in [0, 1] below the threshold (Carlini et al. 2023)"),
)}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise InputError(f"criterion {name!r}: unknown; valid criteria are {', '.join(sorted(CRITERIA))}") from None


def parse_thresholds(values: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` settings (``--criterion-threshold``) as {criterion: threshold}."""
    thresholds = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            if not sep:
                raise ValueError
            thresholds[get_criterion(name.strip()).name] = float(number)
        except ValueError:
            raise InputError(f"--criterion-threshold {value}: expected NAME=NUMBER with NAME one of "
                             f"{', '.join(sorted(CRITERIA))}") from None
        except InputError as error:
            raise InputError(f"--criterion-threshold {value}: {error}") from None
    return thresholds


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
