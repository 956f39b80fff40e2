"""Duplicates inside a training set: exact (identical bytes) and near (within a radius in a space).

A near-duplicate of a training image is another training image within ``radius`` of it in the
feature space's own distance. Pixel spaces state the radius as an RMS difference of [0, 1] pixel
values (``DEFAULT_PIXEL_RMS``: about 5 grey levels); cosine spaces as a cosine similarity
(``DEFAULT_COSINE``). ``duplicate_mask`` serves the duplicate-aware nn-ratio (which of a sample's
candidates copy its NN1); ``find_duplicates`` serves ``memaudit dedup`` (clusters of the set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memaudit.criteria import first_copies
from memaudit.errors import InputError
from memaudit.search import knn, l2_from_cosine

DEFAULT_PIXEL_RMS = 0.02
DEFAULT_COSINE = 0.98
NEIGHBOURS = 16  # candidates per image when clustering a set


def applied_threshold(metric: str, threshold: float | None = None) -> float:
    """The near-duplicate limit in force: ``threshold``, or the space's default when it is None
    (an RMS pixel difference for L2 spaces, a cosine similarity otherwise)."""
    if threshold is None:
        return DEFAULT_PIXEL_RMS if metric == "l2" else DEFAULT_COSINE
    low, what = (0.0, "an RMS pixel difference") if metric == "l2" else (-1.0, "a cosine similarity")
    if not (math.isfinite(threshold) and low <= threshold <= 1.0):  # -1 or 2 would mean nothing, or everything
        raise InputError(f"--threshold {threshold}: in this space the near-duplicate limit is {what}, a number in "
                         f"[{low:g}, 1] (default {DEFAULT_PIXEL_RMS if metric == 'l2' else DEFAULT_COSINE})")
    return float(threshold)


def radius(metric: str, dimension: int, threshold: float | None = None) -> float:
    """The L2 radius (on the space's own vectors) of a pixel RMS or a cosine threshold."""
    if metric == "l2":
        return applied_threshold(metric, threshold) * 255.0 * np.sqrt(dimension)
    return float(l2_from_cosine(applied_threshold(metric, threshold)))


MASK_BLOCK_VALUES = 8_000_000  # float64 values of training rows held at once by duplicate_mask (64 MB)


def duplicate_mask(train_features: np.ndarray, indices: np.ndarray, limit: float,
                   distances: np.ndarray | None = None) -> np.ndarray:
    """(n, k) bool: candidate j of sample i lies within ``limit`` of the sample's NN1 (column 0
    is NN1 itself, so always True). Samples are taken in blocks, so the training rows read at once
    stay bounded whatever the number of samples and the rows' size.

    ``distances`` (n, k), when given, are the samples' exact L2 distances to these candidates in
    the same vectors: by the triangle inequality a candidate farther from the sample than NN1 is
    by more than ``limit`` cannot be within ``limit`` of NN1, so only the others are compared."""
    mask = np.ones(indices.shape, dtype=bool)
    if indices.shape[1] < 2:
        return mask
    possible = np.ones(indices.shape, dtype=bool)
    if distances is not None:
        gap = np.asarray(distances, np.float64) - np.asarray(distances, np.float64)[:, :1]
        possible = gap <= limit * (1 + 1e-9) + 1e-9  # a margin for the distances' rounding
    mask[:, 1:] = False
    dimension = int(np.prod(train_features.shape[1:]))
    step = max(1, MASK_BLOCK_VALUES // max(1, 2 * dimension))
    rows, columns = np.nonzero(possible[:, 1:])
    columns += 1
    for start in range(0, len(rows), step):
        r, c = rows[start:start + step], columns[start:start + step]
        nearest = np.asarray(train_features[indices[r, 0]], dtype=np.float64)
        other = np.asarray(train_features[indices[r, c]], dtype=np.float64)
        mask[r, c] = np.sqrt(((other - nearest) ** 2).sum(axis=1)) <= limit
    return mask


@dataclass
class DuplicateReport:
    clusters: list[list[int]]  # training indices, each cluster sorted, clusters by first index
    exact: list[bool]  # all members byte-identical
    radius: float

    def as_dict(self, ids: list[str]) -> dict:
        return {"radius": self.radius, "clusters": [
            {"size": len(members), "exact": exact, "indices": members, "ids": [ids[i] for i in members]}
            for members, exact in zip(self.clusters, self.exact)],
            "duplicated_images": int(sum(len(c) for c in self.clusters)),
            "redundant_images": int(sum(len(c) - 1 for c in self.clusters))}


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def find_duplicates(images: np.ndarray, features: np.ndarray, metric: str, limit: float) -> DuplicateReport:
    """Clusters of exact and near-duplicate images (union of pairs within ``limit``)."""
    n = len(images)
    parent = np.arange(n)
    copies = first_copies(images)  # hashes every image once: exact clusters and the "exact" flag
    for i, j in enumerate(copies):  # exact copies, whatever the radius
        parent[_find(parent, i)] = _find(parent, int(j))
    if n > 1:
        k = min(n, NEIGHBOURS)
        scores, indices = knn(features, features, k, metric="l2" if metric == "l2" else "ip")
        distances = scores if metric == "l2" else l2_from_cosine(scores)
        for i, j in zip(*np.nonzero(distances <= limit)):
            a, b = _find(parent, i), _find(parent, int(indices[i, j]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([_find(parent, i) for i in range(n)])
    clusters, exact = [], []
    for root in np.unique(roots):
        members = np.flatnonzero(roots == root).tolist()
        if len(members) > 1:
            clusters.append(members)
            exact.append(bool(len(set(copies[members].tolist())) == 1))
    return DuplicateReport(clusters, exact, float(limit))
