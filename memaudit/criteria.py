"""Memorization criteria: per-sample verdicts from one feature space's nearest neighbours.

Criteria register in ``CRITERIA`` by kebab-case name. Each reads what it needs from a
``Neighbours`` (distances, cosine similarities, the pixels themselves, duplicate groups) and
applies to a space only when that is there: ``cosine`` needs a cosine space, ``tiled-l2`` the
native pixel space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    nn: np.ndarray | None = None  # int64 (n,): the training row each score refers to
    settings: dict | None = None  # the criterion's parameters besides the threshold

    def summary(self) -> dict:
        """Count, share and 95% Wilson interval of memorized samples, JSON-ready."""
        n = int(len(self.memorized))
        count = int(self.memorized.sum())
        low, high = wilson_interval(count, n)
        summary = {
            "threshold": self.threshold,
            "memorized": count,
            "n": n,
            "fraction": count / n if n else 0.0,
            "ci95": [low, high],
        }
        if self.settings:
            summary["settings"] = dict(self.settings)
        return summary


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


PIXEL_RANGE = 255.0  # uint8 pixels read as [0, 1], as Carlini et al. (2023) measure distances


def carlini_l2_scores(distances: np.ndarray, dimension: int) -> np.ndarray:
    """Carlini et al. (2023) §4.2's l2(x, y) = sqrt(sum_i (x_i - y_i)^2 / d) on [0, 1] pixels, to
    the nearest training image (from uint8 L2 distances of d values)."""
    return np.asarray(distances[:, 0], np.float64) / (PIXEL_RANGE * np.sqrt(dimension))


def carlini_relative_scores(distances: np.ndarray, alpha: float = 0.5, n: int = 50) -> np.ndarray:
    """Carlini et al. (2023) §5.1's relative distance (their CIFAR-10 test):
    l2(x, NN1) / (alpha * mean of l2(x, y) over the n training images y nearest to x, NN1 among
    them). ``distances`` are each sample's ascending L2 distances to at least ``n`` training
    images (fewer when the training set is smaller: then all of it). A sample whose n nearest
    are all at distance 0 scores 0 (an exact copy)."""
    d = np.asarray(distances[:, :n], np.float64)
    denominator = alpha * d.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, d[:, 0] / np.where(denominator > 0, denominator, 1.0), 0.0)


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
    native_pixels: bool = False  # distances are L2 on the uint8 images themselves

    @property
    def pixel_values(self) -> int | None:
        """Values per image (H*W*C) in the native pixel space, else None."""
        return int(np.prod(self.samples.shape[1:])) if self.native_pixels and self.samples is not None else None


@dataclass(frozen=True)
class Regime:
    """Where a criterion's default threshold was set, and so where it may raise an alarm without
    being calibrated on held-out images (``memaudit.verdict``).

    ``set_for`` says it in words (completing "its threshold was set for ..."); ``min_side`` is the
    smallest image side inside it; ``spaces`` the feature-space families (``space_family``) it holds
    in, None for any. ``by_default`` False: no regime is known in which the default threshold
    leaves unseen images unflagged, so the criterion speaks only when calibrated (``measured``
    says what showed it)."""

    set_for: str
    min_side: int = 0
    spaces: tuple[str, ...] | None = None
    by_default: bool = True
    measured: str = ""

    def outside(self, image_shape, space: str) -> str | None:
        """None inside the regime, else the one sentence a reviewer reads on why the criterion is
        informational for these images (``image_shape``: H, W, C of the samples)."""
        if not self.by_default:
            return f"its threshold was set for {self.set_for}; {self.measured}"
        if self.spaces is not None and space_family(space) not in self.spaces:
            return f"its threshold was set for {self.set_for}, not for the {space} space"
        side = min(int(image_shape[0]), int(image_shape[1]))
        if side < self.min_side:
            return (f"its threshold was set for {self.set_for}; these are {image_shape[0]}x{image_shape[1]} images, "
                    "on which unseen images fall under it too")
        return None


ANY_IMAGES = Regime("any images and spaces: a ratio of two distances does not depend on their scale (Gu et al. 2023)")
CARLINI_SD = Regime("Stable Diffusion's 512x512 samples (Carlini et al. 2023 §4.2), at least 256 pixels a side",
                    min_side=256)


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: how it scores, which side of its threshold is memorized, where it
    applies (``where``: "any" space, "cosine" spaces, or the "native-pixel" space), the valid
    range of its threshold, and its settings besides the threshold (with their defaults)."""

    name: str
    default_threshold: float
    memorized_below: bool  # memorized when the score is below the threshold (else above it)
    score_range: tuple[float, float]  # for histograms
    needs: tuple[str, ...]  # Neighbours fields that must be present
    score: Callable[[Neighbours, dict], tuple[np.ndarray, np.ndarray]]  # -> scores, training row per score
    description: str
    where: str = "any"
    threshold_range: tuple[float, float, bool] = (0.0, 1.0, False)  # low, high, low inclusive
    defaults: dict = field(default_factory=dict)
    regime: Regime = ANY_IMAGES  # where the default threshold may speak uncalibrated
    # what computing it costs beyond the audit's one k-NN pass ("": nothing, it is read from the pass);
    # such a criterion is computed by default only where it could speak (``memaudit.selection``)
    extra_cost: str = ""

    def applies(self, neighbours: Neighbours) -> bool:
        if self.where == "native-pixel" and not neighbours.native_pixels:
            return False
        return all(getattr(neighbours, f) is not None for f in self.needs)

    def check_threshold(self, value: float, label: str) -> float:
        """The threshold, or ``InputError`` starting with ``label`` (the input) and giving the valid range."""
        low, high, low_inclusive = self.threshold_range
        inside = math.isfinite(value) and (value >= low if low_inclusive else value > low) and value <= high
        if not inside:
            bracket = "[" if low_inclusive else "("
            raise InputError(f"{label}: the {self.name} threshold must be a finite number in "
                             f"{bracket}{low:g}, {high:g}]")
        return float(value)

    def verdicts(self, neighbours: Neighbours, threshold: float | None = None, settings: dict | None = None) -> Verdicts:
        threshold = self.default_threshold if threshold is None else threshold
        settings = {**self.defaults, **(settings or {})}
        scores, nn = self.score(neighbours, settings)
        scores = np.asarray(scores, dtype=np.float64)
        memorized = scores < threshold if self.memorized_below else scores > threshold
        return Verdicts(self.name, threshold, scores, memorized, np.asarray(nn, np.int64), settings or None)


def _tiled(nb: Neighbours, settings: dict):
    from memaudit.tiled import nearest_tiled_l2

    return nearest_tiled_l2(nb.samples, nb.train_images, nb.indices, nb.distances)


def _relative(nb: Neighbours, settings: dict):
    return carlini_relative_scores(nb.distances, settings["alpha"], settings["n"]), nb.indices[:, 0]


RELATIVE_NEIGHBOURS = 50  # Carlini et al. (2023) §5.1: n = 50 nearest training images
CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("nn-ratio", 1.0 / 3.0, True, (0.0, 1.0), ("distances",),
              lambda nb, _: (nn_ratio_scores(nb.distances[:, :2]), nb.indices[:, 0]),
              "d(x, NN1) / d(x, NN2) below the threshold (Gu et al. 2023)"),
    Criterion("nn-ratio-dedup", 1.0 / 3.0, True, (0.0, 1.0), ("distances", "duplicates"),
              lambda nb, _: (nn_ratio_dedup_scores(nb.distances[:, :nb.duplicates.shape[1]], nb.duplicates),
                             nb.indices[:, 0]),
              "nn-ratio with NN2 the nearest training image that is not a near-duplicate of NN1",
              regime=Regime("the paper's criterion, not this variant (memaudit's own, with the paper's 1/3)",
                            by_default=False, measured="unseen photo tiles whose nearest training tiles are "
                            "near-duplicates of each other fall under it (2.7% of held-out tiles)")),
    Criterion("cosine", 0.5, False, (-1.0, 1.0), ("similarities",),
              lambda nb, _: (nb.similarities[:, 0], nb.indices[:, 0]),
              "cosine similarity to NN1 above the threshold (Somepalli et al. 2023; 0.5 for SSCD)",
              where="cosine", threshold_range=(-1.0, 1.0, True),
              regime=Regime("SSCD copy-detection embeddings (Somepalli et al. 2023)", spaces=("sscd",))),
    Criterion("carlini-l2", 0.15, True, (0.0, 1.0), ("distances", "samples"),
              lambda nb, _: (carlini_l2_scores(nb.distances, nb.pixel_values), nb.indices[:, 0]),
              "RMS distance in [0, 1] pixels to the nearest training image below the threshold "
              "(Carlini et al. 2023 §4.2; 0.15 as for Stable Diffusion)", where="native-pixel", regime=CARLINI_SD),
    Criterion("carlini-relative", 1.0, True, (0.0, 4.0), ("distances", "samples"), _relative,
              "l2(x, NN1) / (alpha * mean l2 to the n nearest training images) below the threshold "
              "(Carlini et al. 2023 §5.1, CIFAR-10: alpha 0.5, n 50)", where="native-pixel",
              threshold_range=(0.0, math.inf, False), defaults={"alpha": 0.5, "n": RELATIVE_NEIGHBOURS},
              extra_cost=f"its n = {RELATIVE_NEIGHBOURS} nearest training images (a k-NN search for {RELATIVE_NEIGHBOURS} "
                         "neighbours instead of 16)",
              regime=Regime("CIFAR-10 models (Carlini et al. 2023 §5.1)", by_default=False,
                            measured="unseen images fall under it too (38-45% of held-out 32x32 photo tiles, "
                            "8-21% of held-out digits)")),
    Criterion("tiled-l2", 0.15, True, (0.0, 1.0), ("samples", "train_images"), _tiled,
              "largest per-tile RMS distance (4x4 tiles, [0, 1] pixels) to the nearest training image under "
              "it, over the whole training set, below the threshold (Carlini et al. 2023's tiled distance, "
              "which they apply between generations; memaudit applies it against the training set)",
              where="native-pixel", regime=CARLINI_SD,
              extra_cost="a tiled comparison of the samples against the whole training set"),
)}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise InputError(f"criterion {name!r}: unknown; valid criteria are {', '.join(sorted(CRITERIA))}") from None


def parse_thresholds(values: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` and ``SPACE/NAME=VALUE`` settings (``--criterion-threshold``) as
    {"NAME": threshold} (every space) and {"SPACE/NAME": threshold} (one space, named as --space
    names it). Unknown criteria and non-finite or out-of-range values raise ``InputError``."""
    thresholds = {}
    for value in values:
        key, sep, number = value.partition("=")
        space, slash, name = key.strip().rpartition("/")
        try:
            if not sep or (slash and not space):
                raise ValueError
            number = float(number)
        except ValueError:
            raise InputError(f"--criterion-threshold {value}: expected NAME=NUMBER or SPACE/NAME=NUMBER with NAME one "
                             f"of {', '.join(sorted(CRITERIA))}") from None
        try:
            criterion = get_criterion(name.strip())
        except InputError as error:
            raise InputError(f"--criterion-threshold {value}: {error}") from None
        criterion.check_threshold(number, f"--criterion-threshold {value}")
        thresholds[f"{space.strip()}/{criterion.name}" if slash else criterion.name] = number
    return thresholds


def space_family(space: str) -> str:
    """The family of a --space value: pixel (pixel, pixel-N), clip, dinov2, sscd."""
    return "pixel" if space == "pixel" or space.startswith("pixel-") else space.partition(":")[0]


def space_kind(space: str) -> str:
    """Where a --space value sits for ``Criterion.where``: native-pixel, pixel (resized) or cosine."""
    if space == "pixel":
        return "native-pixel"
    return "pixel" if space.startswith("pixel-") else "cosine"


def applies_in(criterion: Criterion, space: str) -> bool:
    """Whether ``criterion`` can score samples in the space a --space value names."""
    kind = space_kind(space)
    return criterion.where == "any" or criterion.where == kind


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
