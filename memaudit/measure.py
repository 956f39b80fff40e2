"""One feature space of an audit: search, criteria, calibration against a holdout, quality.

For every space the samples' nearest training images are searched (L2, or inner product on
normalised features); each criterion that applies to the space gives per-sample verdicts; a holdout
set of unseen images from the same distribution, searched the same way, estimates each threshold's
false-positive rate; Frechet distance and precision/recall put the figures in context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memaudit import distributed, progress
from memaudit.criteria import CRITERIA, RELATIVE_NEIGHBOURS, Neighbours, Verdicts, wilson_interval
from memaudit.duplicates import duplicate_mask, radius
from memaudit.data import ImageSet
from memaudit.features import FeatureSpace
from memaudit.features.cache import cache_key, cache_root, features_of
from memaudit.quality import quality
from memaudit.search import Approximate, SearchInfo, knn, l2_from_cosine
from memaudit.selection import DEFAULT, DEFAULT_QUALITY, select

NEIGHBOURS = 8  # per sample in embedding spaces: enough for nn-ratio-dedup to skip duplicates
PIXEL_NEIGHBOURS = 16  # at least, per sample in pixel spaces (carlini-relative's n when larger)
HISTOGRAM_BINS = 20
QUALITY_MAX_DIMENSION = 2048  # Frechet distance costs O(d^3): beyond this, large pixel spaces are skipped


@dataclass
class SearchOptions:
    """How the training set is searched: ``index`` (auto, flat, ivf-pq, ivf, hnsw), the size up to
    which auto searches exactly, approximate indexes' build parameters (None: chosen from the set's
    size and dimension), their search setting (None: tuned to ``target_recall``)."""

    index: str = "auto"
    exact_limit: int = 2_000_000
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    nprobe: int | None = None
    ef: int | None = None
    target_recall: float = 0.99

    def approximate(self, vectors_key: str | None) -> Approximate:
        return Approximate(nlist=self.nlist, m=self.m, nbits=self.nbits,
                           setting=self.ef if self.index == "hnsw" else self.nprobe,
                           target_recall=self.target_recall, vectors_key=vectors_key)


@dataclass
class SpaceResult:
    name: str
    l2: np.ndarray  # (n, k) L2 distances, ascending (on normalised features in cosine spaces)
    indices: np.ndarray  # (n, k)
    verdicts: dict[str, Verdicts]
    summary: dict = field(default_factory=dict)  # audit.json's spaces[name]
    duplicates: np.ndarray | None = None  # (n, k) bool: candidate j is a near-duplicate of NN1


def _neighbours(space, queries, database, k, options: SearchOptions, approximate: Approximate,
                info: SearchInfo | None = None, shard: str = "auto"):
    scores, indices = knn(queries, database, k, metric=space.search_metric, index=options.index,
                          exact_limit=options.exact_limit, info=info, dtype=np.float64, approximate=approximate,
                          shard=shard)
    if space.search_metric == "ip":
        return l2_from_cosine(scores), indices, scores
    return scores, indices, None


def _verdicts(space, images, train_images, duplicates, l2, indices, similarities, thresholds, settings,
              native_pixels, names) -> dict[str, Verdicts]:
    """The criteria ``names`` (those ``selection.select`` chose in this space), at the user's or the
    space's threshold.

    A criterion scores each sample from its own row alone (its neighbours, its pixels), so in a
    distributed run each rank scores its row range and the ranks' scores are concatenated: only
    those small per-sample arrays travel, and a rank reads no other rank's pixels."""
    world = distributed.current()
    start, stop = world.row_range(len(l2))
    rows = slice(start, stop)
    neighbours = Neighbours(l2[rows], indices[rows], None if similarities is None else similarities[rows],
                            images[rows] if native_pixels else None, train_images if native_pixels else None,
                            None if duplicates is None else duplicates[rows], native_pixels=native_pixels)
    verdicts = {}
    for name, criterion in CRITERIA.items():
        if name in names and criterion.applies(neighbours):
            verdicts[name] = criterion.verdicts(neighbours, thresholds.get(name, space.thresholds.get(name)),
                                                settings.get(name))
    if not world.distributed:
        return verdicts
    return {name: dataclasses.replace(v, scores=world.concat_rows(v.scores), memorized=world.concat_rows(v.memorized),
                                      nn=world.concat_rows(v.nn)) for name, v in verdicts.items()}


def _duplicates(train_features, indices, limit, distances=None) -> np.ndarray:
    """``duplicate_mask`` of every sample, each rank its row range (a collective); ``distances``:
    the samples' L2 distances to their candidates in the same vectors, to skip the pairs they rule out."""
    world = distributed.current()
    start, stop = world.row_range(len(indices))
    return world.concat_rows(duplicate_mask(train_features, indices[start:stop], limit,
                                            None if distances is None else distances[start:stop]))


def histogram(scores: np.ndarray, criterion: str) -> dict:
    low, high = CRITERIA[criterion].score_range
    counts, edges = np.histogram(np.clip(scores, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def measure_space(space: FeatureSpace, images: np.ndarray, train: ImageSet, holdout: ImageSet | None,
                  thresholds: dict[str, float], options: SearchOptions, settings: dict | None = None,
                  scratch: Path | None = None, criteria=DEFAULT, quality_mode: str = DEFAULT_QUALITY,
                  requested: frozenset = frozenset()) -> SpaceResult:
    """Search, verdicts, calibration and quality of the samples in one feature space.

    ``thresholds`` are this space's user thresholds by criterion; ``settings`` criteria's other
    parameters (carlini-relative's alpha and n). ``criteria`` (``selection.parse_criteria``'s value)
    and ``requested`` (criteria the user set a parameter of) say which criteria are computed
    (``selection.select``); the others are listed in the summary's ``not_computed`` with why.
    ``quality_mode``: off, fast or exact (``quality.quality``). Its features, searches and quality
    show as one progress line named after the space.

    In a distributed run the samples are sharded: each rank extracts, searches and scores its row
    range of them (the samples' features go to a file in ``scratch``, a folder all ranks share, so
    no rank holds them all), and the per-sample results (neighbours, scores, verdicts) are gathered;
    quality is computed by rank 0 and sent to the others."""
    with progress.stage(f"space {space.name}"):
        return _measure_space(space, images, train, holdout, thresholds, options, settings, scratch, criteria,
                              quality_mode, requested)


def _measure_space(space, images, train, holdout, thresholds, options, settings, scratch, criteria, quality_mode,
                   requested) -> SpaceResult:
    world = distributed.current()
    native_pixels = space.raw_pixels
    settings = settings or {}
    chosen = select(criteria, space.name, images.shape[1:], holdout is not None, requested)
    train_features = features_of(space, train.images, train.fingerprint)
    sample_features = features_of(space, images, description="sample features", shared=scratch)
    shard = "queries" if world.distributed else "auto"  # each rank searches its own samples
    # one k-NN pass serves every criterion: k covers carlini-relative's n only when it is computed
    relative_n = settings.get("carlini-relative", {}).get("n", RELATIVE_NEIGHBOURS) \
        if "carlini-relative" in chosen.computed else 0
    k = min(len(train), max(PIXEL_NEIGHBOURS, relative_n) if native_pixels else NEIGHBOURS)
    limit = radius(space.metric, int(np.prod(train_features.shape[1:])))
    info = SearchInfo("", "", 0, "")
    # the training vectors' identity names a persisted approximate index (memaudit.indexes)
    vectors_key = cache_key(train.fingerprint, space) if train.fingerprint else None
    approximate = options.approximate(vectors_key)
    l2, indices, similarities = _neighbours(space, sample_features, train_features, k, options, approximate, info,
                                            shard)
    # nn-ratio-dedup reads the same candidates whatever else is computed (not carlini-relative's 50)
    candidates = min(k, PIXEL_NEIGHBOURS if native_pixels else NEIGHBOURS)
    duplicates = _duplicates(train_features, indices[:, :candidates], limit,
                             l2[:, :candidates] if space.search_metric == "l2" else None)
    verdicts = _verdicts(space, images, train.images, duplicates, l2, indices, similarities, thresholds, settings,
                         native_pixels, chosen.computed)

    criteria = {}
    for name, verdict in verdicts.items():
        criteria[name] = {**verdict.summary(), "memorized_when": "below" if CRITERIA[name].memorized_below else "above",
                          "histogram": histogram(verdict.scores, name), "calibrated": False, "fpr": None,
                          "fpr_ci95": None}
    summary = {"dimension": int(np.prod(sample_features.shape[1:])), "metric": space.metric, "digest": space.digest,
               "settings": space.settings, "criteria": criteria, "search": info.as_dict(),
               "duplicates": {"radius": limit, "samples_whose_nn1_is_duplicated": int(duplicates[:, 1:].any(axis=1).sum())},
               "not_computed": chosen.not_computed}

    if holdout is not None:
        held_features = features_of(space, holdout.images, holdout.fingerprint)
        if info.setting:  # the samples' tuned setting again: the holdout is searched the same way
            approximate.setting = next(iter(info.setting.values()))
            approximate.depth, approximate.measure = info.candidates, False
        h_l2, h_indices, h_sims = _neighbours(space, held_features, train_features, k, options, approximate)
        held = _verdicts(space, holdout.images, train.images,
                         _duplicates(train_features, h_indices[:, :candidates], limit,
                                     h_l2[:, :candidates] if space.search_metric == "l2" else None),
                         h_l2, h_indices, h_sims, thresholds, settings, native_pixels, chosen.computed)
        for name, verdict in held.items():
            flagged = int(verdict.memorized.sum())
            criteria[name].update(calibrated=True, fpr=flagged / len(holdout),
                                  fpr_ci95=list(wilson_interval(flagged, len(holdout))))
        upper = float(max(l2[:, 0].max(), h_l2[:, 0].max())) or 1.0
        edges = np.linspace(0.0, upper, HISTOGRAM_BINS + 1)
        summary["nn_distance_histogram"] = {"edges": [round(float(e), 6) for e in edges],
                                            "samples": np.histogram(l2[:, 0], edges)[0].tolist(),
                                            "holdout": np.histogram(h_l2[:, 0], edges)[0].tolist()}
    if quality_mode == "off":
        summary["quality"] = {"mode": "off", "skipped": "not computed (--quality off)"}
    elif summary["dimension"] <= QUALITY_MAX_DIMENSION:
        # on rank 0 alone, sent to the others; the training radii are kept in the cache, named by
        # the training features' identity (with the subset quality.quality takes of them)
        radii = (cache_root() / "quality", cache_key(train.fingerprint, space)) if train.fingerprint else None
        summary["quality"] = world.broadcast_json(quality(train_features, sample_features, radii, quality_mode)
                                                  if world.is_main else None)
    else:
        summary["quality"] = {"mode": quality_mode,
                              "skipped": f"dimension {summary['dimension']} is above {QUALITY_MAX_DIMENSION}; "
                                         "use an embedding space or pixel-N for quality figures"}
    return SpaceResult(space.name, l2, indices, verdicts, summary, duplicates)
