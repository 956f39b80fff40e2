"""Distributed runs on the CPU: torchrun with the gloo backend, two processes against one.

Two ranks must write what one process writes with the same seeds (same samples, same neighbours,
same ratio); a rank killed mid-run loses only its unfinished shard, which a rerun redoes alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit import distributed, units
from memaudit.cli import app
from memaudit.search import Approximate, SearchInfo, knn

HERE = Path(__file__).parent
runner = CliRunner()


def torchrun(*args, nproc: int = 2, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC ARGS`` with gloo on one CPU thread per rank."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *[str(a) for a in args]]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MEMAUDIT_DIST_BACKEND": "gloo", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def memaudit_torchrun(*args, **kwargs) -> subprocess.CompletedProcess:
    # "--" ends torchrun's own options: its parser would take a memaudit option such as --n for one of
    # its own by prefix (--nnodes, --nproc-per-node)
    return torchrun("-m", "memaudit", "--", *args, **kwargs)


def comparable(run_dir: Path) -> dict:
    """audit.json without what legitimately differs between runs: when, how, and on how many processes."""
    audit = json.loads((run_dir / "audit.json").read_text())
    provenance = audit.pop("provenance")
    return {**audit, "command_ok": bool(provenance["command"])}


# README: an embedding network's output can differ in its last bit with the number of CPU threads
# or processes, which can move a figure computed from it (a distance, a Frechet distance) in its
# last digit. Floats are compared to this relative tolerance, everything else exactly.
FLOAT_RTOL = 1e-9


def assert_json_close(a, b, path: str = "audit") -> None:
    """``a == b`` for JSON values, with floats equal to ``FLOAT_RTOL`` (relative)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{path}: {a!r} != {b!r}"
        assert a == pytest.approx(b, rel=FLOAT_RTOL, abs=1e-12), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_json_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _cell(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def assert_csv_close(a: Path, b: Path) -> None:
    """Two CSV files with the same rows, numbers equal to ``FLOAT_RTOL``."""
    import csv

    with open(a, newline="") as fa, open(b, newline="") as fb:
        rows_a, rows_b = list(csv.reader(fa)), list(csv.reader(fb))
    assert_json_close([[_cell(c) for c in row] for row in rows_a], [[_cell(c) for c in row] for row in rows_b], a.name)


def test_json_closeness_tolerates_the_last_digit_only():
    assert_json_close({"f": [0.012899409655022065, 1, "x"]}, {"f": [0.01289940965502201, 1, "x"]})
    for changed in ({"f": [0.0129, 1, "x"]}, {"f": [0.012899409655022065, 2, "x"]}, {"f": [0.012899409655022065, 1]}):
        with pytest.raises(AssertionError):
            assert_json_close({"f": [0.012899409655022065, 1, "x"]}, changed)


def assert_same_run(single: Path, multi: Path) -> None:
    assert_json_close(comparable(single), comparable(multi))
    for name in ("neighbors.csv", "verdicts.csv"):
        assert_csv_close(single / name, multi / name)
    with np.load(single / "samples.npz") as a, np.load(multi / "samples.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name


# --- the world's arithmetic, in one process ----------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 64, 1001])
def test_row_ranges_cover_every_row_once(size, n):
    ranges = [distributed.World(rank=r, size=size).row_range(n) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [stop - start for start, stop in ranges]
    assert max(lengths) - min(lengths) <= 1


def test_jobs_go_costliest_first_to_the_least_loaded_rank():
    world = distributed.World(rank=0, size=2)
    # sizes of EMM points: the two large ones must land on different ranks
    owners = world.assign([100, 10, 100, 10, 20])
    assert owners[0] != owners[2]
    loads = [sum(c for c, o in zip([100, 10, 100, 10, 20], owners) if o == r) for r in range(2)]
    assert loads == [120, 120]
    assert world.assign([1, 1, 1, 1]) == [0, 1, 0, 1]  # equal costs: round robin
    assert distributed.World().assign([5, 3]) == [0, 0]


def test_a_single_process_plans_every_unfinished_unit():
    done = {1, 3}
    plan = units.plan(5, lambda i: i in done)
    assert plan.pending == (0, 2, 4) and plan.mine == (0, 2, 4)


def test_feature_extraction_resumes_at_its_first_unfinished_chunk(monkeypatch, tmp_path):
    """A training set's features are extracted in chunks on disk: an interrupted extraction keeps
    its finished chunks and a rerun extracts only the rest (each rank its share, under torchrun)."""
    from memaudit.features import cache, get_space

    monkeypatch.setattr(cache, "CHUNK_ROWS", 40)
    space = get_space("pixel-4")
    images = np.random.default_rng(0).integers(0, 256, (130, 8, 8, 1), dtype=np.uint8)
    calls = []
    extract = space.extract

    def failing(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return extract(batch)

    space.batch_size = 20
    space.extract = failing
    with pytest.raises(KeyboardInterrupt):
        cache.cached_features(space, images, "sha256:test-set", root=tmp_path)
    assert sum(calls[:2]) == 40  # the first chunk (two batches) was finished and kept
    calls.clear()
    space.extract = extract
    counting = []
    space.extract = lambda batch: counting.append(len(batch)) or extract(batch)
    features, was_cached = cache.cached_features(space, images, "sha256:test-set", root=tmp_path)
    assert not was_cached and sum(counting) == 130 - 40
    assert np.array_equal(features, extract(images))
    assert not any(p.name.endswith(".chunks") for p in (tmp_path / "features").iterdir())


# --- two processes against one -----------------------------------------------------------------


def test_two_ranks_search_exactly_what_one_process_finds(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    database = rng.standard_normal((301, 24)).astype(np.float32)
    database[150] = database[20]  # exact ties across the ranks' row ranges: the lower index wins
    database[200] = database[20]
    queries = np.concatenate([rng.standard_normal((40, 24)).astype(np.float32), database[[20, 7, 150]]])
    pixels = rng.integers(0, 256, (257, 64), dtype=np.uint8)
    pixels[256] = pixels[3]
    pixel_queries = np.concatenate([rng.integers(0, 256, (30, 64), dtype=np.uint8), pixels[[3, 100]]])
    np.savez(tmp_path / "in.npz", floats_queries=queries, floats_database=database, pixels_queries=pixel_queries,
             pixels_database=pixels, k=5)
    result = torchrun(HERE / "distributed_worker.py", tmp_path / "in.npz", tmp_path / "out.npz",
                      env={"MEMAUDIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-4000:]
    out = np.load(tmp_path / "out.npz")
    assert int(out["world_size"]) == 2
    for name, q, db, metric in (("floats", queries, database, "l2"), ("floats", queries, database, "ip"),
                                ("pixels", pixel_queries, pixels, "l2")):
        distances, indices = knn(q, db, 5, metric=metric)
        assert np.array_equal(out[f"{name}_{metric}_indices"], indices)
        assert np.array_equal(out[f"{name}_{metric}_distances"], distances)
        # and against brute force in float64 (ties by the lower index)
        a, b = q.astype(np.float64), db.astype(np.float64)
        key = ((a[:, None, :] - b[None]) ** 2).sum(-1) if metric == "l2" else -(a @ b.T)
        expected = np.lexsort((np.broadcast_to(np.arange(len(b)), key.shape), key), axis=1)[:, :5]
        assert np.array_equal(out[f"{name}_{metric}_indices"], expected)
    # sharded by queries: what the database split (and one process) finds
    for name in ("floats", "pixels"):
        assert np.array_equal(out[f"{name}_sharded_indices"], out[f"{name}_l2_indices"])
        assert np.array_equal(out[f"{name}_sharded_distances"], out[f"{name}_l2_distances"])
    # the persisted IVF-PQ index the ranks shared, searched by one process: the same tuning, the same result
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "cache"))
    info = SearchInfo("", "", 0, "")
    distances, indices = knn(queries, database, 5, index="ivf-pq", info=info,
                             approximate=Approximate(vectors_key="distributed-test"))
    ranks = json.loads(str(out["ivfpq_info"]))
    assert info.built is False and ranks["shard"] == "queries"
    assert (ranks["setting"], ranks["candidates"], ranks["recall"]) == (info.setting, info.candidates, info.recall)
    assert np.array_equal(out["ivfpq_indices"], indices) and np.array_equal(out["ivfpq_distances"], distances)
    nearest = out["floats_l2_indices"]
    assert nearest[-3, :3].tolist() == nearest[-1, :3].tolist() == [20, 150, 200] and nearest[-2, 0] == 7
    assert out["tiny_indices"].tolist() == [[0]] * len(queries)
    assert out["gathered_lengths"].tolist() == [1, 2]
    assert out["gathered_rows"].tolist() == [[1.0, 1.0]]  # rank 0 sent no rows, rank 1 one row
    assert int(out["broadcast"]) == 0 and not bool(out["all_agree_mixed"])
    assert out["row_ranges"].tolist() == [[0, 5], [5, 10]]


def test_two_rank_audit_writes_what_one_process_writes(tmp_path, monkeypatch):
    """The optimal denoiser on real photo tiles, in the pixel space and a box-resized pixel space
    (features extracted by both ranks into one cache): identical runs, rank 0 alone writing."""
    args = ["audit", "optimal", "--train", "photos:120", "--n", 300, "--seed", 5, "--batch-size", 32,
            "--space", "pixel-8", "--quiet"]
    single = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "another-cache"))  # the ranks extract pixel-8 themselves
    multi = memaudit_torchrun(*args, "--out", tmp_path / "two")
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    provenance = json.loads((tmp_path / "two" / "audit.json").read_text())["provenance"]
    assert provenance["world_size"] == 2 and provenance["backend"] == "gloo"
    assert multi.stdout.count("memorization ratio") == 1  # only rank 0 prints
    assert not list((tmp_path / "two").glob(".memaudit-rank-probe-*"))


def spectrum_space(folder: Path) -> str:
    """An embedding (cosine) space in SSCD's place: a TorchScript model of the images' magnitude spectrum."""
    import torch

    class Spectrum(torch.nn.Module):
        def forward(self, x):
            return torch.log1p(torch.fft.rfft2(torch.nn.functional.adaptive_avg_pool2d(x, 16)).abs()).flatten(1)

    path = folder / "spectrum.torchscript.pt"
    torch.jit.script(Spectrum()).save(str(path))
    return f"sscd:{path}"


def test_a_two_rank_audit_holds_a_shard_of_the_samples_and_writes_what_one_process_writes(tmp_path):
    """Two ranks audit 300 samples of the optimal denoiser in the pixel space, a resized pixel space
    and an embedding space, with a holdout: the run is the single process's (audit.json, findings,
    neighbours, verdicts, samples), and no rank reads more than its shard of the samples: the
    samples are memory-mapped from samples.npz, not loaded; each rank extracts, searches and scores
    only its rows (the shards on disk are read by rank 0 alone, once, to write samples.npz), and
    quality is computed once."""
    from memaudit.data import load_image_set

    holdout = load_image_set("photos").images[400:460]
    np.savez(tmp_path / "holdout.npz", images=holdout)
    n = 300
    args = ["audit", "optimal", "--train", "photos:120", "--n", n, "--seed", 3, "--batch-size", 64,
            "--space", "pixel-8", "--space", spectrum_space(tmp_path), "--holdout", tmp_path / "holdout.npz",
            "--quiet"]
    single = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    multi = torchrun(HERE / "audit_shard_worker.py", "--", tmp_path / "logs", *args, "--out", tmp_path / "two",
                     env={"MEMAUDIT_CACHE": str(tmp_path / "another-cache")})
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    audit = json.loads((tmp_path / "two" / "audit.json").read_text())
    assert audit["provenance"]["world_size"] == 2 and len(audit["spaces"]) == 3 and audit["findings"]
    assert all(s["criteria"][c]["calibrated"] for s in audit["spaces"].values() for c in s["criteria"])
    assert not (tmp_path / "two" / ".cache" / "sample-features").exists()  # the run's own scratch, removed

    ranks = [json.loads((tmp_path / "logs" / f"rank-{r}.json").read_text()) for r in range(2)]
    shard = -(-n // 2)
    for rank, seen in enumerate(ranks):
        # the samples are a memory map on every rank (3 spaces), never an array in memory
        assert seen["samples_arrays"] == [{"rows": n, "mapped": True}] * 3
        # each rank searches (and converts) only its row range of the samples, in all 3 spaces (the
        # holdout, not samples, is searched whole against each rank's half of the training set)
        start, stop = distributed.World(rank, 2).row_range(n)
        assert seen["searched"] == [stop - start, len(holdout)] * 3
        assert max(seen["tiled"]) <= shard and max(seen["duplicates"]) <= shard
    # the samples' features (pixel-8, batches of 4096, and the spectrum space, batches of 64): each
    # rank extracts its share of whole batches, the batches one process forms; the parts make the whole once
    for rank, seen in enumerate(ranks):
        shares = [distributed.World(rank, 2).batch_range(n, batch) for batch in (4096, 64)]
        assert [rows for given, rows in seen["extracted"] if given == n] == [stop - start for start, stop in shares]
    assert [rows for given, rows in ranks[1]["extracted"] if given == n] == [0, n - 192]
    assert sum(seen["tiled"][0] for seen in ranks) == n  # the samples' tiled-l2, split (then the holdout's)
    assert ranks[1]["shards_read"] == 0 and ranks[0]["shards_read"] == 2  # 300 seeds: 2 shards, read once
    assert ranks[1]["quality"] == 0 and ranks[0]["quality"] == 2  # pixel-8, spectrum (3072 pixel values: skipped)


KILLING_MODEL = '''
import glob, os, signal, time
from memaudit.adapters.example_user_model import PixelGaussianModel

class LoggedModel(PixelGaussianModel):
    """The per-pixel Gaussian, logging every seed it samples; one rank dies on KILL_AT_SEED once
    WAIT_COUNT shards are on disk (so what survives the crash does not depend on timing)."""

    def sample(self, seeds, batch_size, conditioning=None):
        log = os.path.join(os.environ["SEED_LOG"], f"rank-{os.environ.get('RANK', '0')}.txt")
        with open(log, "a") as handle:
            handle.write(" ".join(str(s) for s in seeds) + "\\n")
        kill_at = os.environ.get("KILL_AT_SEED")
        if kill_at is not None and int(kill_at) in seeds:
            deadline = time.time() + 120
            while len(glob.glob(os.environ["WAIT_FOR"])) < int(os.environ["WAIT_COUNT"]) and time.time() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().sample(seeds, batch_size, conditioning)

def build(train):
    return LoggedModel(train.images)
'''


def logged_seeds(folder: Path) -> list[int]:
    return sorted(int(s) for path in folder.glob("rank-*.txt") for s in path.read_text().split())


def test_a_killed_rank_costs_only_its_unfinished_shard(tmp_path, monkeypatch):
    model = tmp_path / "logged_model.py"
    model.write_text(KILLING_MODEL)
    out = tmp_path / "run"
    args = ["audit", f"{model}:build", "--train", "digits:200", "--n", 1024, "--quiet"]
    shards = str(out / ".cache" / "samples" / "*" / "seeds-*.npz")
    first_log, second_log = tmp_path / "log-1", tmp_path / "log-2"
    first_log.mkdir()
    second_log.mkdir()

    # 4 shards of 256 seeds: rank 0 draws shards 0 and 2, rank 1 shards 1 and 3; rank 1 dies at the
    # start of shard 3, after the other three are written
    crashed = memaudit_torchrun(*args, "--out", out, env={"SEED_LOG": str(first_log), "KILL_AT_SEED": "768", "WAIT_FOR": shards,
                                            "WAIT_COUNT": "3"})
    assert crashed.returncode != 0
    assert not (out / "audit.json").exists()
    survivors = {path.name: path.stat().st_mtime_ns for path in out.glob(".cache/samples/*/seeds-*.npz")}
    assert sorted(survivors) == ["seeds-0-256.npz", "seeds-256-256.npz", "seeds-512-256.npz"]

    rerun = memaudit_torchrun(*args, "--out", out, env={"SEED_LOG": str(second_log)})
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert logged_seeds(second_log) == list(range(768, 1024))  # the lost shard, and nothing else
    assert {path.name: path.stat().st_mtime_ns for path in out.glob(".cache/samples/*/seeds-*.npz")
            if path.name in survivors} == survivors

    monkeypatch.setenv("SEED_LOG", str(tmp_path))  # the single-process reference logs here
    single = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    assert_same_run(tmp_path / "one", out)


def test_an_unknown_backend_is_a_one_line_error(tmp_path):
    result = memaudit_torchrun("audit", "optimal", "--train", "digits:20", "--out", tmp_path, "--n", 4,
                               env={"MEMAUDIT_DIST_BACKEND": "mpi"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("memaudit: error")]
    assert errors and all(e == "memaudit: error: MEMAUDIT_DIST_BACKEND=mpi: expected one of gloo, nccl" for e in errors)


def test_a_run_folder_the_ranks_do_not_share_is_refused(tmp_path):
    """Two ranks that see different folders under one path cannot hand each other shards."""
    out = tmp_path / "rank-local"
    script = tmp_path / "check.py"
    script.write_text(
        "import os, sys\n"
        "from memaudit import distributed\n"
        "from memaudit.errors import InputError\n"
        "world = distributed.init_from_environment()\n"
        "folder = sys.argv[1] + f'-{world.rank}'  # each rank its own folder: not shared\n"
        "try:\n"
        "    world.check_shared_folder(folder, '--out')\n"
        "    print('accepted')\n"
        "except InputError as error:\n"
        "    print(f'refused: {error}')\n"
        "world.check_shared_folder(sys.argv[2], '--out')\n"
        "print('shared accepted')\n"
        "distributed.shutdown()\n")
    result = torchrun(script, out, tmp_path / "shared")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("refused: --out") == 2 and "filesystem all ranks share" in result.stdout
    assert result.stdout.count("shared accepted") == 2


# --- EMM: points shared out among ranks ----------------------------------------------------------

TINY_EMM = ["--arch", "tiny", "--width", "8", "--epochs", "40", "--batch-size", "16", "--warmup", "5",
            "--n", "24", "--sample-steps", "4", "--checkpoint-every", "10", "--quiet"]


def comparable_emm(run_dir: Path) -> dict:
    emm = json.loads((run_dir / "emm.json").read_text())
    emm.pop("provenance")  # the command, the time, the workers and ranks
    for point in [*emm.get("points", []), *(p for s in emm["searches"] for p in s["points"])]:
        point.pop("cost")  # seconds measured
    return emm


def test_two_rank_emm_trains_each_point_once_and_writes_what_one_process_writes(tmp_path, one_torch_thread):
    """Two seeds per size on two ranks: each rank trains one seed of every size, on one CPU thread
    as the single process does, so the weights, ratios and emm.json are the same."""
    args = ["emm", "--train", "digits", "--start", 10, "--max-size", 20, "--grid", "10,20", "--seeds", 2, *TINY_EMM]
    single = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    multi = memaudit_torchrun(*args, "--out", tmp_path / "two")
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert comparable_emm(tmp_path / "one") == comparable_emm(tmp_path / "two")
    points = sorted(p.name for p in (tmp_path / "two" / "points").iterdir())
    assert points == sorted(p.name for p in (tmp_path / "one" / "points").iterdir()) and len(points) == 4
    assert (tmp_path / "two" / "emm.html").is_file() and multi.stdout.count("ratio by |D|") == 1


def test_data_parallel_training_follows_the_single_process_run(tmp_path, one_torch_thread):
    """Two ranks training one model (each its share of every batch, gradients averaged) reach the
    weights one process reaches, up to rounding; a different seed lands far away."""
    import dataclasses

    from safetensors.numpy import load_file

    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    result = torchrun(HERE / "ddp_worker.py", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-4000:]
    assert int(np.load(tmp_path / "two" / "world_size.npy")) == 2
    ddp_worker.train(tmp_path / "one")
    other = dataclasses.replace(ddp_worker.DDP_RECIPE, seed=6)
    from memaudit.data import load_image_set
    from memaudit.emm.training import train_ddpm

    digits = load_image_set("digits:20")
    train_ddpm(digits.images, tmp_path / "other", other, "cpu", labels=digits.labels, num_classes=10)

    def flat(folder):
        weights = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
        return np.concatenate([weights[k].ravel().astype(np.float64) for k in sorted(weights)])

    for name, tolerance in (("snapshots/step-0000001", 2e-5), ("model", 1e-3)):  # see ddp_worker.DDP_RECIPE
        one, two = flat(tmp_path / "one" / name), flat(tmp_path / "two" / name)
        assert np.linalg.norm(two - one) / np.linalg.norm(one) < tolerance, name
    reference = flat(tmp_path / "one" / "model")
    far = np.linalg.norm(flat(tmp_path / "other") - reference) / np.linalg.norm(reference)
    assert far > 1e-2
    assert not (tmp_path / "two" / "checkpoint.pt").exists()  # removed by rank 0 once the run finished


def test_emm_with_data_parallel_points(tmp_path):
    """--parallel ddp: both ranks train and audit each point together; one point folder per (size, seed)."""
    args = ["emm", "--train", "digits", "--start", 10, "--max-size", 10, "--parallel", "ddp", *TINY_EMM]
    result = memaudit_torchrun(*args, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-4000:]
    emm = json.loads((tmp_path / "run" / "emm.json").read_text())
    [point] = emm["points"]
    assert point["size"] == 10 and point["n"] == 24
    assert 0.0 <= point["memorization_ratio"] <= 1.0
    audit = json.loads((tmp_path / "run" / point["audit"] / "audit.json").read_text())
    assert audit["provenance"]["world_size"] == 2  # the point's audit ran on both ranks too
    assert audit["memorization_ratio"] == point["memorization_ratio"]
    assert len(list((tmp_path / "run" / "points").iterdir())) == 1


def test_a_snapshot_sweep_on_two_ranks_writes_what_one_process_writes(tmp_path, tiny_pipeline_dir):
    """Every snapshot of a diffusers training folder audited by both ranks together; the reference is
    one process on one thread as each rank (a UNet's output can differ in the last bit by threads)."""
    from conftest import diffusers_checkpoint_folder

    folder = diffusers_checkpoint_folder(tiny_pipeline_dir, tmp_path / "output")
    args = ["audit", folder, "--train", "digits:50", "--n", 300, "--steps", 4, "--quiet"]
    single = memaudit_torchrun(*args, "--out", tmp_path / "one", nproc=1)
    assert single.returncode == 0, single.stderr[-4000:]
    multi = memaudit_torchrun(*args, "--out", tmp_path / "two")
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    sweep = json.loads((tmp_path / "two" / "audit.json").read_text())
    assert [p["snapshot"] for p in sweep["snapshots"]["trajectory"]] == ["checkpoint-500", "checkpoint-1000"]
    for point in sweep["snapshots"]["trajectory"]:
        assert_same_run(tmp_path / "one" / point["run_dir"], tmp_path / "two" / point["run_dir"])


def test_two_nodes_joined_by_rendezvous_write_what_one_process_writes(tmp_path):
    """README's several-machines command, with two "nodes" on this machine: one torchrun launcher
    per node, one rank each, meeting at a c10d rendezvous endpoint."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["audit", "optimal", "--train", "digits:100", "--n", 300, "--seed", 11, "--quiet"]
    single = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MEMAUDIT_DIST_BACKEND": "gloo"}
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "memaudit-test",
         "-m", "memaudit", "--", *[str(a) for a in args], "--out", str(tmp_path / "two")],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in range(2)]
    outputs = [launcher.communicate(timeout=300) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], [err[-3000:] for _, err in outputs]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "audit.json").read_text())["provenance"]["world_size"] == 2
