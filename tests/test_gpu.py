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
