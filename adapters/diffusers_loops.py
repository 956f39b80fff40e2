"""memaudit's own sampling loops for diffusers pipelines, one per pipeline class (``LOOPS``).

Each loop follows its pipeline's ``__call__`` operation for operation, with one difference: every
random draw, the starting noise and each noise a stochastic scheduler adds (DDPM, ancestral Euler,
SDE solvers), comes from the seed's own CPU generator, so sample i depends on seed i alone.
diffusers' DiTPipeline and LDMPipeline call ``scheduler.step`` without the generator, so their
step noise comes from torch's global random state; DDPMPipeline draws half-precision noise from
another stream than fp32. Pipelines not listed here are called as they are (text-to-image ones
pass the generators on to every draw), under a guard that refuses any draw from the global state.

Deliberate differences from the pipelines, kept because the pipelines are wrong there:
- the starting noise is scaled by ``scheduler.init_noise_sigma`` (DiTPipeline and DDPMPipeline
  skip it, which only matters for schedulers whose sigma is not 1: Euler, Heun);
- a DiT under classifier-free guidance steps the conditional half only (DiTPipeline steps both
  identical halves and drops one; the same numbers for deterministic schedulers).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

from memaudit import progress


@dataclass(frozen=True)
class LoopRequest:
    """What one batch of a loop needs: the pipeline, the seeds' generators and the resolved settings."""

    pipeline: object
    generators: list
    steps: int
    guidance: float | None
    class_labels: Sequence[int] | None
    device: str
    dtype: object  # torch dtype of the network


def seed_noise(generators, shape):
    """float32 noise of ``shape`` per generator, stacked: one draw per generator, as diffusers'
    ``randn_tensor`` draws for a list of generators, so a seed's noise never depends on the batch."""
    import torch

    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def _denoise(request: LoopRequest, latent_shape, predict: Callable):
    """The scheduler loop shared by every family: per-seed noise in, per-seed noise at each step."""
    scheduler = request.pipeline.scheduler
    scheduler.set_timesteps(request.steps)  # first: init_noise_sigma depends on the schedule
    x = (seed_noise(request.generators, latent_shape) * scheduler.init_noise_sigma).to(request.device, request.dtype)
    extra = {"generator": request.generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for done, t in enumerate(scheduler.timesteps, start=1):
        output = predict(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(output, t, x, **extra).prev_sample
        progress.denoising_step(done, len(scheduler.timesteps))
    return x


def _to_unit_range(images):
    """Decoded images in [-1, 1] to NHWC float32 numpy in [0, 1], as the pipelines' output_type="np"."""
    return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def _class_tensor(request: LoopRequest):
    import torch

    if request.class_labels is None:
        return None
    return torch.as_tensor(list(request.class_labels), dtype=torch.int64, device=request.device)


def unet_pixels(request: LoopRequest):
    """DDPMPipeline / DDIMPipeline: a UNet2DModel on pixels, class labels when the UNet takes them."""
    unet = request.pipeline.unet
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    labels = _class_tensor(request)
    x = _denoise(request, (unet.config.in_channels, height, width), lambda x, t: unet(x, t, class_labels=labels).sample)
    return _to_unit_range(x)


def unet_vq_latents(request: LoopRequest):
    """LDMPipeline: a UNet2DModel on the latents of a VQ autoencoder, decoded to pixels."""
    unet, vqvae = request.pipeline.unet, request.pipeline.vqvae
    size = unet.config.sample_size
    latents = _denoise(request, (unet.config.in_channels, size, size), lambda x, t: unet(x, t).sample)
    return _to_unit_range(vqvae.decode(latents / vqvae.config.scaling_factor).sample)


def dit_latents(request: LoopRequest):
    """DiTPipeline: a class-conditional latent transformer with classifier-free guidance, VAE-decoded."""
    import torch

    transformer, vae = request.pipeline.transformer, request.pipeline.vae
    channels, size = transformer.config.in_channels, transformer.config.sample_size
    labels = _class_tensor(request)
    guided = request.guidance is not None and request.guidance > 1
    if guided:  # DiT's null class is the row after the last class of its label table
        null = torch.full_like(labels, int(transformer.config.num_embeds_ada_norm))
        labels = torch.cat([labels, null])
    learned_sigma = transformer.config.out_channels // 2 == channels

    def predict(x, t):
        x_in = torch.cat([x, x]) if guided else x
        timesteps = t[None].to(x.device) if torch.is_tensor(t) else torch.tensor([t], device=x.device)
        output = transformer(x_in, timestep=timesteps.expand(x_in.shape[0]), class_labels=labels).sample
        eps = output[:, :channels] if learned_sigma or guided else output
        if guided:
            cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
            eps = uncond + request.guidance * (cond - uncond)
        return eps

    latents = _denoise(request, (channels, size, size), predict)
    return _to_unit_range(vae.decode(1 / vae.config.scaling_factor * latents).sample)


# pipeline class name -> its loop with per-seed generators
LOOPS: dict[str, Callable[[LoopRequest], object]] = {
    "DDPMPipeline": unet_pixels,
    "DDIMPipeline": unet_pixels,
    "LDMPipeline": unet_vq_latents,
    "DiTPipeline": dit_latents,
}
