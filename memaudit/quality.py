"""Generation quality beside memorization: Frechet distance, precision/recall, density/coverage.

A model that memorizes nothing may simply generate nothing useful; these figures, computed in each
feature space between the samples and the training set, give the memorization ratio its context.

Precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al. 2020) are computed
exactly by their definitions: every probe is compared with every reference point, in blocks of
rows (bounded memory). Distances come from a float32 matrix product on centred vectors; the few
comparisons that fall within its rounding bound of a ball's edge are redone by float64 differences,
so every count equals an exhaustive float64 computation, ties and duplicate points included.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from memaudit.storage import write_npz_atomic

PR_NEIGHBOURS = 3  # Kynkaanniemi et al. (2019) use k = 3
DC_NEIGHBOURS = 5  # Naeem et al. (2020) recommend k = 5 for density and coverage
RADII_VERSION = 1  # of the cached training radii: bump when their computation changes
MAX_POINTS = 50_000  # each side is subsampled (deterministically) beyond this; recorded in audit.json
_BLOCK_VALUES = 8_000_000  # float64 entries of one block of the distance matrix (64 MB)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two sets
    (Heusel et al. 2017, the FID formula, here in any feature space).

    Tr (S_a S_b)^1/2 is the sum of the square roots of the eigenvalues of S_a S_b, computed without
    a matrix square root: from the singular values of A B^T (A, B the centred, scaled point sets)
    when there are fewer points than dimensions, else from the symmetric S_a^1/2 S_b S_a^1/2.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    centred_a = (a - mu_a) / np.sqrt(max(len(a) - 1, 1))
    centred_b = (b - mu_b) / np.sqrt(max(len(b) - 1, 1))
    trace_a, trace_b = float((centred_a ** 2).sum()), float((centred_b ** 2).sum())
    if min(len(a), len(b)) < a.shape[1]:
        trace_root = float(np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum())
    else:
        values, vectors = np.linalg.eigh(centred_a.T @ centred_a)
        root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        product = root_a @ (centred_b.T @ centred_b) @ root_a
        trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh(product), 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + trace_a + trace_b - 2.0 * trace_root)


class _Distances:
    """Squared L2 distances between row blocks of two point sets, exact where a comparison needs it."""

    def __init__(self, a: np.ndarray, b: np.ndarray, centre: np.ndarray):
        self.a, self.b = a, b  # float64, as given: exact distances are differences of these
        # the product runs on centred float32 copies (small norms, twice float64's speed); its
        # error is bounded below
        a_c, b_c = a - centre, b - centre
        self.a_sq, self.b_sq = (a_c * a_c).sum(1), (b_c * b_c).sum(1)
        self.a32, self.b32 = a_c.astype(np.float32), b_c.astype(np.float32)
        self.rounding = (a.shape[1] + 4) * np.finfo(np.float32).eps

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate squared distances of rows start:stop of a to all of b, and a bound on their
        error: float32 inputs and sums of D products are off by at most (D + 2) eps32 |a| |b|."""
        scale = self.a_sq[start:stop, None] + self.b_sq[None, :]
        d2 = scale - 2.0 * (self.a32[start:stop] @ self.b32.T)
        np.maximum(d2, 0.0, out=d2)
        return d2, self.rounding * scale + 1e-300

    def exact(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        step = max(1, _BLOCK_VALUES // 2 // self.a.shape[1])
        for start in range(0, len(rows), step):
            diff = self.a[rows[start:start + step]] - self.b[cols[start:start + step]]
            out[start:start + step] = (diff * diff).sum(1)
        return out

    def compare(self, block: tuple, start: int, stop: int, radius_sq: np.ndarray, axis: int, strict: bool) -> np.ndarray:
        """(stop-start, len(b)) bool: d2 < or <= the radius of the column (axis=1) or row (axis=0)
        point, from ``block`` (rows start:stop); entries within the rounding bound of the radius are
        decided by direct differences."""
        d2, err = block
        r2 = radius_sq[None, :] if axis == 1 else radius_sq[start:stop, None]
        inside = d2 < r2 if strict else d2 <= r2
        unsure = np.abs(d2 - r2) <= err
        if unsure.any():
            rows, cols = np.nonzero(unsure)
            exact = self.exact(rows + start, cols)
            edge = r2[0, cols] if axis == 1 else r2[rows, 0]
            inside[rows, cols] = exact < edge if strict else exact <= edge
        return inside


def _rows_per_block(columns: int) -> int:
    return max(1, _BLOCK_VALUES // max(columns, 1))


def kth_neighbour_sq(points: np.ndarray, ks: list[int]) -> list[np.ndarray]:
    """For each k in ``ks``: the squared distance from each point to its k-th nearest other point
    (the (k+1)-th smallest distance counting the point itself, as the official codes take it;
    duplicates count)."""
    points = np.asarray(points, np.float64)
    pairs = _Distances(points, points, points.mean(0))
    out = [np.empty(len(points)) for _ in ks]
    step = _rows_per_block(len(points))
    for start in range(0, len(points), step):
        stop = min(start + step, len(points))
        d2, err = pairs.block(start, stop)
        rows = np.arange(stop - start)
        d2[rows, rows + start] = 0.0  # a point's distance to itself is exactly 0
        top = max(ks)
        upper = np.partition(d2 + err, top, axis=1)[:, top]  # the (top+1)-th exact value is at most this
        # redo exactly every distance that might be among the top+1 smallest of its row
        rows_i, cols = np.nonzero(d2 - err <= upper[:, None])
        exact = pairs.exact(rows_i + start, cols)
        exact[cols == rows_i + start] = 0.0
        order = np.lexsort((exact, rows_i))
        first = np.searchsorted(rows_i[order], rows)  # each row's entries, ascending
        for radii, k in zip(out, ks):
            radii[start:stop] = exact[order][first + k]
    return out


def training_radii(train: np.ndarray, ks: list[int], cache: Path | None = None) -> dict[int, np.ndarray]:
    """Squared k-th-neighbour radii of the training points for each k, from ``cache`` (a .npz
    whose name must cover the training features, the subset and ks) when it holds them, else
    computed (the N^2 part of the figures) and written there atomically."""
    if cache is not None and cache.exists():
        try:
            with np.load(cache) as stored:
                radii = {k: stored[f"k{k}"] for k in ks}
            if all(r.shape == (len(train),) for r in radii.values()):
                return radii
        except (OSError, KeyError, ValueError):
            pass  # unreadable or foreign: computed again and replaced
    radii = dict(zip(ks, kth_neighbour_sq(train, ks)))
    if cache is not None:
        write_npz_atomic(cache, **{f"k{k}": r for k, r in radii.items()})
    return radii


def manifold_metrics(train: np.ndarray, samples: np.ndarray, k: int = PR_NEIGHBOURS,
                     k_dc: int = DC_NEIGHBOURS, radii_cache: Path | None = None) -> dict:
    """Precision, recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020), exact.

    - precision: share of samples inside at least one training point's k-NN ball (``<=`` on the
      k-th-neighbour radius, k = 3, as in the official code);
    - recall: share of training points inside at least one sample's k-NN ball;
    - density: (1 / (k' M)) sum over samples of the number of training k'-NN balls holding it;
    - coverage: share of training points whose k'-NN ball holds at least one sample (k' = 5, strict
      ``<`` as in Naeem et al.'s official code, prdc).
    A side with no more than k (or k') points has no such balls: the figures are None.
    ``radii_cache``: where the training radii are kept between audits (see ``training_radii``).
    """
    train = np.asarray(train, np.float64)
    samples = np.asarray(samples, np.float64)
    result = {"precision": None, "recall": None, "density": None, "coverage": None}
    if len(samples) == 0 or len(train) == 0:
        return result
    pr = len(train) > k and len(samples) > k
    dc = len(train) > k_dc
    if not (pr or dc):
        return result
    wanted = [k] * pr + [k_dc] * dc
    train_radii = training_radii(train, wanted, radii_cache)  # one pass for both radii
    train_r3, train_r5 = train_radii.get(k), train_radii.get(k_dc)
    sample_r3 = kth_neighbour_sq(samples, [k])[0] if pr else None
    pairs = _Distances(samples, train, train.mean(0))
    precise = np.zeros(len(samples), bool)
    recalled = np.zeros(len(train), bool)
    covered = np.zeros(len(train), bool)
    density_count = 0
    step = _rows_per_block(len(train))
    for start in range(0, len(samples), step):
        stop = min(start + step, len(samples))
        block = pairs.block(start, stop)  # one product serves all four figures
        if pr:
            precise[start:stop] = pairs.compare(block, start, stop, train_r3, axis=1, strict=False).any(1)
            recalled |= pairs.compare(block, start, stop, sample_r3, axis=0, strict=False).any(0)
        if dc:
            inside = pairs.compare(block, start, stop, train_r5, axis=1, strict=True)
            density_count += int(inside.sum())
            covered |= inside.any(0)
    if pr:
        result.update(precision=float(precise.mean()), recall=float(recalled.mean()))
    if dc:
        result.update(density=density_count / (k_dc * len(samples)), coverage=float(covered.mean()))
    return result


def precision_recall(train: np.ndarray, samples: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), exact: see ``manifold_metrics``."""
    figures = manifold_metrics(train, samples, k=k)
    return figures["precision"], figures["recall"]


FAST_SEED = 0  # the seed of --quality fast's subsample of the training set (recorded in audit.json)


def _subsample(points: np.ndarray, cap: int = MAX_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """At most ``cap`` rows, a seeded random subset in row order (None: all rows), as float32."""
    if len(points) <= cap:
        return np.asarray(points, np.float32), None
    rows = np.sort(np.random.default_rng(seed).choice(len(points), cap, replace=False))
    return np.asarray(points[rows], np.float32), rows


def radii_cache_name(train_key: str, points: int = MAX_POINTS, seed: int = 0) -> str:
    """File name of the training radii of the features ``train_key`` identifies (their content
    and space), with everything else they depend on: the subset (its size cap and seed), k, k',
    this code. --quality fast and exact take different subsets, so their radii are kept apart."""
    text = f"{RADII_VERSION}|{train_key}|{points}|seed{seed}|{PR_NEIGHBOURS}|{DC_NEIGHBOURS}"
    return hashlib.sha256(text.encode()).hexdigest() + ".npz"


QUALITY_MODES = ("fast", "exact")


def quality(train_features: np.ndarray, sample_features: np.ndarray, radii: tuple[Path, str] | Path | None = None,
            mode: str = "exact") -> dict:
    """Frechet distance, precision/recall and density/coverage between samples and training set,
    JSON-ready.

    ``mode`` "exact" compares the samples with the whole training set (each side cut to
    ``MAX_POINTS`` rows, a seeded random subset, beyond that); "fast" with a seeded random subset
    of the training set as large as the sample set (``FAST_SEED``): Kynkaanniemi et al. (2019) and
    Naeem et al. (2020) compare equal-sized real and generated sets, and the training set's k-NN
    radii then cost O(n^2) in the number of samples instead of O(N^2) in the training set's size.
    ``points`` are the points used per side; ``reference`` what was taken of the training set;
    ``subsampled`` whether a side was cut and from how many. ``radii``: (folder, training features'
    key), where the training radii are kept between audits, in a file ``radii_cache_name`` names
    (a bare path: that file)."""
    if mode not in QUALITY_MODES:
        raise ValueError(f"quality mode {mode!r}: expected one of {', '.join(QUALITY_MODES)}")
    samples, _ = _subsample(sample_features)
    cap, seed = (min(len(samples), MAX_POINTS), FAST_SEED) if mode == "fast" else (MAX_POINTS, 0)
    train, rows = _subsample(train_features, cap, seed)
    cache = radii
    if isinstance(radii, tuple):
        cache = radii[0] / radii_cache_name(radii[1], cap, seed)
    figures = {"mode": mode, "frechet_distance": None, "precision": None, "recall": None, "density": None,
               "coverage": None, "k": PR_NEIGHBOURS, "k_density_coverage": DC_NEIGHBOURS,
               "points": [len(train), len(samples)],
               "reference": {"points": int(len(train)), "from": int(len(train_features)),
                             "seed": None if rows is None else seed},
               "subsampled": {"cap": int(cap), "train_from": int(len(train_features)),
                              "samples_from": int(len(sample_features)),
                              "applied": bool(rows is not None or len(sample_features) > MAX_POINTS)}}
    if len(train) < 2 or len(samples) < 2:
        return figures
    figures.update(manifold_metrics(train, samples, radii_cache=cache))
    figures["frechet_distance"] = frechet_distance(train, samples)
    return figures
