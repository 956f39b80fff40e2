"""EDM's preconditionings and training losses (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1): VP, VE and EDM.

A denoiser D(x; sigma) is built from a raw network F as (Table 1, "Network and preconditioning")

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))

and trained with (eq. 8 and Table 1, "Training")

    E_{sigma ~ p_train, y ~ data, n ~ N(0, sigma^2 I)} [ lambda(sigma) || D(y + n; sigma) - y ||^2 ].

Each preconditioning gives its four coefficients, its loss weight lambda(sigma), its training
noise distribution p_train and the noise range its sampler uses (sigma_min, sigma_max):
- VP (Song et al. 2021): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), beta_d = 19.9,
  beta_min = 0.1; t ~ U(eps_t, 1), eps_t = 1e-5; c_skip = 1, c_out = -sigma,
  c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) sigma^-1(sigma), M = 1000; lambda = 1 / sigma^2.
- VE (Song et al. 2021): ln sigma ~ U(ln 0.02, ln 100); c_skip = 1, c_out = sigma, c_in = 1,
  c_noise = ln(sigma / 2); lambda = 1 / sigma^2.
- EDM: ln sigma ~ N(P_mean = -1.2, P_std = 1.2); sigma_data = 0.5;
  c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
  c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4;
  lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
Gu et al. (2023) train with these through EDM's code (``--precond vp`` in their basic setup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from memaudit.errors import InputError


@dataclass(frozen=True)
class Preconditioning:
    """One row group of EDM's Table 1: coefficients, loss weight, training noise, sampling range."""

    name: str

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at noise level ``sigma`` (a tensor, any shape)."""
        raise NotImplementedError

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) of the training loss."""
        raise NotImplementedError

    def training_sigma(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Noise levels drawn from p_train, float32 on the CPU (device-independent)."""
        raise NotImplementedError

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) the network supports; EDM's sampler clips its schedule to it."""
        return (0.0, math.inf)


@dataclass(frozen=True)
class VP(Preconditioning):
    name: str = "vp"
    beta_d: float = 19.9
    beta_min: float = 0.1
    epsilon_t: float = 1e-5
    M: int = 1000

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.sqrt(torch.exp(0.5 * self.beta_d * t**2 + self.beta_min * t) - 1)

    def sigma_inverse(self, sigma):
        """t with sigma(t) = sigma: the positive root of beta_d t^2 / 2 + beta_min t = ln(1 + sigma^2)."""
        sigma = torch.as_tensor(sigma)
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)) - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return (torch.ones_like(sigma), -sigma, 1 / torch.sqrt(sigma**2 + 1), (self.M - 1) * self.sigma_inverse(sigma))

    def loss_weight(self, sigma):
        return 1 / sigma**2

    def training_sigma(self, shape, generator):
        t = self.epsilon_t + (1 - self.epsilon_t) * torch.rand(shape, generator=generator, dtype=torch.float64)
        return self.sigma(t).float()

    @property
    def sigma_range(self):
        return (float(self.sigma(self.epsilon_t)), float(self.sigma(1.0)))


@dataclass(frozen=True)
class VE(Preconditioning):
    name: str = "ve"
    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def coefficients(self, sigma):
        return (torch.ones_like(sigma), sigma, torch.ones_like(sigma), torch.log(0.5 * sigma))

    def loss_weight(self, sigma):
        return 1 / sigma**2

    def training_sigma(self, shape, generator):
        u = torch.rand(shape, generator=generator)
        return torch.exp(math.log(self.sigma_min) + u * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    @property
    def sigma_range(self):
        return (self.sigma_min, self.sigma_max)


@dataclass(frozen=True)
class EDM(Preconditioning):
    name: str = "edm"
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2

    def coefficients(self, sigma):
        total = sigma**2 + self.sigma_data**2
        return (self.sigma_data**2 / total, sigma * self.sigma_data / torch.sqrt(total), 1 / torch.sqrt(total),
                torch.log(sigma) / 4)

    def loss_weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def training_sigma(self, shape, generator):
        return torch.exp(self.p_mean + self.p_std * torch.randn(shape, generator=generator))


PRECONDITIONINGS: dict[str, Preconditioning] = {"edm": EDM(), "vp": VP(), "ve": VE()}


def get_preconditioning(name: str) -> Preconditioning:
    if name not in PRECONDITIONINGS:
        raise InputError(f"--precond {name}: unknown preconditioning; valid ones are {', '.join(PRECONDITIONINGS)}")
    return PRECONDITIONINGS[name]


class Denoiser(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), in EDM's calling convention:
    ``net(x, sigma, class_labels)`` on float32 NCHW images in [-1, 1] plus noise, labels one-hot.

    The attributes EDM's sampler and memaudit's EDM adapter read (``img_resolution``,
    ``img_channels``, ``label_dim``, ``sigma_min``, ``sigma_max``) are set from the raw network."""

    def __init__(self, model: torch.nn.Module, preconditioning: Preconditioning, *, img_resolution: int,
                 img_channels: int, label_dim: int = 0):
        super().__init__()
        self.model, self.preconditioning = model, preconditioning
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_min, self.sigma_max = preconditioning.sigma_range

    def forward(self, x, sigma, class_labels=None):
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if sigma.shape[0] == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0], 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.preconditioning.coefficients(sigma)
        labels = None if self.label_dim == 0 else (
            torch.zeros(x.shape[0], self.label_dim, device=x.device) if class_labels is None else class_labels.float())
        F_x = self.model(c_in * x, c_noise.flatten().float(), labels)
        return c_skip * x + c_out * F_x.float()

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

