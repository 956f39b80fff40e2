"""The one interface every model adapter implements (design.md, "Conventions")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class SamplerOptions:
    """Settings shared by all adapters; each adapter uses the ones that apply to it."""

    steps: int | None = None  # None: the adapter's own default
    device: str = "cpu"
    labels: str | None = None  # class-conditional models: "train", "uniform" or a class index
    prompts: str | None = None  # text-to-image models: "train" (training captions) or a file of prompts
    guidance: float | None = None  # classifier-free guidance scale (None: the pipeline's default)
    scheduler: str | None = None  # swap the diffusers sampler: see adapters.schedulers
    dtype: str = "fp32"  # fp32, fp16 or bf16 (half precisions on CUDA only)
    trust_checkpoint: bool = False  # allow pickles and code shipped with a checkpoint
    code_path: str | None = None  # a folder to put on the import path (EDM's code for its pickles)
    factory: str | None = None  # file.py:build constructing the network of a safetensors state dict
    seeding: str | None = None  # EDM-sampled models: edm (default) or legacy; see adapters.seeding
    sampler_options: dict = field(default_factory=dict)  # EDM sampler: S_churn, sigma_min, ... (adapters.edm)
    variant: str | None = None  # diffusers weight variant: diffusion_pytorch_model.<variant>.safetensors
    safety_checker: str = "off"  # diffusers pipelines that ship one: off, or flag (mark flagged samples)
    loras: tuple[str, ...] = ()  # diffusers pipelines: LoRA files, FILE or FILE:SCALE (adapters.finetunes)
    embeddings: tuple[str, ...] = ()  # diffusers pipelines: textual-inversion embedding files
    base: str | None = None  # the base pipeline a fine-tuned component folder (MODEL) is loaded into


# The sampler options a user can set for a model, by SamplerOptions field, with their CLI flags.
# device and trust_checkpoint are not here: where to run and a permission apply to every model.
OPTION_FLAGS: dict[str, str] = {
    "steps": "--steps", "labels": "--labels", "prompts": "--prompts", "guidance": "--guidance",
    "scheduler": "--scheduler", "dtype": "--dtype", "code_path": "--code-path", "factory": "--factory",
    "variant": "--variant", "safety_checker": "--safety-checker", "seeding": "--seeding",
    "sampler_options": "--sampler-option", "loras": "--lora", "embeddings": "--embedding", "base": "--base",
}


@dataclass(frozen=True)
class Accepts:
    """What a loaded model can use: an adapter declares it as its ``accepts`` attribute, and
    ``refuse_inapplicable`` refuses any other option the user set, instead of ignoring it."""

    options: frozenset[str]  # SamplerOptions fields (keys of OPTION_FLAGS)
    model: str  # what the model is, for the refusal: "an unconditional DDIMPipeline"


def options_given(options: SamplerOptions) -> dict[str, Any]:
    """The options of OPTION_FLAGS set to something other than their default."""
    defaults = SamplerOptions()
    return {name: getattr(options, name) for name in OPTION_FLAGS if getattr(options, name) != getattr(defaults, name)}


def refuse_inapplicable(adapter, options: SamplerOptions) -> None:
    """Raise ``ModelError`` for an option the adapter declares it cannot use (adapters without an
    ``accepts`` declaration, such as user code, are not checked)."""
    from memaudit.errors import ModelError

    accepts: Accepts | None = getattr(adapter, "accepts", None)
    if accepts is None:
        return
    for name, value in options_given(options).items():
        if name not in accepts.options:
            usable = [OPTION_FLAGS[n] for n in OPTION_FLAGS if n in accepts.options]
            value_text = ("" if isinstance(value, bool) else f" {' '.join(map(str, value))}"
                          if isinstance(value, (tuple, list)) else f" {value}")
            raise ModelError(f"{adapter.spec}: {OPTION_FLAGS[name]}{value_text} does not apply to {accepts.model}; "
                             f"it takes {', '.join(usable) if usable else 'no sampler options'}")


class ModelAdapter(Protocol):
    """A generative model memaudit can sample.

    ``sample`` must be a pure function of the seeds: sample i depends on ``seeds[i]`` alone,
    never on the batch it was drawn in, so results do not depend on batch size or on how the
    seeds are split between shards or processes. An adapter may declare ``accepts`` (``Accepts``):
    the options it can use; ``load_model`` then refuses any other option the user set.
    """

    spec: str

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of the samples, or None when only sampling tells."""

    def fingerprint(self) -> str:
        """Content hash of the weights and every setting that changes the samples."""

    def settings(self) -> dict[str, Any]:
        """JSON-ready description of the model and sampler, for provenance."""

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        """uint8 images (len(seeds), H, W, C), one per seed."""

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        """What each seed's sample was conditioned on ({"labels": [...]}, {"prompts": [...]}, or {})."""


def batches(seeds: Sequence[int], batch_size: int):
    """Consecutive slices of ``seeds`` of at most ``batch_size`` items."""
    for start in range(0, len(seeds), batch_size):
        yield seeds[start:start + batch_size]


def to_uint8(images_in_unit_range: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 pixels, rounding to nearest (diffusers' numpy_to_pil convention)."""
    return np.clip(np.rint(images_in_unit_range * 255.0), 0, 255).astype(np.uint8)
