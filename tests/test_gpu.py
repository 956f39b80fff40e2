"""The CUDA path; skipped cleanly on machines without a GPU (CI has none)."""

import numpy as np
import pytest
import torch

from memaudit.adapters import SamplerOptions, load_model
from memaudit.data import load_image_set
from memaudit.devices import resolve_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_picks_cuda():
    assert resolve_device("auto") == "cuda"


def test_optimal_samples_on_cuda_match_cpu():
    train = load_image_set("digits:100")
    seeds = list(range(64))
    cpu = load_model("optimal", train, SamplerOptions(device="cpu")).sample(seeds, 64)
    gpu = load_model("optimal", train, SamplerOptions(device="cuda")).sample(seeds, 64)
    np.testing.assert_array_equal(gpu, cpu)  # same seeds, float64 both sides, converged onto training images


def test_diffusers_samples_on_cuda_match_cpu(tiny_pipeline_dir):
    train = load_image_set("digits:50")
    seeds = list(range(16))
    cpu = load_model(str(tiny_pipeline_dir), train, SamplerOptions(steps=10, device="cpu")).sample(seeds, 16)
    gpu = load_model(str(tiny_pipeline_dir), train, SamplerOptions(steps=10, device="cuda")).sample(seeds, 16)
    # Same noise from CPU generators; only float rounding differs between devices.
    assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 2


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_diffusers_sampling_on_cuda(tiny_pipeline_dir, dtype):
    train = load_image_set("digits:50")
    seeds = list(range(16))
    full = load_model(str(tiny_pipeline_dir), train, SamplerOptions(steps=10, device="cuda")).sample(seeds, 16)
    half_model = load_model(str(tiny_pipeline_dir), train, SamplerOptions(steps=10, device="cuda", dtype=dtype))
    half = half_model.sample(seeds, 16)
    assert half.dtype == np.uint8 and half.shape == full.shape
    # Half precision keeps the seeds' noise but not bit-exact batch-size invariance: cuDNN picks
    # kernels per batch shape and fp16/bf16 sums round differently (seen on an H100: up to 7 levels).
    rebatched = half_model.sample(seeds, 4)
    assert np.abs(rebatched.astype(int) - half.astype(int)).mean() < 1.0
    assert np.abs(full.astype(int) - half.astype(int)).mean() < 8  # same images up to rounding


def test_text_to_image_on_cuda_fp16(tiny_sd_pipeline_dir, tmp_path):
    from memaudit.data import ImageSet

    train = ImageSet(np.zeros((2, 16, 16, 3), np.uint8), ["a", "b"], "captioned", captions=["a cat", "a dog"])
    model = load_model(str(tiny_sd_pipeline_dir), train, SamplerOptions(steps=3, device="cuda", dtype="fp16", prompts="train"))
    images = model.sample([0, 1, 2, 3], 4)
    assert images.shape == (4, 16, 16, 3)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_search_on_the_gpu_is_exact(metric):
    from memaudit.search import SearchInfo, knn

    rng = np.random.default_rng(0)
    database = rng.integers(0, 256, (5000, 192), dtype=np.uint8)
    queries = np.concatenate([database[:50], rng.integers(0, 256, (50, 192), dtype=np.uint8)])
    info = SearchInfo("", "", 0, "")
    scores, indices = knn(queries, database, 3, metric=metric, block_bytes=1 << 20, info=info)
    assert info.device in ("faiss-gpu", "torch-cuda")
    q, d = queries.astype(np.float64), database.astype(np.float64)
    if metric == "l2":
        exact = ((q[:, None, :] - d[None]) ** 2).sum(-1)
        order = np.lexsort((np.broadcast_to(np.arange(len(d)), exact.shape), exact), axis=1)[:, :3]
        np.testing.assert_allclose(scores, np.sqrt(np.take_along_axis(exact, order, 1)), rtol=1e-6)
    else:
        exact = -(q @ d.T)
        order = np.lexsort((np.broadcast_to(np.arange(len(d)), exact.shape), exact), axis=1)[:, :3]
    np.testing.assert_array_equal(indices, order)


def test_feature_extraction_on_cuda_matches_cpu(tmp_path):
    from memaudit.features import get_space

    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 6).flatten(1)

    path = tmp_path / "pool.pt"
    torch.jit.script(Pool()).save(str(path))
    images = load_image_set("digits:60").images
    cpu = get_space(f"sscd:{path}", "cpu").extract(images)
    gpu = get_space(f"sscd:{path}", "cuda").extract(images)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (one per rank)")
def test_two_gpu_ranks_over_nccl_write_what_one_process_writes(tmp_path):
    """torchrun on two GPUs: NCCL, one GPU per rank (cuda:LOCAL_RANK), the same run as one process."""
    from test_distributed import assert_same_run, memaudit_torchrun, runner

    from memaudit.cli import app

    args = ["audit", "optimal", "--train", "digits:200", "--n", 300, "--quiet"]
    single = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    multi = memaudit_torchrun(*args, "--out", tmp_path / "two", env={"MEMAUDIT_DIST_BACKEND": "nccl"})
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    import json

    provenance = json.loads((tmp_path / "two" / "audit.json").read_text())["provenance"]
    assert provenance["backend"] == "nccl" and provenance["device"] == "cuda:0"
