"""Train a DDPM (diffusers UNet2DModel) from scratch and save it as a diffusers pipeline.

The recipe of the demo checkpoints and of the EMM retraining mode (Gu et al. 2023, section 3):
epsilon prediction on the VP/DDPM linear noise schedule, Adam (optionally with weight decay),
linear learning-rate warm-up, an EMA of the weights (the saved model), optional class labels.

Training is resumable and deterministic given the seed: every ``checkpoint_every`` steps the
weights, EMA, optimizer, step and every RNG state are written atomically to one checkpoint file,
and a run started again with the same recipe continues from it, producing the same weights as an
uninterrupted run. A killed run loses at most one checkpoint interval.

Under torchrun (``memaudit emm --parallel ddp``) the ranks train one model together with
DistributedDataParallel: every rank draws the same global batch, noise and timesteps from the
seeded generators, trains on its share of the rows, and the gradients are averaged, so the run
follows the single-process one up to floating-point rounding. Rank 0 writes checkpoints and
pipelines; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from memaudit import distributed, progress
from memaudit.emm.architectures import ARCHS, Architecture, build_unet
from memaudit.storage import fingerprint_array, fingerprint_json, write_bytes_atomic
from memaudit.torchcompat import prepare_torchvision

TRAIN_RECORD = "memaudit_train.json"
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    arch: Architecture = ARCHS["small"]
    num_train_timesteps: int = 1000
    weight_decay: float = 0.0
    ema_warmup: bool = False  # decay min(ema_decay, (1 + step) / (10 + step)): short runs keep a recent EMA
    checkpoint_every: int = 500  # steps between resumable checkpoints (when a checkpoint path is given)
    snapshot_steps: tuple[int, ...] = field(default_factory=tuple)  # extra steps whose EMA model is saved too


@dataclass
class TrainResult:
    """The saved pipelines: the final EMA model, and the snapshots as (step, path), final last."""

    model: Path
    snapshots: list[tuple[int, Path]]


def recipe_fingerprint(images: np.ndarray, labels: np.ndarray | None, num_classes: int | None,
                       config: TrainConfig) -> str:
    """What determines the trained weights: data, labels and every setting but the checkpoint interval."""
    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    return fingerprint_json({"images": fingerprint_array(images), "num_classes": num_classes, "config": settings,
                             "labels": None if labels is None else fingerprint_array(np.asarray(labels, np.int64)),
                             "format": CHECKPOINT_VERSION})


def finished_training(out_dir: Path, fingerprint: str) -> bool:
    """True when ``out_dir`` holds the pipeline this recipe trains."""
    try:
        record = json.loads((Path(out_dir) / TRAIN_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("fingerprint") == fingerprint and (Path(out_dir) / "model_index.json").is_file()


def train_ddpm(images: np.ndarray, out_dir: Path, config: TrainConfig = TrainConfig(), device: str = "cpu", *,
               labels: np.ndarray | None = None, num_classes: int | None = None, checkpoint: Path | None = None,
               snapshot_dir: Path | None = None, on_step: Callable[[int], None] | None = None,
               description: str = "training") -> TrainResult:
    """Train an epsilon-prediction DDPM on uint8 NHWC ``images``; save the EMA model as a DDIMPipeline.

    ``labels`` (int, one per image, below ``num_classes``) make the U-Net class-conditional.
    ``checkpoint`` is the file that makes the run resumable; ``snapshot_dir`` receives the EMA
    model at each of ``config.snapshot_steps`` as ``step-NNNNNNN/`` pipelines. ``on_step(step)``
    is called after each finished step (tests use it to interrupt a run); ``description`` names the
    progress bar.
    """
    prepare_torchvision()
    import torch
    from diffusers import DDPMScheduler

    out_dir = Path(out_dir)
    world = distributed.current()
    if config.batch_size < world.size:
        from memaudit.errors import InputError

        raise InputError(f"--batch-size {config.batch_size}: data-parallel training on {world.size} ranks needs a "
                         f"batch of at least {world.size} images (one per rank)")
    fingerprint = recipe_fingerprint(images, labels, num_classes, config)
    snapshot_steps = sorted({s for s in config.snapshot_steps if 0 < s < config.steps})
    snapshots = [(s, Path(snapshot_dir) / f"step-{s:07d}") for s in snapshot_steps] if snapshot_dir else []
    if finished_training(out_dir, fingerprint) and all(finished_training(p, fingerprint) for _, p in snapshots):
        return TrainResult(out_dir, [*snapshots, (config.steps, out_dir)])

    # 1. Model, EMA, optimizer, RNGs: fresh from the seed, or as the checkpoint left them.
    torch.manual_seed(config.seed)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    classes = None if labels is None else torch.as_tensor(np.asarray(labels, np.int64), device=device)
    unet = build_unet(config.arch, images.shape[1:], num_classes if labels is not None else None).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch_rng = np.random.default_rng(config.seed)  # which images go in each batch
    noise_rng = torch.Generator("cpu").manual_seed(config.seed)  # timesteps and noise, device-independent
    start = 0
    if checkpoint is not None:
        state = _load_checkpoint(Path(checkpoint), fingerprint)
        if not world.all_agree(state is not None):  # every rank resumes from the same step, or none
            state = None
        if state is not None:
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            batch_rng.bit_generator.state = json.loads(state["batch_rng"])
            noise_rng.set_state(state["noise_rng"])
            torch.set_rng_state(state["torch_rng"])  # dropout
            if torch.cuda.is_available() and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            start = int(state["step"])

    # 2. The loop: epsilon prediction on the DDPM schedule (Ho et al. 2020, Algorithm 1). With several
    #    ranks each takes its rows of the global batch; its summed loss over the global batch's element
    #    count, times the world size, averages (as DDP does) to the single-process mean loss.
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    unet.train()
    forward = _data_parallel(unet, device) if world.distributed else unet
    rows = slice(*world.row_range(config.batch_size))
    with progress.task(description, total=config.steps, completed=start) as advance:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
            index = torch.from_numpy(batch_rng.integers(0, len(data), config.batch_size)).to(device)
            batch = data[index]
            t = torch.randint(0, config.num_train_timesteps, (len(batch),), generator=noise_rng).to(device)
            noise = torch.randn(batch.shape, generator=noise_rng).to(device)
            if world.distributed:
                index, batch, t, noise = index[rows], batch[rows], t[rows], noise[rows]
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * batch + (1 - a).sqrt() * noise
            output = forward(noisy, t, class_labels=None if classes is None else classes[index]).sample
            if world.distributed:
                loss = (output - noise).square().sum() * world.size / (config.batch_size * noise[0].numel())
            else:
                loss = torch.nn.functional.mse_loss(output, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step)) if config.ema_warmup else config.ema_decay
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), unet.parameters()):
                    p_ema.lerp_(p, 1.0 - decay)
            done = step + 1
            if done in snapshot_steps and snapshot_dir is not None and world.is_main:
                _save_pipeline(ema, scheduler, Path(snapshot_dir) / f"step-{done:07d}", config, images, fingerprint,
                               device, done)
            if checkpoint is not None and config.checkpoint_every > 0 and done % config.checkpoint_every == 0 \
                    and done < config.steps:
                if world.is_main:
                    _save_checkpoint(Path(checkpoint), fingerprint, done, unet, ema, optimizer, batch_rng, noise_rng)
                world.barrier()  # no rank runs ahead of the last checkpoint
            advance()
            if on_step is not None:
                on_step(done)

    # 3. The EMA model as a pipeline; the checkpoint is no longer needed.
    if world.is_main:
        _save_pipeline(ema, scheduler, out_dir, config, images, fingerprint, device, config.steps)
        if checkpoint is not None:
            Path(checkpoint).unlink(missing_ok=True)
    world.barrier()
    return TrainResult(out_dir, [*snapshots, (config.steps, out_dir)])


def _data_parallel(unet, device: str):
    """The U-Net wrapped in DistributedDataParallel (gradients averaged over the ranks after backward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(unet, device_ids=[device] if device.startswith("cuda") else None)


def _save_pipeline(ema, scheduler, path: Path, config: TrainConfig, images, fingerprint: str, device: str,
                   step: int) -> None:
    """Save the EMA U-Net as a DDIMPipeline, atomically: written beside ``path``, then renamed."""
    from diffusers import DDIMPipeline, DDIMScheduler

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline = DDIMPipeline(unet=copy.deepcopy(ema).cpu(), scheduler=DDIMScheduler.from_config(scheduler.config))
    pipeline.save_pretrained(tmp, safe_serialization=True)
    record = {**asdict(config), "n_images": int(len(images)), "device": device, "step": step,
              "fingerprint": fingerprint}
    (tmp / TRAIN_RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _save_checkpoint(path: Path, fingerprint: str, step: int, unet, ema, optimizer, batch_rng, noise_rng) -> None:
    import torch

    state = {
        "format": CHECKPOINT_VERSION, "fingerprint": fingerprint, "step": step,
        "unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "batch_rng": json.dumps(batch_rng.bit_generator.state), "noise_rng": noise_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint's state when it belongs to this recipe; None when absent, stale or unreadable."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: start again rather than fail
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None
    return state
