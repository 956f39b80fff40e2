"""Train a small DDPM (diffusers UNet2DModel) on an image set and save it as a diffusers pipeline.

This is the recipe behind the demo checkpoint; the EMM retraining mode builds on it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memaudit import progress
from memaudit.torchcompat import prepare_torchvision


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    num_train_timesteps: int = 1000


def build_unet(image_shape: tuple[int, int, int], config: TrainConfig):
    prepare_torchvision()
    from diffusers import UNet2DModel

    height, width, channels = image_shape
    levels = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=(height, width),
        in_channels=channels,
        out_channels=channels,
        layers_per_block=config.layers_per_block,
        block_out_channels=config.block_out_channels,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=min(32, min(config.block_out_channels)),
    )


def train_ddpm(images: np.ndarray, out_dir: Path, config: TrainConfig = TrainConfig(), device: str = "cpu") -> Path:
    """Train an epsilon-prediction DDPM on uint8 NHWC ``images``; save the EMA model as a DDIMPipeline."""
    prepare_torchvision()
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    unet = build_unet(images.shape[1:], config).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.learning_rate)
    with progress.task("training", total=config.steps) as advance:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
            batch = data[torch.from_numpy(rng.integers(0, len(data), config.batch_size)).to(device)]
            t = torch.randint(0, config.num_train_timesteps, (len(batch),), device=device)
            noise = torch.randn_like(batch)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * batch + (1 - a).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), unet.parameters()):
                    p_ema.lerp_(p, 1.0 - config.ema_decay)
            advance()
    pipeline = DDIMPipeline(unet=ema.cpu(), scheduler=DDIMScheduler.from_config(scheduler.config))
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    record = {**asdict(config), "n_images": int(len(images)), "device": device}
    (Path(out_dir) / "memaudit_train.json").write_text(json.dumps(record, indent=2))
    return Path(out_dir)
