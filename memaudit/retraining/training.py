"""Train a diffusion model from scratch: a DDPM (diffusers UNet2DModel) or an EDM-style denoiser.

Two objectives share one loop (Adam, optionally with weight decay, linear learning-rate warm-up,
an EMA of the weights that is the saved model, optional class labels), chosen by
``TrainConfig.precond`` from ``OBJECTIVES``:
- ``ddpm``: epsilon prediction on the DDPM linear noise schedule (Ho et al. 2020, Algorithm 1),
  saved as a diffusers DDIMPipeline (the demo checkpoints' recipe);
- ``edm``, ``vp``, ``ve``: EDM's preconditionings and losses (Karras et al. 2022, Table 1;
  ``memaudit.denoisers.preconditioning``) on memaudit's DDPM++/NCSN++ U-Net, saved as safetensors +
  JSON (``memaudit.denoisers.networks``) and sampled with EDM's Heun sampler, as Gu et al. (2023) train
  and audit their models. The loss is EDM's: lambda-weighted squared error summed over pixels,
  averaged over the batch.

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
from memaudit.denoisers.architectures import ARCHS, Architecture, build_unet
from memaudit.denoisers.networks import build_denoiser, save_denoiser
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
    precond: str = "ddpm"  # ddpm, or EDM's edm, vp, ve (see OBJECTIVES)


@dataclass
class TrainResult:
    """The saved pipelines: the final EMA model, and the snapshots as (step, path), final last."""

    model: Path
    snapshots: list[tuple[int, Path]]


def recipe_fingerprint(images: np.ndarray, labels: np.ndarray | None, num_classes: int | None,
                       config: TrainConfig) -> str:
    """What determines the training trajectory: data, labels and every setting but the checkpoint
    interval, the number of steps and the snapshot steps. Nothing in the loop depends on the total
    (the learning rate warms up and stays, the EMA decay does not look ahead), so the weights at step
    S are a function of this fingerprint and S: a longer training continues a shorter one exactly."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_every", "steps", "snapshot_steps")}
    return fingerprint_json({"images": fingerprint_array(images), "num_classes": num_classes, "config": settings,
                             "labels": None if labels is None else fingerprint_array(np.asarray(labels, np.int64)),
                             "format": CHECKPOINT_VERSION})


def finished_training(out_dir: Path, fingerprint: str, step: int | None = None) -> bool:
    """True when ``out_dir`` holds the model this recipe trains (a pipeline or a denoiser folder), at
    ``step`` when given."""
    try:
        record = json.loads((Path(out_dir) / TRAIN_RECORD).read_text())
    except (OSError, ValueError):
        return False
    saved = [(Path(out_dir) / name).is_file() for name in ("model_index.json", "memaudit_denoiser.json")]
    return record.get("fingerprint") == fingerprint and any(saved) and step in (None, record.get("step"))


class DDPMObjective:
    """Epsilon prediction on the DDPM schedule; the model is a diffusers UNet2DModel."""

    def __init__(self, config: TrainConfig, image_shape, num_classes: int | None, device: str):
        from diffusers import DDPMScheduler

        self.config, self.num_classes = config, num_classes
        self.model = build_unet(config.arch, image_shape, num_classes).to(device)
        self.scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)

    def draw(self, batch_size: int, shape, generator):
        """The batch's random draws from the seeded CPU generator: timesteps, then noise."""
        import torch

        t = torch.randint(0, self.config.num_train_timesteps, (batch_size,), generator=generator)
        return t, torch.randn((batch_size, *shape), generator=generator)

    def loss_sum(self, forward, batch, classes, level, noise):
        """Summed loss of these rows; the loop divides by the global batch's element count."""
        a = self.alphas_cumprod[level].view(-1, 1, 1, 1)
        noisy = a.sqrt() * batch + (1 - a).sqrt() * noise
        output = forward(noisy, level, class_labels=classes).sample
        return (output - noise).square().sum() / noise[0].numel()

    def save(self, ema, path: Path) -> None:
        from diffusers import DDIMPipeline, DDIMScheduler

        pipeline = DDIMPipeline(unet=copy.deepcopy(ema).cpu(),
                                scheduler=DDIMScheduler.from_config(self.scheduler.config))
        pipeline.save_pretrained(path, safe_serialization=True)


class DenoiserObjective:
    """EDM's loss for one of its preconditionings (Karras et al. 2022, eq. 8 and Table 1); the model
    is a ``Denoiser`` around memaudit's DDPM++/NCSN++ U-Net, conditioned on one-hot labels."""

    def __init__(self, config: TrainConfig, image_shape, num_classes: int | None, device: str):
        self.config, self.num_classes = config, num_classes
        self.model = build_denoiser(config.arch, config.precond, tuple(image_shape), num_classes or 0).to(device)

    def draw(self, batch_size: int, shape, generator):
        import torch

        sigma = self.model.preconditioning.training_sigma((batch_size,), generator)
        return sigma, torch.randn((batch_size, *shape), generator=generator)

    def loss_sum(self, forward, batch, classes, level, noise):
        """EDM's training loop sums lambda (D - y)^2 over pixels and divides by the batch size."""
        import torch

        labels = None if classes is None else torch.nn.functional.one_hot(classes, self.num_classes).float()
        sigma = level.reshape(-1, 1, 1, 1)
        weight = self.model.preconditioning.loss_weight(sigma)
        return (weight * (forward(batch + noise * sigma, sigma, labels) - batch).square()).sum()

    def save(self, ema, path: Path) -> None:
        save_denoiser(ema, path)


OBJECTIVES = {"ddpm": DDPMObjective, "edm": DenoiserObjective, "vp": DenoiserObjective, "ve": DenoiserObjective}


def train_model(images: np.ndarray, out_dir: Path, config: TrainConfig = TrainConfig(), device: str = "cpu", *,
               labels: np.ndarray | None = None, num_classes: int | None = None, checkpoint: Path | None = None,
               snapshot_dir: Path | None = None, on_step: Callable[[int], None] | None = None,
               description: str = "training", keep_checkpoint: bool = False) -> TrainResult:
    """Train on uint8 NHWC ``images`` with ``config.precond``'s objective; save the EMA model (a
    DDIMPipeline for ``ddpm``, a denoiser folder for ``edm``/``vp``/``ve``).

    ``labels`` (int, one per image, below ``num_classes``) make the U-Net class-conditional.
    ``checkpoint`` is the file that makes the run resumable; ``snapshot_dir`` receives the EMA
    model at each of ``config.snapshot_steps`` as ``step-NNNNNNN/`` pipelines. ``on_step(step)``
    is called after each finished step (tests use it to interrupt a run); ``description`` names the
    progress bar. ``keep_checkpoint`` leaves the final state in ``checkpoint`` (it is removed
    otherwise), so that a later call with more ``steps`` continues from it.
    """
    prepare_torchvision()
    import torch

    out_dir = Path(out_dir)
    world = distributed.current()
    if config.batch_size < world.size:
        from memaudit.errors import InputError

        raise InputError(f"--batch-size {config.batch_size}: data-parallel training on {world.size} ranks needs a "
                         f"batch of at least {world.size} images (one per rank)")
    fingerprint = recipe_fingerprint(images, labels, num_classes, config)
    snapshot_steps = sorted({s for s in config.snapshot_steps if 0 < s < config.steps})
    snapshots = [(s, Path(snapshot_dir) / f"step-{s:07d}") for s in snapshot_steps] if snapshot_dir else []
    finished = finished_training(out_dir, fingerprint, config.steps) and all(
        finished_training(p, fingerprint, s) for s, p in snapshots)
    if finished and (not keep_checkpoint or checkpoint is None or Path(checkpoint).is_file()):
        return TrainResult(out_dir, [*snapshots, (config.steps, out_dir)])

    # 1. Model, EMA, optimizer, RNGs: fresh from the seed, or as the checkpoint left them.
    torch.manual_seed(config.seed)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    classes = None if labels is None else torch.as_tensor(np.asarray(labels, np.int64), device=device)
    objective = OBJECTIVES[config.precond](config, images.shape[1:], num_classes if labels is not None else None, device)
    unet = objective.model
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch_rng = np.random.default_rng(config.seed)  # which images go in each batch
    noise_rng = torch.Generator("cpu").manual_seed(config.seed)  # timesteps and noise, device-independent
    start = 0
    if checkpoint is not None:
        state = _load_checkpoint(Path(checkpoint), fingerprint)
        if state is not None and int(state["step"]) > config.steps:  # a longer run of this recipe: not this one
            state = None
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

    # 2. The loop. With several ranks each takes its rows of the global batch; its summed loss over the
    #    global batch size, times the world size, averages (as DDP does) to the single-process loss.
    unet.train()
    forward = _data_parallel(unet, device) if world.distributed else unet
    rows = slice(*world.row_range(config.batch_size))
    with progress.task(description, total=config.steps, completed=start) as advance:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
            index = torch.from_numpy(batch_rng.integers(0, len(data), config.batch_size)).to(device)
            batch = data[index]
            level, noise = objective.draw(len(batch), batch.shape[1:], noise_rng)
            level, noise = level.to(device), noise.to(device)
            if world.distributed:
                index, batch, level, noise = index[rows], batch[rows], level[rows], noise[rows]
            loss = objective.loss_sum(forward, batch, None if classes is None else classes[index], level, noise)
            loss = loss * world.size / config.batch_size
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step)) if config.ema_warmup else config.ema_decay
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), unet.parameters()):
                    p_ema.lerp_(p, 1.0 - decay)
            done = step + 1
            if done in snapshot_steps and snapshot_dir is not None and world.is_main \
                    and not finished_training(Path(snapshot_dir) / f"step-{done:07d}", fingerprint, done):
                _save_model(objective, ema, Path(snapshot_dir) / f"step-{done:07d}", config, images, fingerprint,
                            device, done)
            if checkpoint is not None and config.checkpoint_every > 0 and done % config.checkpoint_every == 0 \
                    and done < config.steps:
                if world.is_main:
                    _save_checkpoint(Path(checkpoint), fingerprint, done, unet, ema, optimizer, batch_rng, noise_rng)
                world.barrier()  # no rank runs ahead of the last checkpoint
            advance()
            if on_step is not None:
                on_step(done)

    # 3. The EMA model; the checkpoint is no longer needed, unless a longer run may continue it.
    if world.is_main:
        _save_model(objective, ema, out_dir, config, images, fingerprint, device, config.steps)
        if checkpoint is not None and keep_checkpoint:
            if start < config.steps or not Path(checkpoint).is_file():
                _save_checkpoint(Path(checkpoint), fingerprint, config.steps, unet, ema, optimizer, batch_rng, noise_rng)
        elif checkpoint is not None:
            Path(checkpoint).unlink(missing_ok=True)
    world.barrier()
    return TrainResult(out_dir, [*snapshots, (config.steps, out_dir)])


def _data_parallel(unet, device: str):
    """The U-Net wrapped in DistributedDataParallel (gradients averaged over the ranks after backward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(unet, device_ids=[device] if device.startswith("cuda") else None)


def _save_model(objective, ema, path: Path, config: TrainConfig, images, fingerprint: str, device: str,
                step: int) -> None:
    """Save the EMA model (the objective's format), atomically: written beside ``path``, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    objective.save(ema, tmp)
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


train_ddpm = train_model  # the name of the ddpm-only days, kept for callers of the demo recipe
