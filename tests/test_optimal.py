import numpy as np
import pytest
import torch

from memaudit.adapters import SamplerOptions, load_model
from memaudit.adapters.edm import edm_sigmas
from memaudit.adapters.optimal import OptimalDenoiser
from memaudit.criteria import nn_ratio
from memaudit.data import load_image_set
from memaudit.search import knn


def reference_denoiser(x, train_images, sigma):
    """D*(x; sigma) straight from the formula, in numpy float64."""
    y = train_images.reshape(len(train_images), -1).astype(np.float64) / 127.5 - 1.0
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    logits = -d2 / (2 * sigma**2)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    return weights @ y


@pytest.mark.parametrize("sigma", [80.0, 2.0, 0.3, 0.02])
def test_denoiser_matches_formula_across_blocks(sigma):
    train = load_image_set("digits:100").images
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 64)) * sigma + train[:9].reshape(9, -1) / 127.5 - 1.0
    denoiser = OptimalDenoiser(train)
    denoiser.block = 7  # many blocks: exercises the streaming softmax
    got = denoiser(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(got, reference_denoiser(x, train, sigma), rtol=1e-9, atol=1e-12)


def test_edm_sigmas_match_paper_settings():
    sigmas = edm_sigmas(18)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002)
    assert np.all(np.diff(sigmas) < 0)


def test_optimal_model_reproduces_training_images():
    train = load_image_set("digits:100")
    model = load_model("optimal", train, SamplerOptions())
    samples = model.sample(list(range(200)), batch_size=64)
    distances, _ = knn(samples, train.images, 2)
    assert nn_ratio(distances).memorized.mean() >= 0.99
    # Not just memorized but pixel-exact copies of training images.
    assert (distances[:, 0] == 0).mean() >= 0.99


def test_pure_noise_is_not_memorized():
    train = load_image_set("digits:100")
    noise = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    distances, _ = knn(noise, train.images, 2)
    assert nn_ratio(distances).memorized.sum() == 0


def test_optimal_samples_do_not_depend_on_batch_size():
    train = load_image_set("digits:50")
    model = load_model("optimal", train, SamplerOptions(steps=8))
    seeds = list(range(100, 123))
    reference = model.sample(seeds, batch_size=23)
    for batch_size in (1, 5, 16):
        np.testing.assert_array_equal(model.sample(seeds, batch_size=batch_size), reference)
    # and sample i depends on its own seed only
    np.testing.assert_array_equal(model.sample(seeds[7:9], batch_size=2), reference[7:9])


def test_fingerprint_follows_training_set_and_steps():
    a, b = load_image_set("digits:50"), load_image_set("digits:60")
    fp = lambda s, steps: load_model("optimal", s, SamplerOptions(steps=steps)).fingerprint()  # noqa: E731
    assert fp(a, 18) == fp(a, 18)
    assert len({fp(a, 18), fp(b, 18), fp(a, 10)}) == 3
