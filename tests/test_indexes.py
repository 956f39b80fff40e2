"""Persisted approximate indexes and the recall autotuner: recall against brute force, cache keys,
atomic publication, reuse by audits."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit import indexes, tuning
from memaudit.cli import app
from memaudit.errors import InputError
from memaudit.search import Approximate, SearchInfo, knn

runner = CliRunner()


def _clustered(seed=6, n=4000, dim=32, nq=300):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)) * 10
    database = (centres[rng.integers(0, 40, n)] + rng.standard_normal((n, dim))).astype(np.float32)
    queries = (centres[rng.integers(0, 40, nq)] + rng.standard_normal((nq, dim))).astype(np.float32)
    queries[::3] = database[rng.integers(0, n, len(queries[::3]))] + 0.05 * rng.standard_normal((len(queries[::3]), dim))
    return queries, database


def _brute_keys(queries, database, k):
    d = ((queries[:, None, :].astype(np.float64) - database[None].astype(np.float64)) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("kind", ["ivf-pq", "ivf", "hnsw"])
def test_tuned_search_reaches_the_target_recall_against_brute_force(kind, tmp_path):
    queries, database = _clustered()
    info = SearchInfo("", "", 0, "")
    distances, indices = knn(queries, database, 2, index=kind, info=info,
                             approximate=Approximate(vectors_key="test-set", target_recall=0.99))
    exact = _brute_keys(queries, database, 2)
    found = ((queries[:, None, :].astype(np.float64) - database[indices].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(distances, np.sqrt(found), rtol=1e-6)  # exact re-scoring of what was found
    # recall@2 on every query, by brute force: a found row within the exact second distance counts
    assert np.mean(found <= exact[:, 1:2] * (1 + 1e-9)) >= 0.98
    assert info.index == kind and info.built is True and info.tuning["tuned"]
    held = tuning.split_sample(len(queries))[1]
    assert info.recall == pytest.approx(np.mean(found[held] <= exact[held, 1:2] * (1 + 1e-9)))
    assert list(info.setting) == ["ef" if kind == "hnsw" else "nprobe"]


def test_the_tuner_picks_the_cheapest_setting_whose_recall_reaches_the_target_with_confidence():
    exact = np.array([[1.0, 2.0]] * 600)
    right = exact.copy()
    some = right.copy()
    some[:3, 1] = 5.0  # 3 of 1,200 neighbours missed: recall 0.9975, 95% lower bound above 0.99
    many = right.copy()
    many[:9, 1] = 5.0  # 9 missed: recall 0.9925 reaches 0.99, but not with confidence

    def evaluate(setting):
        return {10: many if setting < 4 else right, 40: many if setting < 2 else some}

    choice = tuning.choose([1, 2, 4, 8], [10, 40], evaluate, exact, 2, 0.99, cost=lambda s, d: s * 100 + d)
    assert (choice.setting, choice.depth, choice.reached) == (2, 40, True)  # 240 < 410 (nprobe 4, depth 10)
    assert tuning.lower_bound(0.9975, 1200) > 0.99 > tuning.lower_bound(0.9925, 1200)
    # nothing reaches the target: the best recall found, and the search stops after two settings without a gain
    choice = tuning.choose([1, 2, 4, 8, 16], [10], lambda s: {10: many}, exact, 2, 0.99, cost=lambda s, d: s)
    assert not choice.reached and choice.setting == 1 and len(choice.tried) == 3
    # too few tuning queries to show 0.99 with confidence: every neighbour must be found
    choice = tuning.choose([1, 2], [10], lambda s: {10: some[:100] if s == 1 else right[:100]}, exact[:100], 2, 0.99,
                           cost=lambda s, d: s)
    assert choice.setting == 2


def test_recall_counts_a_tie_with_a_true_neighbour():
    exact = np.array([[0.0, 1.0]])
    assert tuning.recall(np.array([[0.0, 1.0]]), exact, 2) == 1.0  # another row at the same distance
    assert tuning.recall(np.array([[0.0, 1.5]]), exact, 2) == 0.5


def test_default_parameters_follow_size_and_dimension():
    assert indexes.default_params("ivf-pq", 10_000_000, 256) == indexes.IndexParams("ivf-pq", nlist=2048, m=128, nbits=4)
    assert indexes.default_params("ivf-pq", 1_000_000, 512).as_dict() == {"kind": "ivf-pq", "nlist": 512, "m": 128,
                                                                          "nbits": 4}
    assert indexes.default_params("ivf-pq", 1_000_000, 512, nbits=8).m == 64
    assert indexes.default_params("ivf-pq", 400, 64) == indexes.IndexParams("ivf-pq", nlist=10, m=32, nbits=3)
    assert indexes.default_params("ivf", 50_000, 3072) == indexes.IndexParams("ivf", nlist=128)
    assert indexes.default_params("hnsw", 50_000, 3072) == indexes.IndexParams("hnsw", m=32)
    for kwargs, message in (({"m": 7}, "--m 7"), ({"nbits": 20}, "--nbits 20"), ({"nlist": 0}, "--nlist 0")):
        with pytest.raises(InputError, match=message):
            indexes.default_params("ivf-pq", 10_000, 256, **kwargs)
    with pytest.raises(InputError, match="--nbits"):
        indexes.default_params("hnsw", 10_000, 256, nbits=8)


def _obtain(database, tmp_path, key="set-a", metric="l2", **params):
    return indexes.obtain(database, indexes.default_params("ivf-pq", len(database), database.shape[1], **params),
                          metric, key, 1 << 20, root=tmp_path)


def test_every_part_of_the_key_rebuilds_and_nothing_else_does(tmp_path, monkeypatch):
    _, database = _clustered(n=2000, dim=16)
    first = _obtain(database, tmp_path)
    assert first.built and first.path.is_file()
    again = _obtain(database, tmp_path)
    assert not again.built and again.digest == first.digest
    digests = {first.digest}
    for change in ({"key": "set-b"}, {"metric": "ip"}, {"nlist": 8}, {"m": 4}, {"nbits": 3}):
        other = _obtain(database, tmp_path, **change)
        assert other.built, change
        digests.add(other.digest)
    other = _obtain(database[:1500], tmp_path)  # the vectors' shape is part of the key too
    assert other.built
    digests.add(other.digest)
    monkeypatch.setattr(indexes, "faiss_version", lambda: "0.0.0")
    digests.add(_obtain(database, tmp_path).digest)
    monkeypatch.setattr(indexes, "FORMAT_VERSION", indexes.FORMAT_VERSION + 1)
    digests.add(_obtain(database, tmp_path).digest)
    assert len(digests) == 9
    kinds = {indexes.index_key("set-a", "l2", indexes.default_params(kind, 2000, 16), 16, 2000)
             for kind in indexes.INDEX_KINDS}
    assert len(kinds) == 3


def test_publication_is_atomic_and_an_unreadable_index_is_rebuilt(tmp_path, monkeypatch):
    _, database = _clustered(n=2000, dim=16)
    faiss = pytest.importorskip("faiss")
    real_write = faiss.write_index

    def dies_half_way(index, name):
        real_write(index, name)
        with open(name, "r+b") as handle:
            handle.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", dies_half_way)
    with pytest.raises(OSError):
        _obtain(database, tmp_path)
    assert list((tmp_path / "indexes").iterdir()) == []  # neither the index nor its temporary
    monkeypatch.setattr(faiss, "write_index", real_write)
    first = _obtain(database, tmp_path)
    first.path.write_bytes(first.path.read_bytes()[:200])  # truncated by something else
    rebuilt = _obtain(database, tmp_path)
    assert rebuilt.built and rebuilt.path == first.path and faiss.read_index(str(rebuilt.path)).ntotal == len(database)


def test_a_fixed_setting_skips_tuning_and_gives_what_the_tuned_search_gives(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path))
    queries, database = _clustered()
    info = SearchInfo("", "", 0, "")
    d1, i1 = knn(queries, database, 2, index="ivf-pq", info=info, approximate=Approximate(vectors_key="s"))
    fixed = SearchInfo("", "", 0, "")
    d2, i2 = knn(queries, database, 2, index="ivf-pq", info=fixed,
                 approximate=Approximate(vectors_key="s", setting=info.setting["nprobe"], depth=info.candidates))
    assert fixed.built is False and fixed.tuning["tuned"] is False and fixed.recall == info.recall
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_the_samples_exact_neighbours_are_reused_only_for_the_same_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path))
    queries, database = _clustered()
    runs = []
    for q in (queries, queries, queries + np.float32(0.01)):
        info = SearchInfo("", "", 0, "")
        runs.append((knn(q, database, 2, index="ivf-pq", info=info, approximate=Approximate(vectors_key="s")), info))
    assert [info.tuning["ground_truth"] for _, info in runs] == ["computed", "cached", "computed"]
    assert [info.built for _, info in runs] == [True, False, False]
    (d1, i1), first = runs[0]
    (d2, i2), second = runs[1]
    np.testing.assert_array_equal(i1, i2)
    assert first.recall == second.recall and first.setting == second.setting
    # a cached ground truth that does not fit (another shape) is computed again
    for path in (tmp_path / "indexes").glob("*.truth.npy"):
        np.save(path, np.zeros((3, 2)))
    info = SearchInfo("", "", 0, "")
    knn(queries, database, 2, index="ivf-pq", info=info, approximate=Approximate(vectors_key="s"))
    assert info.tuning["ground_truth"] == "computed" and info.recall == first.recall


def test_the_tuners_choice_is_reused_only_for_the_same_samples_index_and_target(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path))
    queries, database = _clustered()

    def run(q, **options):
        info = SearchInfo("", "", 0, "")
        result = knn(q, database, 2, index="ivf-pq", info=info, approximate=Approximate(vectors_key="s", **options))
        return result, info

    (d1, i1), first = run(queries)
    (d2, i2), second = run(queries)
    assert (first.tuning["choice"], second.tuning["choice"]) == ("computed", "cached")
    # a reused choice still searches every query and re-ranks exactly: the same result, the same
    # held-out recall, the same settings tried
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    assert second.recall == first.recall and second.setting == first.setting
    assert second.candidates == first.candidates and second.tuning["tried"] == first.tuning["tried"]
    assert run(queries + np.float32(0.01))[1].tuning["choice"] == "computed"  # other samples
    assert run(queries, target_recall=0.95)[1].tuning["choice"] == "computed"  # another target
    assert run(queries, nlist=8)[1].tuning["choice"] == "computed"  # another index
    for path in (tmp_path / "indexes").glob("*.choice.json"):
        path.write_text("{")  # unreadable: tuned again
    assert run(queries)[1].tuning["choice"] == "computed"


@pytest.mark.parametrize("share", [10**9, 0], ids=["in-one-pass", "row-by-row"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_the_two_stage_rerank_gives_what_rescoring_every_candidate_exactly_gives(metric, share, monkeypatch):
    from memaudit import search
    from memaudit.search import _rerank, _rescore

    monkeypatch.setattr(search, "SEQUENTIAL_SHARE", share)

    rng = np.random.default_rng(3)
    for database, queries in ((rng.integers(0, 4, (60, 5)).astype(np.float32),  # many exact ties
                               rng.integers(0, 4, (40, 5)).astype(np.float32)),
                              (rng.integers(0, 256, (300, 48), dtype=np.uint8),  # pixels
                               rng.integers(0, 256, (40, 48), dtype=np.uint8)),
                              (rng.standard_normal((300, 16)), rng.standard_normal((40, 16)))):  # float64
        candidates = np.stack([rng.permutation(len(database))[:24] for _ in queries])
        candidates[::4, 6:] = candidates[::4, :1]  # a short answer padded with repeats of its first row
        reranked = _rerank(queries, database, candidates, 2, metric, [2, 3, 8, 24], block_bytes=1000)
        for depth, (keys, found) in reranked.items():
            exact_keys, exact_found = _rescore(queries, database, candidates[:, :depth], 2, metric)
            np.testing.assert_array_equal(keys, exact_keys)
            np.testing.assert_array_equal(found, exact_found)


def _audit(tmp_path, out, *extra):
    return runner.invoke(app, ["audit", "optimal", "--train", "digits:400", "--n", "40", "--out", str(tmp_path / out),
                               "--quiet", *extra])


def test_audits_reuse_the_index_memaudit_index_built(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "cache"))
    built = runner.invoke(app, ["index", "digits:400", "--space", "pixel", "--index", "ivf-pq", "--json", "--quiet"])
    assert built.exit_code == 0, built.output
    entry = json.loads(built.stdout)[0]["index"]
    assert entry["built"] is True and Path(entry["path"]).is_file()
    calls = []
    monkeypatch.setattr(indexes, "build", lambda *a, **kw: calls.append(a))  # an audit must not build again
    result = _audit(tmp_path, "run", "--index", "ivf-pq")
    assert result.exit_code == 0, result.output
    search = json.loads((tmp_path / "run" / "audit.json").read_text())["spaces"]["pixel"]["search"]
    assert search["built"] is False and search["index_digest"] == entry["index_digest"] and not calls
    assert search["params"] == entry["params"] and 0 <= search["recall_at_k"] <= 1
    assert search["tuning"]["tuned"] and search["tuning"]["target_recall"] == 0.99
    again = runner.invoke(app, ["index", "digits:400", "--space", "pixel", "--index", "ivf-pq", "--json", "--quiet"])
    assert json.loads(again.stdout)[0]["index"]["built"] is False
    import memaudit  # the Python door to the same command finds the same index, and checks its options

    (row,) = memaudit.index("digits:400", spaces=["pixel"], index="ivf-pq", progress=False)
    assert row["index"]["built"] is False and row["index"]["index_digest"] == entry["index_digest"]
    with pytest.raises(InputError, match="memaudit.index: unknown option 'nlists'"):
        memaudit.index("digits:400", nlists=4)
    # a fixed --nprobe: the same index, only the re-rank depth tuned, the recall measured on held-out samples
    assert _audit(tmp_path, "fixed", "--index", "ivf-pq", "--nprobe", "3").exit_code == 0
    fixed = json.loads((tmp_path / "fixed" / "audit.json").read_text())["spaces"]["pixel"]["search"]
    assert fixed["built"] is False and fixed["setting"] == {"nprobe": 3}
    assert {row["setting"] for row in fixed["tuning"]["tried"]} == {3} and fixed["recall_at_k"] is not None
    monkeypatch.undo()
    # another training set, or other parameters: another index, built by the audit
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "cache"))
    for out, train, extra in (("other-set", "digits:300", []), ("other-nlist", "digits:400", ["--nlist", "4"])):
        result = runner.invoke(app, ["audit", "optimal", "--train", train, "--n", "40", "--out", str(tmp_path / out),
                                     "--quiet", "--index", "ivf-pq", *extra])
        assert result.exit_code == 0, result.output
        other = json.loads((tmp_path / out / "audit.json").read_text())["spaces"]["pixel"]["search"]
        assert other["built"] is True and other["index_digest"] != entry["index_digest"]


@pytest.mark.parametrize("extra, message", [
    (["--index", "ivf", "--ef", "64"], "--ef"),
    (["--index", "hnsw", "--nprobe", "4"], "--nprobe"),
    (["--index", "flat", "--nlist", "16"], "--index flat"),
    (["--index", "ivf-pq", "--m", "7"], "--m 7"),
    (["--index", "ivf-pq", "--target-recall", "1.5"], "--target-recall"),
])
def test_bad_search_options_are_one_line_errors(tmp_path, monkeypatch, extra, message):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "cache"))
    result = _audit(tmp_path, "run", *extra)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_query_whose_probed_lists_hold_fewer_than_k_rows_is_searched_exactly(tmp_path, monkeypatch):
    # as many inverted lists as rows: probing one proposes a single row, the index pads its answer with
    # repeats, and the second neighbour must still be the true one (an infinite d2 would make the
    # nn-ratio test call every such sample memorized)
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path))
    rng = np.random.default_rng(3)
    database = (rng.standard_normal((40, 8)) * 10).astype(np.float32)
    queries = np.concatenate([database[:5] + 0.01, rng.standard_normal((3, 8)) * 10]).astype(np.float32)
    info = SearchInfo("", "", 0, "")
    distances, found = knn(queries, database, 2, index="ivf", info=info,
                           approximate=Approximate(nlist=40, setting=1, depth=10, measure=False))
    np.testing.assert_allclose(distances ** 2, _brute_keys(queries, database, 2), rtol=1e-5)
    assert (found[:5, 0] == np.arange(5)).all() and (found[:, 0] != found[:, 1]).all()
    assert info.exact_fallback == len(queries)
