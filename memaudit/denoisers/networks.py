"""EDM-style denoisers trained by memaudit: built from an architecture and a preconditioning, saved
as a folder (``model.safetensors`` + ``memaudit_denoiser.json``) that ``memaudit audit`` loads
without unpickling anything (no ``--trust-checkpoint``): the JSON names memaudit's own network
class and its shape, the safetensors file holds the weights (the Fourier frequencies included).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from memaudit.denoisers.architectures import Architecture
from memaudit.errors import ModelError

# torch-backed modules (preconditioning, unet) are imported inside the functions: recognising a
# denoiser folder (the adapter registry does it for every MODEL argument) must not import torch.

DENOISER_JSON = "memaudit_denoiser.json"
WEIGHTS = "model.safetensors"
FORMAT = "memaudit-edm-denoiser"
FORMAT_VERSION = 1


def unet_shape(arch: Architecture, image_shape: tuple[int, int, int], label_dim: int = 0):
    from memaudit.denoisers.unet import UNetShape

    height, width, channels = image_shape
    return UNetShape(resolution=height, in_channels=channels, width=arch.width, multipliers=tuple(arch.multipliers),
                     depth=arch.depth, attention=tuple(arch.attention), dropout=arch.dropout, label_dim=label_dim,
                     time_embedding=arch.time_embedding, encoder=arch.encoder,
                     resample_filter=tuple(arch.resample_filter), noise_multiplier=arch.noise_multiplier,
                     skips=None if arch.skips is None else tuple(arch.skips))


def build_denoiser(arch: Architecture, precond: str, image_shape: tuple[int, int, int],
                   label_dim: int = 0):
    """A freshly initialised denoiser (call after seeding torch: the initial weights and, for Fourier
    embeddings, the random frequencies come from torch's global generator)."""
    from memaudit.denoisers.preconditioning import Denoiser, get_preconditioning
    from memaudit.denoisers.unet import SongUNet

    shape = unet_shape(arch, image_shape, label_dim)
    if image_shape[0] != image_shape[1]:
        raise ModelError(f"--precond {precond}: the DDPM++/NCSN++ U-Net needs square images, got "
                         f"{image_shape[0]}x{image_shape[1]}")
    return Denoiser(SongUNet(shape), get_preconditioning(precond), img_resolution=image_shape[0],
                    img_channels=image_shape[2], label_dim=label_dim)


def save_denoiser(net, path: Path, extra: dict | None = None) -> None:
    """Write the weights and the JSON that rebuilds the network into the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.model.state_dict().items()}
    save_file(state, str(path / WEIGHTS))
    record = {"format": FORMAT, "version": FORMAT_VERSION, "preconditioning": net.preconditioning.name,
              "unet": asdict(net.model.shape), **(extra or {})}
    (path / DENOISER_JSON).write_text(json.dumps(record, indent=2))


def is_denoiser_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / DENOISER_JSON).is_file()


def load_denoiser(path: Path, device: str = "cpu"):
    """The denoiser saved in folder ``path``; ``ModelError`` naming the file when it cannot be read."""
    from safetensors.torch import load_file

    from memaudit.denoisers.preconditioning import PRECONDITIONINGS, Denoiser
    from memaudit.denoisers.unet import SongUNet, UNetShape

    path = Path(path)
    try:
        record = json.loads((path / DENOISER_JSON).read_text())
        if record.get("format") != FORMAT or record.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {record.get('format')!r} version {record.get('version')!r}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in record["unet"].items()}
        shape = UNetShape(**fields)
        net = Denoiser(SongUNet(shape), PRECONDITIONINGS[record["preconditioning"]],
                       img_resolution=shape.resolution, img_channels=shape.in_channels, label_dim=shape.label_dim)
        net.model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"{path}: not a readable memaudit denoiser folder ({DENOISER_JSON} + {WEIGHTS}): "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return net.eval().requires_grad_(False).to(device)
