"""k-nearest-neighbour search through faiss, in bounded memory, exact where it matters.

Exact search visits the database in blocks (a memory-mapped training set never has to fit in RAM),
each searched with a flat index, and merges the running top candidates. Beyond ``exact_limit``
rows an approximate index (IVF or HNSW) proposes candidates instead. Either way the candidates (k
plus a margin) are re-scored exactly in float64 before the top k is kept: faiss's float32
``|q|^2 + |b|^2 - 2 q.b`` loses units in the last place on large pixel vectors, and an
approximate index only proposes. So NN1/NN2 distances are exact for the candidates found; ties go
to the lower index.

Exact blocks are searched by faiss-gpu when installed, else by a torch matrix product and top-k
on CUDA when there is a GPU, else on the CPU by faiss-cpu on few cores and torch on many (see
``flat_backend``); approximate indexes are faiss's.

In a distributed run (torchrun) the database is split into one contiguous row range per rank:
each rank searches its range for every query, keeps its exact top k, and the ranks' exact scores
are merged (ties to the lower index), which gives what one process finds over the whole database.

Metrics: ``l2`` (distances, ascending) and ``ip`` (inner products, descending: cosine similarity
on L2-normalised features).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import warnings
from dataclasses import dataclass

import numpy as np

from memaudit import distributed, progress
from memaudit.errors import InputError

DEFAULT_BLOCK_BYTES = 256 * 2**20  # float32 bytes of one database block
RESCORE_MARGIN = 8  # extra candidates re-scored exactly, to absorb float32 rounding
DEFAULT_EXACT_LIMIT = 2_000_000  # database rows searched exactly by default
METRICS = ("l2", "ip")
INDEXES = ("auto", "flat", "ivf", "hnsw")
_RESCORE_CHUNK_BYTES = 64 * 2**20


@dataclass
class SearchInfo:
    """How a search ran, for audit.json."""

    index: str
    metric: str
    candidates: int
    device: str
    recall: float | None = None  # recall@k of an approximate index against exact search

    def as_dict(self) -> dict:
        return {"index": self.index, "metric": self.metric, "candidates": self.candidates, "device": self.device,
                "recall_at_k": self.recall}


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise InputError(
            "faiss is not installed; install memaudit with the 'cpu' extra (faiss-cpu) or the 'gpu' extra (faiss-gpu)"
        ) from None
    return faiss


def _as_matrix(array: np.ndarray, name: str) -> np.ndarray:
    if not hasattr(array, "shape") or len(array.shape) < 1:
        raise InputError(f"{name}: expected an array of shape (n, ...), got {type(array).__name__}")
    return array.reshape(len(array), -1) if len(array.shape) != 2 else array


def _validate(queries, database, k, metric, index):
    queries = _as_matrix(queries, "queries")
    database = _as_matrix(database, "database")
    if database.shape[1] != queries.shape[1]:
        raise InputError(f"database: rows have {database.shape[1]} values but queries have {queries.shape[1]}; both must match")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= database.shape[0]:
        raise InputError(f"k: must be an integer from 1 to the database size {database.shape[0]}, got {k!r}")
    if metric not in METRICS:
        raise InputError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    if index not in INDEXES:
        raise InputError(f"index {index!r}: expected one of {', '.join(INDEXES)}")
    return queries, database


def knn(queries: np.ndarray, database: np.ndarray, k: int, *, metric: str = "l2", index: str = "flat",
        exact_limit: int = DEFAULT_EXACT_LIMIT, block_bytes: int = DEFAULT_BLOCK_BYTES,
        info: SearchInfo | None = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest database rows of each query.

    ``queries`` (nq, ...) and ``database`` (nb, ...) are flattened per row; any numeric dtype,
    including a ``np.memmap``. Returns ``(distances, indices)``, both (nq, k): float32 L2
    distances (not squared) sorted ascending, or float32 inner products sorted descending for
    ``metric="ip"``; int64 database row indices; ties by the lower index. ``index="flat"`` is
    exact; ``"ivf"``/``"hnsw"`` approximate; ``"auto"`` is exact up to ``exact_limit`` rows. Pass a
    ``SearchInfo`` to learn which index ran (its recall is measured by ``measure_recall``).
    ``dtype=np.float64`` returns the exact float64 rescored values instead of float32.
    In a distributed run it is a collective: every rank calls it with the same arguments, searches
    its rows of ``database``, and returns the merged result.
    """
    queries, database = _validate(queries, database, k, metric, index)
    nq, nb = len(queries), len(database)
    if nq == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    kind = ("flat" if nb <= exact_limit else "hnsw") if index == "auto" else index
    world = distributed.current()
    start, stop = world.row_range(nb)  # the whole database in a single process
    keys, indices, device = _search_rows(queries, database[start:stop], k, metric, kind, block_bytes)
    indices += start
    if world.distributed:
        keys, indices = _merge_exact(world.concat_columns(keys), world.concat_columns(indices), k)
    if info is not None:
        info.index, info.metric, info.candidates, info.device = kind, metric, min(nb, k + RESCORE_MARGIN), device
    return _key_to_result(keys, metric, dtype), indices


def _search_rows(queries, rows, k, metric, kind, block_bytes):
    """Exact keys (float64, smaller is nearer) and row indices of each query's top min(k, rows)
    among ``rows``, and the device that searched."""
    if len(rows) == 0:
        return np.zeros((len(queries), 0), np.float64), np.zeros((len(queries), 0), np.int64), flat_backend()
    candidates = min(len(rows), k + RESCORE_MARGIN)
    if kind == "flat":
        candidate_idx, device = _flat_candidates(queries, rows, candidates, metric, block_bytes)
    else:
        candidate_idx, device = _approximate_candidates(queries, rows, candidates, metric, kind, block_bytes)
    keys, indices = _rescore(queries, rows, candidate_idx, min(k, len(rows)), metric)
    return keys, indices, device


def _merge_exact(keys: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of exactly scored candidates from disjoint row ranges: by key, ties by index."""
    order = np.lexsort((indices, keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, 1), np.take_along_axis(indices, order, 1)


def _key_to_result(keys: np.ndarray, metric: str, dtype=np.float32) -> np.ndarray:
    """L2 distances from squared distances, or inner products from their negations (float32 unless asked)."""
    return (np.sqrt(keys) if metric == "l2" else -keys).astype(dtype)


def _flat_candidates(queries, database, candidates, metric, block_bytes):
    nq, dim = queries.shape
    nb = len(database)
    backend = flat_backend()
    search_block = FLAT_BACKENDS[backend]
    query_f32 = _as_float32(queries)
    best_key = np.full((nq, 0), np.inf, np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    block_rows = max(1, block_bytes // (4 * dim))
    blocks = range(0, nb, block_rows)
    with progress.task(f"nearest neighbours ({len(queries)} queries, {nb} rows)", total=len(blocks)) as advance:
        for start in blocks:
            block = _as_float32(database[start:start + block_rows])
            key, i = search_block(query_f32, block, min(candidates, len(block)), metric)
            best_key, best_i = _merge(best_key, best_i, key, i + start, candidates)
            _release_mapped_pages(database)
            advance()
    return best_i, backend


def _release_mapped_pages(array) -> None:
    """Let go of the pages of a memory-mapped store already searched, so the process's resident
    memory stays bounded by one block whatever the store's size (the kernel may keep them cached)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _as_float32(rows) -> np.ndarray:
    """A contiguous float32 copy, converted by torch on all cores (numpy's cast uses one)."""
    import torch

    rows = np.ascontiguousarray(rows)
    if rows.dtype == np.float32:
        return rows
    with _reading_read_only_arrays():
        return torch.from_numpy(rows).to(torch.float32).numpy()


@contextlib.contextmanager
def _reading_read_only_arrays():
    """Silence torch's warning about non-writable arrays (memory-mapped stores and caches): they are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


def _faiss_block_search(queries, block, want, metric, gpu: bool):
    """Keys (squared L2, or negated inner product: smaller is nearer) from a faiss flat search."""
    faiss = _import_faiss()
    if gpu:
        index = faiss.IndexFlatL2(block.shape[1]) if metric == "l2" else faiss.IndexFlatIP(block.shape[1])
        index = _to_gpus(faiss, index)
        index.add(block)
        d, i = index.search(queries, want)
    else:  # faiss.knn searches the block in place: no copy into an index
        d, i = faiss.knn(queries, block, want, metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    return (d if metric == "l2" else -d), i


_gpu_resources = {}


def _to_gpus(faiss, index):
    """A faiss GPU index: on this rank's GPU in a distributed run (one GPU per rank), else sharded
    over every GPU of the machine (each GPU holds a slice of the block; faiss merges the results)."""
    world = distributed.current()
    if world.distributed:
        gpu = int(world.cuda_device().partition(":")[2])
        if gpu not in _gpu_resources:
            _gpu_resources[gpu] = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_gpu_resources[gpu], gpu, index)
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


def _torch_block_search(queries: np.ndarray, block: np.ndarray, want: int, metric: str, device: str = "cpu"):
    """The same keys from a torch matrix product and top-k, less |q|^2 (constant per query, so
    it changes no ranking); queries go in chunks of about 256 MiB of scores."""
    import torch

    database = torch.from_numpy(block).to(device)
    norms = (database * database).sum(1) if metric == "l2" else None
    chunk = max(1, (1 << 28) // (4 * len(block)))
    keys, rows = [], []
    with torch.inference_mode():
        for start in range(0, len(queries), chunk):
            query = torch.from_numpy(queries[start:start + chunk]).to(device)
            # |b|^2 - 2 q.b in one matrix product (addmm's beta * input + alpha * q @ b^T)
            key = torch.addmm(norms[None, :], query, database.T, alpha=-2) if metric == "l2" else -(query @ database.T)
            value, index = torch.topk(key, want, dim=1, largest=False, sorted=False)
            keys.append(value.cpu().numpy())
            rows.append(index.cpu().numpy())
    return np.concatenate(keys), np.concatenate(rows).astype(np.int64)


# Exact block search. On the CPU the faster backend depends on the core count (measured with
# benchmarks/knn_throughput.py, throughput as a share of a numpy matrix product): 2 cores,
# faiss-cpu 0.98 and torch 0.60; 16 cores, faiss-cpu 0.16 (its bundled BLAS does not scale) and
# torch 0.71.
FEW_CORES = 4
FLAT_BACKENDS = {
    "faiss-gpu": lambda q, b, want, metric: _faiss_block_search(q, b, want, metric, gpu=True),
    "torch-cuda": lambda q, b, want, metric: _torch_block_search(q, b, want, metric,
                                                                 distributed.current().cuda_device()),
    "torch-cpu": lambda q, b, want, metric: _torch_block_search(q, b, want, metric, "cpu"),
    "faiss-cpu": lambda q, b, want, metric: _faiss_block_search(q, b, want, metric, gpu=False),
}


def flat_backend() -> str:
    """faiss-gpu when installed with a GPU, else torch on CUDA, else on the CPU faiss-cpu up to
    ``FEW_CORES`` cores and torch beyond; ``$MEMAUDIT_FLAT_BACKEND`` forces one."""
    forced = os.environ.get("MEMAUDIT_FLAT_BACKEND")
    if forced:
        if forced not in FLAT_BACKENDS:
            raise InputError(f"MEMAUDIT_FLAT_BACKEND={forced}: expected one of {', '.join(FLAT_BACKENDS)}")
        return forced
    try:
        import faiss

        if _faiss_gpus(faiss):
            return "faiss-gpu"
    except ImportError:
        pass
    import torch

    if torch.cuda.is_available():
        return "torch-cuda"
    return "faiss-cpu" if (os.cpu_count() or 1) <= FEW_CORES else "torch-cpu"


def _faiss_gpus(faiss) -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _approximate_candidates(queries, database, candidates, metric, kind, block_bytes):
    """Candidates from an IVF or HNSW index built over the database, streamed in blocks."""
    faiss = _import_faiss()
    nb, dim = database.shape
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    block_rows = max(1, block_bytes // (4 * dim))
    if kind == "ivf":
        nlist = int(max(1, min(4 * np.sqrt(nb), nb // 39)))
        quantizer = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
        sample = np.sort(np.random.default_rng(0).choice(nb, min(nb, 64 * nlist), replace=False))
        index.train(np.ascontiguousarray(database[sample], dtype=np.float32))
        index.nprobe = max(1, nlist // 16)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss_metric)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(64, 4 * candidates)
    blocks = range(0, nb, block_rows)
    with progress.task(f"building {kind} index", total=len(blocks)) as advance:
        for start in blocks:
            index.add(np.ascontiguousarray(database[start:start + block_rows], dtype=np.float32))
            advance()
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), candidates)
    # a missing candidate is -1: replace it by the query's first hit so re-scoring stays in range
    found = np.where(found < 0, found[:, :1].clip(min=0), found)
    return found, "faiss-cpu"


def l2_from_cosine(similarities) -> np.ndarray:
    """L2 distances between unit vectors from their cosine similarities: |a - b| = sqrt(2 - 2 cos)."""
    return np.sqrt(np.clip(2.0 - 2.0 * np.asarray(similarities, dtype=np.float64), 0.0, None))


def measure_recall(queries, database, k: int, metric: str, approximate_indices: np.ndarray,
                   sample: int = 256) -> float:
    """recall@k of approximate results against exact search, on up to ``sample`` queries."""
    queries = _as_matrix(queries, "queries")
    rows = np.sort(np.random.default_rng(0).choice(len(queries), min(sample, len(queries)), replace=False))
    _, exact = knn(queries[rows], database, k, metric=metric, index="flat")
    hits = [len(set(exact[j]) & set(approximate_indices[row, :k])) for j, row in enumerate(rows)]
    return float(np.sum(hits) / (len(rows) * k))


def _merge(key_a, i_a, key_b, i_b, keep):
    key = np.concatenate([key_a, key_b], axis=1)
    i = np.concatenate([i_a, i_b], axis=1)
    if key.shape[1] > keep:
        part = np.argpartition(key, keep - 1, axis=1)[:, :keep]
        key, i = np.take_along_axis(key, part, 1), np.take_along_axis(i, part, 1)
    return key, i


def _rescore(queries, database, candidate_idx, k, metric):
    """Exact float64 keys (squared L2, or negated inner product) of each query's k best candidates,
    best first, ties by index."""
    nq, width = candidate_idx.shape
    dim = queries.shape[1]
    chunk = max(1, _RESCORE_CHUNK_BYTES // (8 * width * dim))
    out_key = np.empty((nq, k), np.float64)
    out_i = np.empty((nq, k), np.int64)
    # Byte images (the pixel space) are scored in int32, exact while dim * 255^2 < 2^31 and an
    # eighth of float64's memory traffic; anything else in float64.
    small_ints = (queries.dtype.itemsize == 1 and database.dtype.itemsize == 1 and queries.dtype.kind in "iu"
                  and database.dtype.kind in "iu" and dim * 255 * 255 < 2**31)
    import torch  # elementwise arithmetic on all cores; integer sums accumulate in int64

    work = torch.int32 if small_ints else torch.float64
    for start in range(0, nq, chunk):
        idx = candidate_idx[start:start + chunk]
        unique = np.unique(idx)  # sorted, so a memmap is read forwards once
        with _reading_read_only_arrays():
            q = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk])).to(work)
            rows = torch.from_numpy(np.asarray(database[unique])[np.searchsorted(unique, idx)]).to(work)
        if metric == "l2":
            diff = q[:, None, :] - rows
            score = (diff * diff).sum(-1).numpy().astype(np.float64)
        else:
            score = -(q[:, None, :] * rows).sum(-1).numpy().astype(np.float64)
        # duplicate candidates (an index can propose a row twice) sort next to each other; drop repeats
        order = np.lexsort((idx, score), axis=1)
        score, idx = np.take_along_axis(score, order, 1), np.take_along_axis(idx, order, 1)
        repeated = np.zeros_like(idx, dtype=bool)
        repeated[:, 1:] = idx[:, 1:] == idx[:, :-1]
        score = np.where(repeated, np.inf, score)
        order = np.lexsort((idx, score), axis=1)[:, :k]
        out_key[start:start + chunk] = np.take_along_axis(score, order, 1)
        out_i[start:start + chunk] = np.take_along_axis(idx, order, 1)
    return out_key, out_i
