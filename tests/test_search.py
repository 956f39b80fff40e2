import numpy as np
import pytest

from memaudit.errors import InputError
from memaudit.search import knn


def brute_force(queries, database, k):
    """Independent reference: float64 distances to every row, stable sort (ties by index)."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    b = database.reshape(len(database), -1).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("k", [1, 2, 5, 17])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_knn_matches_brute_force_with_small_blocks(k, dtype):
    rng = np.random.default_rng(k)
    database = rng.integers(0, 256, (503, 48)).astype(dtype)
    queries = rng.integers(0, 256, (97, 48)).astype(dtype)
    queries[:5] = database[[3, 3, 100, 250, 502]]  # exact copies
    distances, indices = knn(queries, database, k, block_bytes=4 * 48 * 64)  # 64-row blocks: 8 of them
    ref_d, ref_i = brute_force(queries, database, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    assert distances.shape == indices.shape == (97, k)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_allclose(distances, ref_d, rtol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= 0)
    assert np.all(distances[:5, 0] == 0)


def test_knn_breaks_ties_by_lower_index_across_blocks():
    database = np.zeros((10, 4), np.uint8)
    database[::2] = 7  # rows 0, 2, 4, 6, 8 identical
    query = np.full((1, 4), 7, np.uint8)
    _, indices = knn(query, database, 3, block_bytes=4 * 4 * 3)
    assert indices.tolist() == [[0, 2, 4]]


def test_knn_flattens_images_and_reads_a_memmap(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    stored = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.uint8, shape=images.shape)
    stored[:] = images
    stored.flush()
    memmap = np.load(tmp_path / "train.npy", mmap_mode="r")
    queries = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    distances, indices = knn(queries, memmap, 2, block_bytes=4 * 192 * 50)
    ref_d, ref_i = brute_force(queries, images, 2)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_allclose(distances, ref_d, rtol=1e-6)


def test_knn_distances_are_exact_on_large_pixel_vectors():
    # 3072-dim near-white vectors: faiss's float32 |q|^2+|b|^2-2qb loses whole units here.
    rng = np.random.default_rng(2)
    database = rng.integers(240, 256, (64, 3072), dtype=np.uint8)
    queries = database[:8].copy()
    queries[:, :3] -= 1  # squared distance 3 to its source
    distances, indices = knn(queries, database, 2)
    assert indices[:, 0].tolist() == list(range(8))
    np.testing.assert_array_equal(distances[:, 0], np.float32(np.sqrt(3.0)))


@pytest.mark.parametrize("k", [0, 11, 2.5])
def test_knn_rejects_bad_k(k):
    with pytest.raises(InputError, match="k: must be an integer from 1 to the database size 10"):
        knn(np.zeros((2, 3)), np.zeros((10, 3)), k)


def test_knn_rejects_mismatched_dimensions():
    with pytest.raises(InputError, match="rows have 4 values but queries have 3"):
        knn(np.zeros((2, 3)), np.zeros((10, 4)), 1)


def test_inner_product_search_matches_brute_force():
    rng = np.random.default_rng(5)
    database = rng.standard_normal((400, 32)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = database[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    sims, indices = knn(queries, database, 3, metric="ip", block_bytes=4 * 32 * 50)
    reference = queries.astype(np.float64) @ database.astype(np.float64).T
    order = np.argsort(-reference, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(sims, np.take_along_axis(reference, order, 1), rtol=1e-6)
    assert np.all(np.diff(sims, axis=1) <= 0)


@pytest.mark.parametrize("kind", ["ivf-pq", "ivf", "hnsw"])
def test_approximate_search_recall_and_exact_rescoring(kind):
    from memaudit.search import SearchInfo

    rng = np.random.default_rng(6)
    centres = rng.standard_normal((50, 24)) * 10
    database = (centres[rng.integers(0, 50, 5000)] + rng.standard_normal((5000, 24))).astype(np.float32)
    queries = database[rng.integers(0, 5000, 200)] + 0.05 * rng.standard_normal((200, 24)).astype(np.float32)
    info = SearchInfo("", "", 0, "")
    distances, indices = knn(queries, database, 2, index=kind, info=info)
    assert info.index == kind and info.built is True and info.index_digest is None  # not kept: no vectors_key
    _, exact = knn(queries, database, 2, index="flat")
    assert np.mean([len(set(a) & set(e)) / 2 for a, e in zip(indices, exact)]) >= 0.95
    # every distance returned is the exact distance to the row returned
    exact = np.sqrt(((queries[:, None, :].astype(np.float64) - database[indices].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_allclose(distances, exact, rtol=1e-6)


def test_auto_index_is_exact_below_the_limit():
    from memaudit.search import SearchInfo

    rng = np.random.default_rng(7)
    database = rng.standard_normal((300, 8)).astype(np.float32)
    info = SearchInfo("", "", 0, "")
    knn(database[:5], database, 2, index="auto", exact_limit=1000, info=info)
    assert info.index == "flat"
    knn(database[:5], database, 2, index="auto", exact_limit=100, info=info)
    assert info.index == "ivf-pq"  # bounded memory beyond the limit


@pytest.mark.parametrize("backend", ["torch-cpu-tiles", "torch-cpu", "faiss-cpu"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_cpu_flat_backends_agree_with_brute_force(backend, metric, monkeypatch):
    from memaudit.search import SearchInfo

    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", backend)
    rng = np.random.default_rng(11)
    database = rng.integers(0, 256, (3000, 48), dtype=np.uint8)
    database[2500] = database[100]  # an exact tie, in another block: the lower index wins
    queries = np.concatenate([database[[100, 7]], rng.integers(0, 256, (30, 48), dtype=np.uint8)])
    info = SearchInfo("", "", 0, "")
    scores, indices = knn(queries, database, 3, metric=metric, block_bytes=48 * 4 * 1000, info=info)
    assert info.device == backend
    q, d = queries.astype(np.float64), database.astype(np.float64)
    key = ((q[:, None] - d[None]) ** 2).sum(-1) if metric == "l2" else -(q @ d.T)
    order = np.lexsort((np.broadcast_to(np.arange(len(d)), key.shape), key), axis=1)[:, :3]
    np.testing.assert_array_equal(indices, order)
    if metric == "l2":
        assert indices[0, :2].tolist() == [100, 2500] and scores[0, 0] == 0


def test_unknown_flat_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", "cublas")
    with pytest.raises(InputError, match="MEMAUDIT_FLAT_BACKEND=cublas: expected one of faiss-gpu"):
        knn(np.zeros((2, 4)), np.zeros((5, 4)), 2)


def test_rows_gathered_from_a_memmap_in_pieces_are_the_rows(tmp_path, monkeypatch):
    from memaudit import storage

    array = np.random.default_rng(3).integers(0, 256, (5000, 48), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = np.sort(np.random.default_rng(4).choice(5000, 777, replace=False))
    monkeypatch.setattr(storage, "GATHER_ROWS", 100)  # several pieces
    np.testing.assert_array_equal(storage.gather_rows(mapped, rows), array[rows])
    np.testing.assert_array_equal(storage.gather_rows(array, rows), array[rows])
