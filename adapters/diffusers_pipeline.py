"""diffusers pipelines from a local directory or the local Hugging Face cache (offline).

Three families, told apart by the pipeline itself:
- unconditional (DDPM, DDIM, score-SDE, any call taking batch_size/generator/output_type);
- class-conditional (a UNet2DModel with a class embedding, or a DiT-style call taking class_labels);
- text-to-image (a call taking prompt: the Stable Diffusion family; latents decoded to pixels).
UNet2DModel pipelines run memaudit's own scheduler loop when conditioned or when ``--scheduler``
swaps the sampler, so every diffusers scheduler works with them.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memaudit.errors import ModelError
from memaudit.storage import fingerprint_files, fingerprint_json
from memaudit.torchcompat import prepare_torchvision

from .base import SamplerOptions, batches, to_uint8
from .conditioning import LabelChooser, PromptChooser
from .schedulers import swap_scheduler

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@contextlib.contextmanager
def _quiet_diffusers():
    """No loading bars or log lines from diffusers: memaudit reports its own errors in one line."""
    from diffusers.utils import logging as diffusers_logging

    libraries = [diffusers_logging]
    with contextlib.suppress(ImportError):  # text encoders load through transformers
        from transformers.utils import logging as transformers_logging

        libraries.append(transformers_logging)
    verbosities = [library.get_verbosity() for library in libraries]
    for library in libraries:
        library.set_verbosity(library.CRITICAL)
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, verbosity in zip(libraries, verbosities):
            library.set_verbosity(verbosity)
            library.enable_progress_bar()


def is_pipeline_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def resolve_hub_cache(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face repo id, without any network access."""
    import os

    from huggingface_hub import snapshot_download

    try:  # HF_HUB_CACHE read now, not at import: the cache a user or test points at
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception as error:  # huggingface_hub raises several unrelated types for "not cached"
        raise ModelError(f"hf:{repo_id}: not in the local Hugging Face cache ({type(error).__name__}); "
                         "memaudit never downloads: fetch it with huggingface-cli download first") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


class DiffusersPipelineAdapter:
    """Samples a diffusers pipeline with one CPU generator per seed.

    Weights load from safetensors only, and no code from the checkpoint runs, unless the user
    passes --trust-checkpoint: pickled ``.bin`` weights and custom pipeline code execute on load.
    """

    def __init__(self, spec: str, path: Path, train, options: SamplerOptions, pipeline=None):
        """Load the pipeline at ``path`` (or take ``pipeline`` built from the files at ``path``)."""
        prepare_torchvision()
        import diffusers
        import torch
        from diffusers import DiffusionPipeline

        self.spec, self.path, self.options = spec, path, options
        self.device, self.steps = options.device, options.steps
        if options.dtype not in DTYPES:
            raise ModelError(f"--dtype {options.dtype}: expected one of {', '.join(DTYPES)}")
        if options.dtype != "fp32" and not options.device.startswith("cuda"):
            raise ModelError(f"--dtype {options.dtype}: half precision needs a CUDA device; use fp32 on {options.device}")
        self.dtype = getattr(torch, DTYPES[options.dtype])
        trusted = options.trust_checkpoint
        if pipeline is None:
            try:
                with _quiet_diffusers():
                    pipeline = DiffusionPipeline.from_pretrained(
                        path, use_safetensors=None if trusted else True, local_files_only=True,
                        trust_remote_code=trusted, dtype=self.dtype)
            except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as error:
                hint = "" if trusted else " (pickled .bin weights and custom code load only with --trust-checkpoint)"
                raise ModelError(f"{spec}: cannot load as a diffusers pipeline with safetensors weights "
                                 f"({_first_line(error)}){hint}") from None
        if options.scheduler is not None:
            pipeline.scheduler = swap_scheduler(pipeline.scheduler, options.scheduler)
        self.call_parameters = inspect.signature(pipeline.__call__).parameters
        self.denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        config = getattr(self.denoiser, "config", None)
        # UNet2DModel: num_class_embeds; DiT: num_embeds_ada_norm (its class-embedding table)
        num_classes = getattr(config, "num_class_embeds", None)
        self.labels = self.prompts = None
        if "prompt" in self.call_parameters:
            self.family = "text-to-image"
            self.prompts = PromptChooser(options.prompts, train, spec)
        elif num_classes or "class_labels" in self.call_parameters:
            self.family = "class-conditional"
            num_classes = num_classes or getattr(config, "num_embeds_ada_norm", None) or 1000
            self.labels = LabelChooser(options.labels, int(num_classes), train, spec)
        else:
            self.family = "unconditional"
            missing = [n for n in ("batch_size", "generator", "output_type") if n not in self.call_parameters]
            if missing:
                raise ModelError(f"{spec}: {type(pipeline).__name__} is not an image pipeline memaudit can sample "
                                 f"(its call lacks {', '.join(missing)}); expected e.g. DDPMPipeline or DDIMPipeline")
        if self.steps is not None and "num_inference_steps" not in self.call_parameters and not self._own_loop():
            raise ModelError(f"{spec}: {type(pipeline).__name__} takes no number of steps; leave --steps out")
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline.to(options.device)
        self._diffusers_version = diffusers.__version__

    def _own_loop(self) -> bool:
        """UNet2DModel pipelines conditioned on classes, with a swapped sampler or in half precision
        run memaudit's loop (the pipelines draw half-precision noise from a different random
        stream than fp32, and cannot return bf16 images as numpy)."""
        unet_2d = type(self.denoiser).__name__ == "UNet2DModel"
        return unet_2d and (self.family == "class-conditional" or self.options.scheduler is not None
                            or self.options.dtype != "fp32")

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        config = getattr(self.denoiser, "config", None)
        if config is None or getattr(config, "sample_size", None) is None:
            return None
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        vae = getattr(self.pipeline, "vae", None)
        if vae is not None:  # latent model: pixels are vae_scale_factor times the latent size
            scale = getattr(self.pipeline, "vae_scale_factor", 2 ** (len(vae.config.block_out_channels) - 1))
            return (height * scale, width * scale, vae.config.out_channels)
        return (height, width, config.out_channels)

    def settings(self) -> dict[str, Any]:
        return {
            "adapter": "diffusers",
            "family": self.family,
            "pipeline": type(self.pipeline).__name__,
            "scheduler": type(self.pipeline.scheduler).__name__,
            "steps": self.steps,
            "labels": self.options.labels if self.labels else None,
            "prompts": self.options.prompts if self.prompts else None,
            "guidance": self.options.guidance,
            "dtype": self.options.dtype,
            "diffusers_version": self._diffusers_version,
        }

    def fingerprint(self) -> str:
        files = [p for p in self.path.rglob("*")
                 if p.is_file() and not any(part.startswith(".") for part in p.parts[len(self.path.parts):])]
        return fingerprint_json({"weights": fingerprint_files(self.path, files), **self.settings()})

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        if self.labels is not None:
            return {"labels": self.labels(seeds).tolist()}
        if self.prompts is not None:
            return {"prompts": self.prompts(seeds)}
        return {}

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        out = []
        for chunk in batches(list(seeds), batch_size):
            # CPU generators: the noise (and any sampler noise) depends on the seed alone,
            # whatever the device and the batch.
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in chunk]
            with torch.inference_mode():
                images = self._own_loop_sample(chunk, generators) if self._own_loop() else self._call(chunk, generators)
            out.append(to_uint8(np.asarray(images, dtype=np.float64)))
        return np.concatenate(out)

    def initial_noise(self, seeds: Sequence[int]):
        """The float32 starting noise of each seed, (len(seeds), C, H, W): a function of the seed alone,
        bit for bit, whatever the batch (the exact part of the batch-size promise)."""
        import torch

        height, width, _ = self.image_shape
        channels = self.denoiser.config.in_channels
        return self._noise([torch.Generator("cpu").manual_seed(int(s)) for s in seeds], (channels, height, width))

    @staticmethod
    def _noise(generators, shape):
        import torch

        # one draw per generator, as diffusers' randn_tensor draws for a list of generators
        return torch.stack([torch.randn(shape, generator=g) for g in generators])

    def _call(self, seeds, generators):
        kwargs: dict[str, Any] = {"generator": generators, "output_type": "np"}
        if self.steps is not None:
            kwargs["num_inference_steps"] = self.steps
        if self.options.guidance is not None and "guidance_scale" in self.call_parameters:
            kwargs["guidance_scale"] = self.options.guidance
        if self.family == "text-to-image":
            kwargs["prompt"] = self.prompts(seeds)
        elif self.family == "class-conditional":
            kwargs["class_labels"] = self.labels(seeds).tolist()
        else:
            kwargs["batch_size"] = len(seeds)
        return self.pipeline(**kwargs).images

    def _own_loop_sample(self, seeds, generators):
        """The scheduler loop of DDPMPipeline/DDIMPipeline, with class labels when the UNet takes them."""
        import torch

        unet, scheduler = self.pipeline.unet, self.pipeline.scheduler
        height, width, channels = self.image_shape
        default = inspect.signature(self.pipeline.__call__).parameters.get("num_inference_steps")
        steps = self.steps or (default.default if default is not None and isinstance(default.default, int) else 50)
        scheduler.set_timesteps(steps)  # first: init_noise_sigma depends on the schedule
        noise = self._noise(generators, (unet.config.in_channels, height, width))
        x = (noise * scheduler.init_noise_sigma).to(self.device, self.dtype)
        class_labels = None
        if self.family == "class-conditional":
            class_labels = torch.as_tensor(self.labels(seeds), device=self.device)
        step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            output = unet(model_input, t, class_labels=class_labels).sample
            extra = {"generator": generators} if step_takes_generator else {}
            x = scheduler.step(output, t, x, **extra).prev_sample
        images = (x.float() / 2 + 0.5).clamp(0, 1)
        return images.permute(0, 2, 3, 1).cpu().numpy()
