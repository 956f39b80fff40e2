"""memaudit's own DDPM++ / NCSN++ U-Net (Song et al. 2021, as configured in EDM, Karras et al. 2022,
and by Gu et al. 2023 for their memorization study), the raw network F of an EDM-style denoiser.

The layout, as the papers describe it: a noise embedding (DDPM++: sinusoidal "positional" features
of c_noise; NCSN++: random Fourier features, twice as many) and an optional class embedding are
mapped by a two-layer MLP (4 x width); the encoder is a 3x3 input convolution followed, at each
resolution, by ``depth`` residual blocks (and a downsampling residual block between resolutions;
NCSN++ also carries a "residual" input pyramid), self-attention at the listed resolutions; the
middle has an attention block and a plain block; the decoder has ``depth + 1`` residual blocks per
resolution, each fed the next encoder output (the U-Net's skip connections), an upsampling block
between resolutions, and a GroupNorm-SiLU-conv head. Residual blocks scale their sum by sqrt(1/2).

``skips`` keeps or drops each encoder-to-decoder skip connection (1 or 0 per encoder output, in
encoder order), as Gu et al. (2023, section 4.2) do: a dropped skip feeds zeros, so the parameter
count does not change with the mask. Parameter counts equal EDM's ``SongUNet`` for the same
settings (tests check 35,125,251 for the paper's DDPM++ at 32x32 and 35,788,035 for NCSN++).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetShape:
    """Everything that determines the network's layers (saved beside its weights)."""

    resolution: int
    in_channels: int
    width: int = 128  # channels at multiplier 1
    multipliers: tuple[int, ...] = (2, 2, 2)
    depth: int = 2  # residual blocks per resolution in the encoder
    attention: tuple[int, ...] = (16,)
    dropout: float = 0.13
    label_dim: int = 0
    time_embedding: str = "positional"  # positional (DDPM++) or fourier (NCSN++)
    encoder: str = "standard"  # standard (DDPM++) or residual (NCSN++)
    resample_filter: tuple[int, ...] = (1, 1)  # (1, 1) for DDPM++, (1, 3, 3, 1) for NCSN++
    noise_multiplier: int = 1  # noise embedding channels = width x this (1 DDPM++, 2 NCSN++)
    skips: tuple[int, ...] | None = None  # None: every skip connection kept

    @property
    def skip_count(self) -> int:
        return len(self.multipliers) * (self.depth + 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, max(1, channels // 4)), num_channels=channels, eps=1e-6)


class Resample(nn.Module):
    """Fixed-filter 2x down- or upsampling, one channel at a time (the separable filter's outer product)."""

    def __init__(self, taps: Sequence[int], up: bool):
        super().__init__()
        kernel = torch.tensor(taps, dtype=torch.float32)
        kernel = torch.outer(kernel, kernel) / kernel.sum() ** 2
        self.register_buffer("kernel", kernel * 4 if up else kernel, persistent=False)
        self.up, self.pad = up, (len(taps) - 1) // 2

    def forward(self, x):
        channels = x.shape[1]
        weight = self.kernel.to(x.dtype).expand(channels, 1, *self.kernel.shape)
        if self.up:
            return F.conv_transpose2d(x, weight, stride=2, padding=self.pad, groups=channels)
        return F.conv2d(x, weight, stride=2, padding=self.pad, groups=channels)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the embedding as a per-channel shift, GroupNorm-SiLU-dropout-conv;
    the (projected) input added back, optional self-attention; each sum scaled by sqrt(1/2)."""

    def __init__(self, cin: int, cout: int, emb: int, *, attention=False, down=False, up=False, dropout=0.0,
                 taps=(1, 1)):
        super().__init__()
        self.norm0, self.conv0 = _group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.resample = Resample(taps, up) if (up or down) else None
        self.shift = nn.Linear(emb, cout)
        self.norm1, self.dropout = _group_norm(cout), nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.project = nn.Conv2d(cin, cout, 1) if (cin != cout or up or down) else None
        self.attention = attention
        if attention:
            self.norm2, self.qkv, self.proj = _group_norm(cout), nn.Conv2d(cout, 3 * cout, 1), nn.Conv2d(cout, cout, 1)
        self.cin, self.cout = cin, cout

    def forward(self, x, emb):
        scale = math.sqrt(0.5)
        shortcut = x
        h = F.silu(self.norm0(x))
        h = self.conv0(self.resample(h) if self.resample is not None else h)  # resampled, then convolved
        h = F.silu(self.norm1(h + self.shift(emb)[:, :, None, None]))
        h = self.conv1(self.dropout(h))
        if self.project is not None:
            shortcut = self.project(self.resample(shortcut) if self.resample is not None else shortcut)
        x = (h + shortcut) * scale
        if self.attention:
            batch, channels, height, width = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(batch, 3, channels, height * width).unbind(1)
            weights = torch.softmax(torch.einsum("bcq,bck->bqk", q, k) / math.sqrt(channels), dim=2)
            attended = torch.einsum("bqk,bck->bcq", weights, v).reshape(batch, channels, height, width)
            x = (self.proj(attended) + x) * scale
        return x


def _noise_features(c_noise: torch.Tensor, channels: int, fourier: torch.Tensor | None) -> torch.Tensor:
    """[sin, cos] features of c_noise: geometric frequencies 1 .. 1/10000 (positional) or random ones."""
    if fourier is None:
        half = channels // 2
        freqs = (1 / 10000) ** (torch.arange(half, device=c_noise.device, dtype=torch.float32) / max(1, half - 1))
        angles = c_noise.float()[:, None] * freqs[None]
    else:
        angles = c_noise.float()[:, None] * (2 * math.pi * fourier[None])
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SongUNet(nn.Module):
    """The DDPM++ / NCSN++ U-Net F(x, c_noise, labels) of ``UNetShape``."""

    def __init__(self, shape: UNetShape):
        super().__init__()
        self.shape = shape
        width, taps = shape.width, shape.resample_filter
        emb, noise = width * 4, width * shape.noise_multiplier
        block = dict(emb=emb, dropout=shape.dropout, taps=taps)
        if shape.time_embedding == "fourier":
            self.register_buffer("fourier", torch.randn(noise // 2) * 16)  # NCSN++'s scale 16
        else:
            self.fourier = None
        self.map_label = nn.Linear(shape.label_dim, noise) if shape.label_dim else None
        self.map0, self.map1 = nn.Linear(noise, emb), nn.Linear(emb, emb)

        self.enc = nn.ModuleList()  # (kind, module): kind "conv", "block" or "aux"
        self.enc_kinds: list[str] = []
        cout, caux = shape.in_channels, shape.in_channels
        for level, mult in enumerate(shape.multipliers):
            res = shape.resolution >> level
            if level == 0:
                self._add("conv", nn.Conv2d(cout, width, 3, padding=1))
                cout = width
            else:
                self._add("block", ResidualBlock(cout, cout, down=True, **block))
                if shape.encoder == "residual":  # NCSN++'s input pyramid: strided 3x3 conv after a blur
                    self._add("aux", nn.Sequential(nn.Conv2d(caux, cout, 3, padding=1), Resample(taps, up=False)))
                    caux = cout
            for _ in range(shape.depth):
                self._add("block", ResidualBlock(cout, width * mult, attention=res in shape.attention, **block))
                cout = width * mult
        skips = [m.cout if isinstance(m, ResidualBlock) else m.out_channels
                 for kind, m in zip(self.enc_kinds, self.enc) if kind != "aux"]
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(shape.multipliers))):
            res = shape.resolution >> level
            if level == len(shape.multipliers) - 1:
                self.dec.append(ResidualBlock(cout, cout, attention=True, **block))
                self.dec.append(ResidualBlock(cout, cout, **block))
            else:
                self.dec.append(ResidualBlock(cout, cout, up=True, **block))
            for index in range(shape.depth + 1):
                cin = cout + skips.pop()
                cout = width * mult
                self.dec.append(ResidualBlock(cin, cout, attention=index == shape.depth and res in shape.attention,
                                              **block))
        self.out_norm = _group_norm(cout)
        self.out_conv = nn.Conv2d(cout, shape.in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)  # starts as F = 0 (D = c_skip x)
        nn.init.zeros_(self.out_conv.bias)

    def _add(self, kind: str, module: nn.Module) -> None:
        self.enc.append(module)
        self.enc_kinds.append(kind)

    def forward(self, x, c_noise, class_labels=None):
        emb = _noise_features(c_noise.reshape(-1), self.map0.in_features, self.fourier)
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        emb = F.silu(self.map1(F.silu(self.map0(emb))))

        keep = self.shape.skips
        skips, aux = [], x
        for kind, module in zip(self.enc_kinds, self.enc):
            if kind == "aux":
                x = aux = (x + module(aux)) * math.sqrt(0.5)
                if keep is None or keep[len(skips) - 1]:
                    skips[-1] = x
                continue
            x = module(x, emb) if kind == "block" else module(x)
            skips.append(x if keep is None or keep[len(skips)] else torch.zeros_like(x))
        for module in self.dec:
            if x.shape[1] != module.cin:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
