"""How a seed becomes a sample's initial noise (and class label) for models sampled with EDM's sampler.

- ``edm`` (the default): exactly EDM's ``generate.py`` (``StackedRandomGenerator``) and
  DiffMemorize's ``generate_optim.py`` / ``mem_ratio.py``: seed s seeds a ``torch.Generator`` on
  the sampling device with ``s % 2**32``, draws float32 ``randn`` of shape [C, H, W], then the
  class label with ``randint`` from the same generator; stochastic samplers draw their churn noise
  from it too. Seeds 0-9999 give the paper's own samples (on the same device kind: a CUDA
  generator draws other numbers than a CPU one).
- ``legacy``: memaudit's earlier scheme, for comparisons with older audits: a CPU generator per
  seed; EDM networks drew float64 [C, H, W] noise, the ``optimal`` model float32 noise laid out
  pixel-major [H, W, C]; class labels came from a separate numpy stream (``conditioning``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from memaudit.errors import InputError

SEEDINGS: dict[str, str] = {
    "edm": "EDM generate.py: torch.Generator(device).manual_seed(seed % 2**32), float32 randn [C,H,W], "
           "then the class label by randint from the same generator",
    "legacy": "memaudit <= 0.x: CPU generator per seed, float64 [C,H,W] noise (optimal: float32 [H,W,C]), "
              "class labels from a separate numpy stream",
}
DEFAULT_SEEDING = "edm"
# How the models that draw their own noise seed it (recorded, not selectable).
OWN_SEEDINGS: dict[str, str] = {
    "diffusers": "diffusers: torch.Generator('cpu').manual_seed(seed) per sample, passed to the pipeline",
    "adapter": "the adapter's own, from each seed alone",
}


def check_seeding(name: str | None) -> str:
    """The seeding scheme to use (``None``: the default), or ``InputError`` listing the valid ones."""
    name = name or DEFAULT_SEEDING
    if name not in SEEDINGS:
        raise InputError(f"--seeding {name}: unknown seeding; valid: {', '.join(SEEDINGS)}")
    return name


def describe_seeding(settings: dict) -> dict:
    """audit.json's record of how a run's seeds became noise, from the adapter's settings."""
    name = settings.get("seeding") or ("diffusers" if settings.get("adapter") == "diffusers" else "adapter")
    return {"name": name, "description": {**SEEDINGS, **OWN_SEEDINGS}.get(name, name),
            "noise_device": settings.get("noise_device")}


def generator_device(device: str) -> str:
    """The device kind whose generator draws the noise: part of the samples' cache key, since a
    CUDA generator draws other numbers than a CPU one for the same seed."""
    import torch

    return torch.device(device).type


@dataclass
class SeedDraw:
    """The initial noise of a batch of seeds, each sample from its own seed alone."""

    latents: object  # torch tensor [B, C, H, W], unit variance
    label_draws: object | None  # int64 tensor [B]: randint(label_range) per seed (edm), else None
    randn_like: Callable | None  # churn noise, per seed from the same generators (edm), else None


def draw(seeding: str, seeds: Sequence[int], shape_chw: tuple[int, int, int], device: str,
         label_range: int = 0, legacy_pixel_major: bool = False) -> SeedDraw:
    """Initial noise (and label draws) for ``seeds`` under ``seeding``; see the module docstring."""
    import torch

    if seeding == "edm":
        generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]
        latents = torch.stack([torch.randn(shape_chw, generator=g, device=device) for g in generators])
        labels = None
        if label_range:
            labels = torch.stack([torch.randint(label_range, size=[], generator=g, device=device) for g in generators])

        def randn_like(x):
            return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, layout=x.layout, device=x.device)
                                for g in generators])

        return SeedDraw(latents, labels, randn_like)
    if seeding == "legacy":
        channels, height, width = shape_chw
        if legacy_pixel_major:
            flat = [torch.randn(channels * height * width, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
            latents = torch.stack(flat).reshape(len(seeds), height, width, channels).permute(0, 3, 1, 2)
        else:
            latents = torch.stack([torch.randn(shape_chw, generator=torch.Generator().manual_seed(int(s)),
                                               dtype=torch.float64) for s in seeds])
        return SeedDraw(latents.to(device), None, None)
    raise InputError(f"--seeding {seeding}: unknown seeding; valid: {', '.join(SEEDINGS)}")
