"""Unconditional diffusers pipelines loaded from a local directory (DDPM, DDIM, score-SDE...)."""

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

_REQUIRED_CALL_ARGS = ("batch_size", "generator", "output_type")


@contextlib.contextmanager
def _quiet_diffusers():
    """No loading bars or log lines from diffusers: memaudit reports its own errors in one line."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        diffusers_logging.enable_progress_bar()


def is_pipeline_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


class DiffusersPipelineAdapter:
    """Samples a diffusers pipeline with one CPU generator per seed.

    Weights load from safetensors only: pickled ``.bin`` weights would run code on load.
    """

    def __init__(self, spec: str, path: Path, options: SamplerOptions):
        prepare_torchvision()
        import diffusers
        from diffusers import DiffusionPipeline

        self.spec = spec
        self.path = path
        self.device = options.device
        self.steps = options.steps
        try:
            with _quiet_diffusers():
                pipeline = DiffusionPipeline.from_pretrained(path, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            first_line = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
            raise ModelError(f"{spec}: cannot load as a diffusers pipeline with safetensors weights ({first_line})") from None
        parameters = inspect.signature(pipeline.__call__).parameters
        missing = [name for name in _REQUIRED_CALL_ARGS if name not in parameters]
        if missing:
            raise ModelError(
                f"{spec}: {type(pipeline).__name__} is not an unconditional image pipeline (its call lacks "
                f"{', '.join(missing)}); expected e.g. DDPMPipeline or DDIMPipeline"
            )
        if self.steps is not None and "num_inference_steps" not in parameters:
            raise ModelError(f"{spec}: {type(pipeline).__name__} takes no number of steps; leave --steps out")
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline.to(options.device)
        self._pipeline_class = type(pipeline).__name__
        self._diffusers_version = diffusers.__version__

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        unet = getattr(self.pipeline, "unet", None)
        config = getattr(unet, "config", None)
        if config is None or getattr(config, "sample_size", None) is None:
            return None
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (height, width, config.out_channels)

    def settings(self) -> dict[str, Any]:
        return {
            "adapter": "diffusers",
            "pipeline": self._pipeline_class,
            "scheduler": type(self.pipeline.scheduler).__name__,
            "steps": self.steps,
            "diffusers_version": self._diffusers_version,
        }

    def fingerprint(self) -> str:
        files = [p for p in self.path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts[len(self.path.parts):])]
        return fingerprint_json({"weights": fingerprint_files(self.path, files), **self.settings(), "device": None})

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        out = []
        kwargs = {} if self.steps is None else {"num_inference_steps": self.steps}
        for chunk in batches(list(seeds), batch_size):
            # CPU generators: the initial noise (and any sampler noise) depends on the seed
            # alone, whatever the device and the batch.
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in chunk]
            with torch.inference_mode():
                result = self.pipeline(batch_size=len(chunk), generator=generators, output_type="np", **kwargs)
            out.append(to_uint8(np.asarray(result.images, dtype=np.float64)))
        return np.concatenate(out)
