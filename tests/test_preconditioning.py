"""EDM's preconditionings and losses (Karras et al. 2022, Table 1) and memaudit's DDPM++/NCSN++ U-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memaudit.denoisers.architectures import resolve_architecture
from memaudit.denoisers.networks import build_denoiser, load_denoiser
from memaudit.denoisers.preconditioning import PRECONDITIONINGS, Denoiser
from memaudit.denoisers.unet import SongUNet, UNetShape, count_parameters

@pytest.fixture(scope="module")
def digits():
    from memaudit.data import load_image_set

    return load_image_set("digits:50")


SIGMAS = [0.002, 0.02, 0.1, 0.5, 1.0, 2.5, 10.0, 80.0]


def _vp_sigma(t):
    return math.sqrt(math.exp(0.5 * 19.9 * t * t + 0.1 * t) - 1)


def _vp_t(sigma):
    """Inverse of sigma(t) by bisection (independent of the closed form the module uses)."""
    low, high = 0.0, 5.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _vp_sigma(middle) < sigma else (low, middle)
    return (low + high) / 2


# Table 1 of the EDM paper, written out per row: (c_skip, c_out, c_in, c_noise, lambda)
TABLE_1 = {
    "vp": lambda s: (1.0, -s, 1 / math.sqrt(s * s + 1), 999 * _vp_t(s), 1 / s**2),
    "ve": lambda s: (1.0, s, 1.0, math.log(s / 2), 1 / s**2),
    "edm": lambda s: (0.25 / (s * s + 0.25), s * 0.5 / math.sqrt(s * s + 0.25), 1 / math.sqrt(s * s + 0.25),
                      math.log(s) / 4, (s * s + 0.25) / (s * 0.5) ** 2),
}


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_coefficients_and_loss_weights_equal_table_1(name):
    precond = PRECONDITIONINGS[name]
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    got = [c.numpy() for c in precond.coefficients(sigma)] + [precond.loss_weight(sigma).numpy()]
    expected = np.array([TABLE_1[name](s) for s in SIGMAS]).T
    for index, label in enumerate(["c_skip", "c_out", "c_in", "c_noise", "lambda"]):
        np.testing.assert_allclose(np.broadcast_to(got[index], len(SIGMAS)), expected[index], rtol=1e-9,
                                   err_msg=f"{name} {label}")
    # EDM's design rule: lambda(sigma) = 1 / c_out(sigma)^2 for all three (Table 1, Appendix B.6)
    np.testing.assert_allclose(got[4], 1 / got[1] ** 2, rtol=1e-12)


def test_training_noise_distributions():
    generator = torch.Generator().manual_seed(0)
    edm = torch.log(PRECONDITIONINGS["edm"].training_sigma((40000,), generator)).double()
    assert abs(edm.mean().item() + 1.2) < 0.03 and abs(edm.std().item() - 1.2) < 0.03  # ln sigma ~ N(-1.2, 1.2^2)
    ve = torch.log(PRECONDITIONINGS["ve"].training_sigma((40000,), generator)).double()
    assert ve.min() >= math.log(0.02) - 1e-6 and ve.max() <= math.log(100) + 1e-6
    assert abs(ve.mean().item() - (math.log(0.02) + math.log(100)) / 2) < 0.05  # ln sigma uniform
    vp = PRECONDITIONINGS["vp"].training_sigma((40000,), generator).double()
    t = (torch.sqrt(0.01 + 2 * 19.9 * torch.log1p(vp**2)) - 0.1) / 19.9
    assert t.min() >= 1e-5 - 1e-7 and t.max() <= 1 + 1e-6 and abs(t.mean().item() - 0.5) < 0.01  # t ~ U(eps_t, 1)
    low, high = PRECONDITIONINGS["vp"].sigma_range
    assert low == pytest.approx(_vp_sigma(1e-5), rel=1e-9) and high == pytest.approx(_vp_sigma(1.0), rel=1e-9)


class Probe(torch.nn.Module):
    """A raw network that records what it is given and returns a fixed function of it."""

    def forward(self, x, c_noise, labels=None):
        self.seen = (x.clone(), c_noise.clone())
        return torch.sin(x) + c_noise.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_denoiser_applies_the_preconditioning(name):
    probe = Probe()
    net = Denoiser(probe, PRECONDITIONINGS[name], img_resolution=4, img_channels=1)
    x = torch.randn(len(SIGMAS), 1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = net(x, torch.tensor(SIGMAS))
    for i, s in enumerate(SIGMAS):
        c_skip, c_out, c_in, c_noise, _ = TABLE_1[name](s)
        np.testing.assert_allclose(probe.seen[0][i].numpy(), (c_in * x[i]).numpy(), rtol=1e-5, atol=1e-6)
        assert probe.seen[1][i].item() == pytest.approx(c_noise, rel=1e-5, abs=1e-5)
        expected = c_skip * x[i].double() + c_out * (torch.sin(c_in * x[i].double()) + c_noise)
        np.testing.assert_allclose(out[i].double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * max(1, abs(c_out)))


@pytest.mark.parametrize("name", ["edm", "vp", "ve"])
def test_a_few_training_steps_use_table_1s_loss_and_save_a_loadable_denoiser(name, digits, tmp_path, one_torch_thread):
    """Three training steps of a tiny model: the loop's loss equals lambda(sigma) ||D(y + n) - y||^2
    summed over pixels and averaged over the batch, at the loop's own sigmas; the saved folder
    loads back (safetensors + JSON) to the same function."""
    from memaudit.retraining.training import OBJECTIVES, TrainConfig, train_model

    config = TrainConfig(steps=3, batch_size=8, learning_rate=1e-3, warmup_steps=1, ema_decay=0.0,
                         arch=resolve_architecture("tiny"), precond=name)
    images = digits.images[:16]
    # the loss the loop computes at its first step, recomputed from the formula
    torch.manual_seed(0)
    objective = OBJECTIVES[name](config, images.shape[1:], None, "cpu")
    batch = torch.from_numpy(images[:8]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    sigma, noise = objective.draw(8, batch.shape[1:], torch.Generator().manual_seed(3))
    loss = objective.loss_sum(objective.model, batch, None, sigma, noise) / 8
    reference = 0.0
    with torch.no_grad():
        for i in range(8):
            s = float(sigma[i])
            c_skip, c_out, c_in, c_noise, weight = TABLE_1[name](s)
            raw = objective.model.model(c_in * (batch[i:i + 1] + s * noise[i:i + 1]), torch.tensor([c_noise]), None)
            denoised = c_skip * (batch[i:i + 1] + s * noise[i:i + 1]) + c_out * raw
            reference += weight * (denoised - batch[i:i + 1]).double().square().sum().item() / 8
    assert loss.item() == pytest.approx(reference, rel=1e-4)

    trained = train_model(images, tmp_path / name, config)
    net = load_denoiser(trained.model)
    assert net.preconditioning.name == name and (net.sigma_min, net.sigma_max) == PRECONDITIONINGS[name].sigma_range
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    again = load_denoiser(trained.model)
    torch.testing.assert_close(net(x, torch.tensor([0.3, 3.0])), again(x, torch.tensor([0.3, 3.0])))


def test_parameter_counts_equal_edms_songunet():
    """EDM's SongUNet with Gu et al.'s settings (channel_mult 2-2-2, 2 blocks, width 128, attention at
    16, 32x32 RGB) counts 35,125,251 parameters as DDPM++ and 35,788,035 as NCSN++ (counted by
    running NVlabs/edm's training/networks.py)."""
    ddpmpp = build_denoiser(resolve_architecture("ddpmpp"), "vp", (32, 32, 3))
    ncsnpp = build_denoiser(resolve_architecture("ncsnpp"), "ve", (32, 32, 3))
    assert count_parameters(ddpmpp) == 35_125_251
    assert count_parameters(ncsnpp) == 35_788_035
    # the skip mask keeps the parameter count (a dropped skip feeds zeros, as in Gu et al.'s code)
    masked = build_denoiser(resolve_architecture("ddpmpp", skips="1,0,0,0,0,0,0,0,1"), "vp", (32, 32, 3))
    assert count_parameters(masked) == 35_125_251


def test_skip_mask_cuts_the_encoder_from_the_decoder():
    """With every skip dropped, changing the encoder's high-resolution features cannot reach the output
    except through the bottleneck; with every skip kept, a dropped single skip changes the output."""
    torch.manual_seed(0)
    shape = UNetShape(resolution=8, in_channels=1, width=16, multipliers=(1, 2), depth=1, attention=(), dropout=0.0)
    full = SongUNet(shape)
    torch.nn.init.normal_(full.out_conv.weight)
    masked = SongUNet(UNetShape(**{**shape.__dict__, "skips": (0, 1, 1, 1)}))
    masked.load_state_dict(full.state_dict())
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    assert not torch.allclose(full(x, c), masked(x, c))
    all_kept = SongUNet(UNetShape(**{**shape.__dict__, "skips": (1, 1, 1, 1)}))
    all_kept.load_state_dict(full.state_dict())
    torch.testing.assert_close(full(x, c), all_kept(x, c))
    assert count_parameters(masked) == count_parameters(full)


def test_bad_factor_values_are_one_line_errors():
    from memaudit.errors import InputError

    with pytest.raises(InputError, match="--skips 1,0: ddpmpp with depth 2 has 9 skip connections"):
        resolve_architecture("ddpmpp", skips="1,0")
    with pytest.raises(InputError, match="--time-embedding sine: expected one of positional, fourier"):
        resolve_architecture("tiny", time_embedding="sine")
    with pytest.raises(InputError, match="--skips 1,2: expected all or a comma-separated 0/1 mask"):
        resolve_architecture("tiny", skips="1,2")
