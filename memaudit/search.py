"""k-nearest-neighbour search through faiss, in bounded memory, exact where it matters.

Exact search visits the database in blocks (a memory-mapped training set never has to fit in RAM),
each searched with a flat index, and merges the running top candidates. Beyond ``exact_limit``
rows an approximate index (IVF or HNSW) proposes candidates instead. Either way the candidates (k
plus a margin) are re-scored exactly in float64 before the top k is kept: faiss's float32
``|q|^2 + |b|^2 - 2 q.b`` loses units in the last place on large pixel vectors, and an
approximate index only proposes. So NN1/NN2 distances are exact for the candidates found; ties go
to the lower index.

The flat search runs on faiss-gpu when installed, else on torch when CUDA is there, else
on faiss-cpu.

Metrics: ``l2`` (distances, ascending) and ``ip`` (inner products, descending: cosine similarity
on L2-normalised features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memaudit import progress
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
        info: SearchInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest database rows of each query.

    ``queries`` (nq, ...) and ``database`` (nb, ...) are flattened per row; any numeric dtype,
    including a ``np.memmap``. Returns ``(distances, indices)``, both (nq, k): float32 L2
    distances (not squared) sorted ascending, or float32 inner products sorted descending for
    ``metric="ip"``; int64 database row indices; ties by the lower index. ``index="flat"`` is
    exact; ``"ivf"``/``"hnsw"`` approximate; ``"auto"`` is exact up to ``exact_limit`` rows. Pass a
    ``SearchInfo`` to learn which index ran (its recall is measured by ``measure_recall``).
    """
    queries, database = _validate(queries, database, k, metric, index)
    nq, nb = len(queries), len(database)
    if nq == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    kind = ("flat" if nb <= exact_limit else "hnsw") if index == "auto" else index
    candidates = min(nb, k + RESCORE_MARGIN)
    if kind == "flat":
        candidate_idx, device = _flat_candidates(queries, database, candidates, metric, block_bytes)
    else:
        candidate_idx, device = _approximate_candidates(queries, database, candidates, metric, kind, block_bytes)
    if info is not None:
        info.index, info.metric, info.candidates, info.device = kind, metric, candidates, device
    return _rescore(queries, database, candidate_idx, k, metric)


def _flat_candidates(queries, database, candidates, metric, block_bytes):
    faiss = _import_faiss()
    nq, dim = queries.shape
    nb = len(database)
    sign = 1.0 if metric == "l2" else -1.0  # merge on a key where smaller is nearer
    gpu = _faiss_gpus(faiss)
    device = "faiss-gpu" if gpu else ("torch-cuda" if _torch_cuda() else "faiss-cpu")
    query_f32 = np.ascontiguousarray(queries, dtype=np.float32)
    best_key = np.full((nq, 0), np.inf, np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    block_rows = max(1, block_bytes // (4 * dim))
    blocks = range(0, nb, block_rows)
    with progress.task("nearest neighbours", total=len(blocks)) as advance:
        for start in blocks:
            block = np.ascontiguousarray(database[start:start + block_rows], dtype=np.float32)
            want = min(candidates, len(block))
            if device == "torch-cuda":
                key, i = _torch_block_search(query_f32, block, want, metric)
            elif gpu:
                index = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
                index = faiss.index_cpu_to_all_gpus(index)
                index.add(block)
                d, i = index.search(query_f32, want)
                key = sign * d
            else:  # faiss.knn searches the block in place: no copy into an index
                d, i = faiss.knn(query_f32, block, want,
                                 metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
                key = sign * d
            best_key, best_i = _merge(best_key, best_i, key, i + start, candidates)
            advance()
    return best_i, device


def _torch_cuda() -> bool:
    """A CUDA device torch can use (the fallback when faiss has no GPU build)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _torch_block_search(queries: np.ndarray, block: np.ndarray, want: int, metric: str):
    """The ``want`` smallest keys (squared L2, or negated inner product) of each query against one
    database block, computed with torch on the GPU; queries go in chunks to bound GPU memory."""
    import torch

    database = torch.from_numpy(block).cuda()
    norms = (database * database).sum(1) if metric == "l2" else None
    chunk = max(1, (1 << 28) // (4 * len(block)))  # about 256 MiB of scores at a time
    keys, rows = [], []
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[start:start + chunk]).cuda()
        products = q @ database.T
        key = (q * q).sum(1, keepdim=True) + norms - 2 * products if metric == "l2" else -products
        value, index = torch.topk(key, want, dim=1, largest=False)
        keys.append(value.cpu().numpy())
        rows.append(index.cpu().numpy())
    return np.concatenate(keys), np.concatenate(rows).astype(np.int64)


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
    """Exact float64 scores of each query's candidates, best first, ties by index."""
    nq, width = candidate_idx.shape
    dim = queries.shape[1]
    chunk = max(1, _RESCORE_CHUNK_BYTES // (8 * width * dim))
    out_d = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    # Byte images (the pixel space) are scored in int32, exact while dim * 255^2 < 2^31 and an
    # eighth of float64's memory traffic; anything else in float64.
    small_ints = (queries.dtype.itemsize == 1 and database.dtype.itemsize == 1 and queries.dtype.kind in "iu"
                  and database.dtype.kind in "iu" and dim * 255 * 255 < 2**31)
    work = np.int32 if small_ints else np.float64
    for start in range(0, nq, chunk):
        idx = candidate_idx[start:start + chunk]
        q = np.asarray(queries[start:start + chunk]).astype(work)
        unique = np.unique(idx)  # sorted, so a memmap is read forwards once
        rows = np.asarray(database[unique])[np.searchsorted(unique, idx)].astype(work)
        if metric == "l2":
            diff = q[:, None, :] - rows
            score = np.einsum("qcd,qcd->qc", diff, diff).astype(np.float64)
        else:
            score = -np.einsum("qd,qcd->qc", q, rows).astype(np.float64)
        # duplicate candidates (an index can propose a row twice) sort next to each other; drop repeats
        order = np.lexsort((idx, score), axis=1)
        score, idx = np.take_along_axis(score, order, 1), np.take_along_axis(idx, order, 1)
        repeated = np.zeros_like(idx, dtype=bool)
        repeated[:, 1:] = idx[:, 1:] == idx[:, :-1]
        score = np.where(repeated, np.inf, score)
        order = np.lexsort((idx, score), axis=1)[:, :k]
        best = np.take_along_axis(score, order, 1)
        out_d[start:start + chunk] = np.sqrt(best) if metric == "l2" else -best
        out_i[start:start + chunk] = np.take_along_axis(idx, order, 1)
    return out_d, out_i
