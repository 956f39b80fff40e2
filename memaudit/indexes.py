"""Approximate nearest-neighbour indexes (faiss), built once and kept in ``$MEMAUDIT_CACHE``.

An index over a training set's vectors in one space is stored under a key that covers everything
its content depends on: the vectors' identity (the feature cache key: set fingerprint, space name,
encoder weights and preprocessing, feature format), the metric, the index kind and its parameters,
the faiss version and this module's format version. Change any of them and the index is built
again; otherwise every audit loads it (``built: false`` in audit.json). Files are published
atomically (written under a temporary name of this writer's own, then renamed), so a reader sees a
whole index or none, and two builders of one key write the same thing.

Kinds (``INDEX_KINDS``), all proposing candidates that ``memaudit.search`` re-scores exactly from
the (memory-mapped) vectors:

- ``ivf-pq``: inverted file over product-quantised residuals (Jegou et al. 2011, "Product
  quantization for nearest neighbor search"; 4-bit codes in faiss's fast-scan layout, Andre et al.
  2015): ``m * nbits / 8`` bytes per vector, so the index resident in memory is a small fraction
  of the float32 vectors (10M x 256: ~0.7 GB with ids, against 10 GB).
- ``ivf``: inverted file with the float32 vectors themselves (as large as the database).
- ``hnsw``: HNSW graph over the float32 vectors (Malkov & Yashunin 2018; as large as the database
  plus the graph).

Default parameters come from the set's size and dimension (``default_params``, README "Search").
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from memaudit import distributed, progress, tuning
from memaudit.errors import InputError
from memaudit.storage import (STALE_AFTER_S, cache_root, gather_rows, release_mapped_pages, remove_stale_temporaries,
                              write_file_atomic)

FORMAT_VERSION = 1
TRAINING_POINTS_PER_LIST = 64  # k-means training sample: 64 points per inverted list (faiss warns below 39)
MIN_POINTS_PER_LIST = 39  # faiss's own minimum per centroid
FAST_SCAN_BITS = 4  # faiss's IVFPQFastScan: 4-bit codes compared 32 at a time in SIMD registers
KMEANS_ITERATIONS = 10  # coarse k-means (faiss's default is 25; lists need not be optimal, only balanced)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


@dataclass(frozen=True)
class IndexParams:
    """An index's kind and build parameters (search-time ``nprobe``/``ef`` are not part of it)."""

    kind: str  # one of INDEX_KINDS
    nlist: int | None = None  # inverted lists (ivf, ivf-pq)
    m: int | None = None  # ivf-pq: sub-quantizers (bytes per vector at 8 bits); hnsw: graph degree
    nbits: int | None = None  # ivf-pq: bits per sub-quantizer code

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _power_of_two_below(value: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(1.0, value))))


def default_params(kind: str, n: int, dim: int, nlist: int | None = None, m: int | None = None,
                   nbits: int | None = None) -> IndexParams:
    """Parameters for ``n`` vectors of ``dim`` values, any given one kept (and checked).

    - ``nlist``: the largest power of two at most sqrt(n) (faiss's guidance is 4-16 sqrt(n) for the
      best search speed, but the build, which costs n x nlist x dim, dominates an audit, and
      fast-scan codes make the longer lists cheap to scan), at most n / 39 so that k-means has 39
      training points per list.
    - ivf-pq ``nbits``: 4, scanned by faiss's SIMD fast-scan kernels (on 200,000 x 256 clustered
      vectors, 7x faster than 8-bit codes of the same size, at the same recall once re-ranked twice
      as deep); fewer when n is too small to train 16 centroids per sub-quantizer. ``m``: the
      largest divisor of ``dim`` at most dim / 2 and 128 (sub-vectors of 2 or more values, at most
      64 bytes a vector: a sixteenth of float32 at 256 dimensions; with 32 bytes the PQ ranking
      missed 1% of true NN2s even 160 candidates deep on clustered data). With ``--nbits 8``: at
      most dim / 4 and 64.
    - hnsw ``m``: 32 neighbours per node (efConstruction 80).
    """
    if kind not in INDEX_KINDS:
        raise InputError(f"--index {kind}: expected one of {', '.join(INDEX_KINDS)}")
    if kind == "hnsw":
        for name, value in (("--nlist", nlist), ("--nbits", nbits)):
            if value is not None:
                raise InputError(f"{name} {value}: applies to ivf and ivf-pq indexes, not hnsw")
        return IndexParams("hnsw", m=_positive("--m", m if m is not None else HNSW_M))
    most_lists = max(1, n // MIN_POINTS_PER_LIST)
    nlist = _positive("--nlist", nlist) if nlist is not None else min(most_lists, _power_of_two_below(math.sqrt(n)))
    if nlist > max(1, n):
        raise InputError(f"--nlist {nlist}: more inverted lists than the {n} vectors indexed; use at most {n}")
    if kind == "ivf":
        for name, value in (("--m", m), ("--nbits", nbits)):
            if value is not None:
                raise InputError(f"{name} {value}: applies to ivf-pq (and --m to hnsw), not ivf")
        return IndexParams("ivf", nlist=nlist)
    if nbits is None:  # 4-bit codes are scanned by faiss's SIMD fast-scan kernels, ~7x faster than 8-bit ones
        nbits = FAST_SCAN_BITS if n >= MIN_POINTS_PER_LIST << FAST_SCAN_BITS else int(
            max(1, math.floor(math.log2(max(2, n // MIN_POINTS_PER_LIST)))))
    elif not 1 <= nbits <= 16:
        raise InputError(f"--nbits {nbits}: bits per PQ code must be from 1 to 16 (4 is scanned fastest, 8 is usual)")
    if m is None:  # sub-vectors of 2+ values at 4 bits (4+ at 8 bits), at most 64 bytes a vector
        values = 2 if nbits <= FAST_SCAN_BITS else 4
        most = max(1, min(512 // nbits, dim // values))
        m = max(d for d in range(1, most + 1) if dim % d == 0)
    elif m < 1 or dim % m:
        raise InputError(f"--m {m}: the number of PQ sub-quantizers must divide the dimension {dim}")
    return IndexParams("ivf-pq", nlist=nlist, m=m, nbits=nbits)


def _positive(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} {value}: must be a positive integer")
    return int(value)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("faiss is not installed; install memaudit with the 'cpu' extra (faiss-cpu) or the 'gpu' "
                         "extra (faiss-gpu)") from None
    return faiss


def faiss_version() -> str:
    return getattr(_faiss(), "__version__", "unknown")


def index_key(vectors_key: str, metric: str, params: IndexParams, dim: int, n: int) -> str:
    """The cache key of an index: what identifies the vectors, their shape, the metric, the index
    parameters, faiss's version and this format's."""
    text = "|".join([str(FORMAT_VERSION), vectors_key, f"{n}x{dim}", metric, params.kind,
                     ",".join(f"{k}={v}" for k, v in sorted(params.as_dict().items())), faiss_version()])
    return hashlib.sha256(text.encode()).hexdigest()


def index_root(root: Path | None = None) -> Path:
    return (root or cache_root()) / "indexes"


def index_path(key: str, root: Path | None = None) -> Path:
    return index_root(root) / f"{key}.faiss"


# --- building -------------------------------------------------------------------------------------


def _rows_f32(database, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(database[start:stop], dtype=np.float32)


def _training_sample(database, rows: int) -> np.ndarray:
    """``rows`` database rows drawn without replacement (seed 0), read in increasing order."""
    n = len(database)
    chosen = np.sort(np.random.default_rng(0).choice(n, min(n, rows), replace=False))
    return np.ascontiguousarray(gather_rows(database, chosen), dtype=np.float32)


def _ivf(faiss, params: IndexParams, dim: int, metric: int, quantized: bool):
    quantizer = faiss.IndexFlatL2(dim) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(dim)
    if quantized and params.nbits == FAST_SCAN_BITS and params.m % 2 == 0:
        index = faiss.IndexIVFPQFastScan(quantizer, dim, params.nlist, params.m, params.nbits, metric)
    elif quantized:
        index = faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.m, params.nbits, metric)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, metric)
    return index  # faiss's Python constructors keep a reference to the quantizer


def _build_ivf(database, params: IndexParams, metric: int, quantized: bool):
    faiss = _faiss()
    index = _ivf(faiss, params, database.shape[1], metric, quantized)
    index.cp.niter = KMEANS_ITERATIONS
    points = TRAINING_POINTS_PER_LIST * params.nlist
    if quantized:
        points = max(points, 64 << params.nbits)  # and enough for the PQ codebooks
    sample = _training_sample(database, points)
    _quiet_clustering(index, len(sample), params, quantized)
    index.train(sample)
    return index


FAISS_MIN_POINTS_PER_CENTROID = 39  # below this faiss prints a warning per k-means it runs


def _quiet_clustering(index, points: int, params: IndexParams, quantized: bool) -> None:
    """faiss prints one line per k-means trained on fewer than 39 points per centroid (the coarse
    quantizer, then each of the m PQ sub-quantizers: 32 lines for --m 32), to stderr, past
    --quiet. Say it once instead, as memaudit's warning, and turn faiss's lines off (the setting
    only governs that warning; the k-means are the same)."""
    centroids = max(params.nlist, (1 << params.nbits) if quantized else 0)
    if points < FAISS_MIN_POINTS_PER_CENTROID * centroids:
        progress.warning(f"the {'ivf-pq' if quantized else 'ivf'} index is trained on {points} vectors, fewer than the "
                         f"{FAISS_MIN_POINTS_PER_CENTROID * centroids} faiss advises for {centroids} centroids; its "
                         "search setting is still tuned to --target-recall (a smaller --nlist or --nbits trains better)")
    index.cp.min_points_per_centroid = 1
    if quantized:
        index.pq.cp.min_points_per_centroid = 1


def _build_hnsw(database, params: IndexParams, metric: int):
    index = _faiss().IndexHNSWFlat(database.shape[1], params.m, metric)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


INDEX_KINDS: dict[str, Callable] = {
    "ivf-pq": lambda database, params, metric: _build_ivf(database, params, metric, quantized=True),
    "ivf": lambda database, params, metric: _build_ivf(database, params, metric, quantized=False),
    "hnsw": _build_hnsw,
}


def build(database, params: IndexParams, metric: str, block_bytes: int):
    """A trained index holding every row of ``database`` (streamed in blocks of ``block_bytes``
    float32 bytes, so a memory-mapped database is never read whole)."""
    faiss = _faiss()
    nb, dim = database.shape
    index = INDEX_KINDS[params.kind](database, params, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    block_rows = max(1, block_bytes // (4 * dim))
    blocks = range(0, nb, block_rows)
    with progress.task(f"building {params.kind} index", total=len(blocks)) as advance:
        for start in blocks:
            index.add(_rows_f32(database, start, start + block_rows))
            release_mapped_pages(database)
            advance()
    return index


# --- the cache ------------------------------------------------------------------------------------


@dataclass
class LoadedIndex:
    """An index ready to search, with what audit.json records of it."""

    index: object
    params: IndexParams
    digest: str | None  # the cache key (None: built in memory, not persisted)
    built: bool  # built by this call (False: loaded from the cache)
    path: Path | None = None


def _read(path: Path, n: int, dim: int):
    """The index stored at ``path``, or None when absent, unreadable or not of ``n`` x ``dim`` vectors."""
    if not path.is_file():
        return None
    try:
        index = _faiss().read_index(str(path))
    except (RuntimeError, OSError):  # truncated or foreign: build again
        return None
    return index if index.ntotal == n and index.d == dim else None


def publish(index, path: Path) -> None:
    """Write ``index`` to ``path`` through a temporary name of this writer's own and a rename."""
    write_file_atomic(path, lambda tmp: _faiss().write_index(index, str(tmp)))


def obtain(database, params: IndexParams, metric: str, vectors_key: str | None, block_bytes: int,
           root: Path | None = None) -> LoadedIndex:
    """The index of ``database``: loaded from the cache when ``vectors_key`` identifies the vectors
    and an index of that key exists, else built (and published when ``vectors_key`` is given).
    A collective in a distributed run: rank 0 builds, the other ranks load what it published."""
    if vectors_key is None:
        return LoadedIndex(build(database, params, metric, block_bytes), params, None, True)
    key = index_key(vectors_key, metric, params, database.shape[1], len(database))
    path = index_path(key, root)
    world = distributed.current()
    world.check_shared_folder(path.parent, "$MEMAUDIT_CACHE")
    built = False
    with world.main_first():
        index = _read(path, len(database), database.shape[1])
        if index is None and world.is_main:
            remove_stale_temporaries(path.parent, STALE_AFTER_S)
            index = build(database, params, metric, block_bytes)
            publish(index, path)
            built = True
        elif index is None:  # rank 0 published it before the barrier let this rank in
            raise InputError(f"$MEMAUDIT_CACHE {path.parent}: the index rank 0 built is not readable here")
    built = bool(world.broadcast_json(built))
    return LoadedIndex(index, params, key, built, path)


# --- exact ground truth of the tuning sample --------------------------------------------------------


def truth_path(vectors_key: str, metric: str, k: int, n: int, dim: int, sample_queries: np.ndarray,
               root: Path | None = None) -> Path:
    """Where the exact top-k keys of a tuning sample are kept: keyed by the database vectors'
    identity and shape, the metric, k, and the sampled queries' own bytes (other samples, another
    key), so an audit of the same samples (a rerun, another threshold) does not search them again."""
    from memaudit.storage import fingerprint_array

    text = "|".join([str(FORMAT_VERSION), "truth", vectors_key, f"{n}x{dim}", metric, str(k),
                     fingerprint_array(np.ascontiguousarray(sample_queries))])
    return index_root(root) / f"{hashlib.sha256(text.encode()).hexdigest()}.truth.npy"


def load_truth(path: Path, rows: int, k: int) -> np.ndarray | None:
    try:
        keys = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return keys if keys.shape == (rows, k) and keys.dtype == np.float64 else None


def save_truth(path: Path, keys: np.ndarray) -> None:
    import io

    from memaudit.storage import write_bytes_atomic

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(keys, dtype=np.float64), allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


# --- the autotuner's choice ------------------------------------------------------------------------

CHOICE_VERSION = 1  # bump when memaudit.tuning chooses differently from the same measurements


def choice_path(index_digest: str, tune_queries: np.ndarray, k: int, target: float, settings: list[int],
                depths: list[int], root: Path | None = None) -> Path:
    """Where the tuner's choice for these tuning queries is kept: keyed by the index (its digest
    covers the vectors, the metric, the parameters and faiss's version), the tuning queries' own
    bytes, k, the target, the grid of settings and depths, and the tuner's rule (its confidence and
    stopping constants, ``CHOICE_VERSION``)."""
    from memaudit.storage import fingerprint_array

    text = "|".join([str(FORMAT_VERSION), str(CHOICE_VERSION), "choice", index_digest,
                     fingerprint_array(np.ascontiguousarray(tune_queries)), str(k), repr(float(target)),
                     ",".join(map(str, settings)), ",".join(map(str, depths)), str(tuning.RECALL_AT),
                     repr(tuning.CONFIDENCE_Z), str(tuning.PLATEAU)])
    return index_root(root) / f"{hashlib.sha256(text.encode()).hexdigest()}.choice.json"


def load_choice(path: Path) -> tuning.Choice | None:
    """The choice kept at ``path``, or None when absent or unreadable."""
    try:
        saved = json.loads(path.read_text())
        return tuning.Choice(int(saved["setting"]), int(saved["depth"]), float(saved["tuning_recall"]),
                             bool(saved["reached"]), list(saved["tried"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_choice(path: Path, choice: tuning.Choice) -> None:
    from memaudit.storage import write_bytes_atomic

    write_bytes_atomic(path, json.dumps(asdict(choice)).encode())


# --- searching ------------------------------------------------------------------------------------


def search_parameter(params: IndexParams) -> str:
    """The knob that trades speed for recall: ``nprobe`` (lists visited) or ``ef`` (HNSW beam)."""
    return "ef" if params.kind == "hnsw" else "nprobe"


def parameter_grid(params: IndexParams, candidates: int) -> list[int]:
    """Search settings from cheapest, for the autotuner: powers of two up to nlist (or 1024 for ef)."""
    if params.kind == "hnsw":
        start = 1 << max(0, math.ceil(math.log2(max(16, candidates))))
        return [start << i for i in range(0, 12) if start << i <= max(1024, start)]
    return sorted({min(params.nlist, 1 << i) for i in range(0, math.ceil(math.log2(params.nlist)) + 1)})


def candidates(loaded: LoadedIndex, queries, want: int, setting: int) -> np.ndarray:
    """``want`` candidate rows per query at search setting ``setting`` (nprobe or ef), best first
    by the index's own (approximate) scores; a missing one is replaced by the query's first."""
    faiss = _faiss()
    index = loaded.index
    if loaded.params.kind == "hnsw":
        parameters = faiss.SearchParametersHNSW(efSearch=int(max(setting, want)))
    else:
        parameters = faiss.SearchParametersIVF(nprobe=int(min(setting, loaded.params.nlist)))
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), want, params=parameters)
    return np.where(found < 0, found[:, :1].clip(min=0), found)


def scanned_per_query(loaded: LoadedIndex, n: int, setting: int) -> float:
    """A deterministic cost of one query at ``setting``: bytes of the index read (codes of the
    lists visited, or vectors an HNSW beam visits), for the autotuner's "cheapest"."""
    params = loaded.params
    if params.kind == "hnsw":
        return float(setting * params.m * 4 * loaded.index.d)
    code_bytes = (params.m * params.nbits + 7) // 8 if params.kind == "ivf-pq" else 4 * loaded.index.d
    return float(min(setting, params.nlist) * (n / params.nlist) * code_bytes)
