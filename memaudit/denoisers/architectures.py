"""U-Net presets for training from scratch: diffusers ``UNet2DModel`` shapes by name.

Presets register in ``ARCHS`` by kebab-case name. Each gives a base width, per-level channel
multipliers, residual blocks per level and the resolutions that get self-attention; ``--width``,
``--depth`` and ``--attention`` override the preset's values.

- ``tiny``: a ~0.27M-parameter U-Net that trains on 8x8 digits in minutes on a laptop CPU.
- ``small``: the demo checkpoints' U-Net (~1M parameters).
- ``ddpmpp-32``: the DDPM/DDPM++ CIFAR-10 32x32 layout (Ho et al. 2020; Song et al. 2021) in
  diffusers' UNet2DModel: width 128, multipliers 1-2-2-2, 2 blocks per level, attention at 16x16,
  about 35.7M parameters (``--precond ddpm`` only).
- ``ddpmpp`` and ``ncsnpp``: the U-Nets of Gu et al. (2023) through EDM's code (``SongUNet``, here
  ``memaudit.denoisers.unet``): width 128, multipliers 2-2-2, 2 blocks per level, attention at 16x16,
  dropout 0.13; DDPM++ with positional time embedding, NCSN++ with Fourier features, a residual
  input pyramid and the (1, 3, 3, 1) resampling filter. 35,125,251 and 35,788,035 parameters at
  32x32 RGB, as EDM's code counts them (``--precond edm|vp|ve``).

Presets are shapes; the preconditioning decides the implementation: ``--precond ddpm`` builds a
diffusers ``UNet2DModel``, ``edm``/``vp``/``ve`` memaudit's DDPM++/NCSN++ ``SongUNet``, which also
honours ``--time-embedding`` and ``--skips`` (the paper's factors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from memaudit.errors import InputError


@dataclass(frozen=True)
class Architecture:
    """A U-Net shape: channels = width x multipliers per level, ``depth`` blocks per level."""

    width: int
    multipliers: tuple[int, ...]
    depth: int
    attention: tuple[int, ...] = ()  # feature-map resolutions (pixels per side) with self-attention
    dropout: float = 0.0
    time_embedding: str = "positional"  # positional (DDPM++) or fourier (NCSN++): SongUNet only
    encoder: str = "standard"  # standard (DDPM++) or residual (NCSN++): SongUNet only
    resample_filter: tuple[int, ...] = (1, 1)
    noise_multiplier: int = 1
    skips: tuple[int, ...] | None = None  # the paper's skip-connection mask, encoder order: SongUNet only

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.width * m for m in self.multipliers)


ARCHS: dict[str, Architecture] = {
    "tiny": Architecture(width=16, multipliers=(1, 2, 2), depth=1),
    "small": Architecture(width=32, multipliers=(1, 2, 2), depth=1),
    "ddpmpp-32": Architecture(width=128, multipliers=(1, 2, 2, 2), depth=2, attention=(16,), dropout=0.1),
    "ddpmpp": Architecture(width=128, multipliers=(2, 2, 2), depth=2, attention=(16,), dropout=0.13),
    "ncsnpp": Architecture(width=128, multipliers=(2, 2, 2), depth=2, attention=(16,), dropout=0.13,
                           time_embedding="fourier", encoder="residual", resample_filter=(1, 3, 3, 1),
                           noise_multiplier=2),
}
TIME_EMBEDDINGS = ("positional", "fourier")


def parse_skips(text: str) -> tuple[int, ...] | None:
    """``--skips``: ``all`` or a 0/1 mask such as ``1,0,1,...`` (one per encoder output)."""
    if text.strip().lower() == "all":
        return None
    values = tuple(v.strip() for v in text.replace("+", ",").split(","))
    if not values or any(v not in ("0", "1") for v in values):
        raise InputError(f"--skips {text}: expected all or a comma-separated 0/1 mask such as 1,0,1,1,1,1")
    return tuple(int(v) for v in values)


def parse_attention(text: str) -> tuple[int, ...]:
    """``--attention``: comma-separated resolutions (``16`` or ``16,8``) or ``none``."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise InputError(f"--attention {text}: expected none or comma-separated resolutions such as 16 or 16,8")
    return values


def resolve_architecture(name: str, width: int | None = None, depth: int | None = None,
                         attention: str | None = None, time_embedding: str | None = None,
                         skips: str | None = None) -> Architecture:
    """The preset ``name`` with any overrides applied; ``InputError`` for unknown names or bad values."""
    if name not in ARCHS:
        raise InputError(f"--arch {name}: unknown architecture; valid presets are {', '.join(ARCHS)}")
    arch = ARCHS[name]
    if width is not None:
        if width < 1:
            raise InputError(f"--width {width}: the base channel count must be at least 1")
        arch = replace(arch, width=width)
    if depth is not None:
        if depth < 1:
            raise InputError(f"--depth {depth}: the number of blocks per level must be at least 1")
        arch = replace(arch, depth=depth)
    if attention is not None:
        arch = replace(arch, attention=parse_attention(attention))
    if time_embedding is not None:
        if time_embedding not in TIME_EMBEDDINGS:
            raise InputError(f"--time-embedding {time_embedding}: expected one of {', '.join(TIME_EMBEDDINGS)}")
        # Fourier features come with NCSN++'s twice-as-wide noise embedding (EDM's configuration)
        arch = replace(arch, time_embedding=time_embedding, noise_multiplier=2 if time_embedding == "fourier" else 1)
    if skips is not None:
        mask = parse_skips(skips)
        count = len(arch.multipliers) * (arch.depth + 1)
        if mask is not None and len(mask) != count:
            raise InputError(f"--skips {skips}: {name} with depth {arch.depth} has {count} skip connections "
                             f"({len(arch.multipliers)} levels x {arch.depth + 1}); give {count} values or all")
        arch = replace(arch, skips=mask)
    return arch


def check_precond_fits(arch: Architecture, precond: str) -> None:
    """diffusers' UNet2DModel (``--precond ddpm``) has no Fourier embedding, NCSN++ pyramid or skip mask."""
    if precond == "ddpm" and (arch.time_embedding != "positional" or arch.encoder != "standard" or arch.skips):
        raise InputError("--precond ddpm: the diffusers U-Net has no Fourier time embedding, residual encoder or "
                         "skip mask; use --precond edm, vp or ve for these (or another --arch)")


# presets laid out as diffusers' UNet2DModel: trained only with --precond ddpm, which builds that model
DDPM_ONLY_PRESETS = ("ddpmpp-32",)


def check_preset_precond(preset: str, precond: str) -> None:
    if preset in DDPM_ONLY_PRESETS and precond != "ddpm":
        raise InputError(f"--arch {preset} --precond {precond}: {preset} is diffusers' layout, trained with "
                         "--precond ddpm only; for edm, vp or ve take --arch ddpmpp (the paper's DDPM++) or ncsnpp")


def check_fits(arch: Architecture, height: int, width: int, name: str = "--arch") -> None:
    """The images must halve evenly at each of the U-Net's downsamplings."""
    factor = 2 ** (len(arch.multipliers) - 1)
    if height % factor or width % factor:
        raise InputError(f"{name}: {len(arch.multipliers)} levels need image sides divisible by {factor}, "
                         f"the images are {height}x{width}; use --resolution or another preset")


def build_unet(arch: Architecture, image_shape: tuple[int, int, int], num_class_embeds: int | None = None):
    """A freshly initialised ``UNet2DModel`` of this shape for (H, W, C) images (class-conditional
    when ``num_class_embeds`` is set)."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    from diffusers import UNet2DModel

    height, width, channels = image_shape
    check_fits(arch, height, width)
    resolutions = [height // 2**level for level in range(len(arch.multipliers))]
    attends = [r in arch.attention for r in resolutions]
    return UNet2DModel(
        sample_size=(height, width),
        in_channels=channels,
        out_channels=channels,
        layers_per_block=arch.depth,
        block_out_channels=arch.channels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        norm_num_groups=min(32, math.gcd(*arch.channels)),
        dropout=arch.dropout,
        num_class_embeds=num_class_embeds,
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
