"""What each text-to-image family's pipeline call needs resolved, by pipeline class (``FAMILIES``).

The generic text-to-image path (``diffusers_pipeline``) calls a pipeline with its prompts, one CPU
generator per seed, the steps and the guidance. The families released since Stable Diffusion 2 take
more, and their defaults are computed inside the call (a size from the model, a flow-matching
shift from the image's token count, a resolution bin), so memaudit resolves each one here, passes
it explicitly and records it: the settings then say what the samples were drawn with, and a cache
key changes when any of it does. Each entry also says what ``guidance`` means to its pipeline (or
that the pipeline ignores it, so ``--guidance`` is refused) and which ``--scheduler`` it can take.

Supported: Stable Diffusion XL (and SDXL-Turbo-style use: ``--guidance 0 --steps 1``), Stable
Diffusion 3, Flux (dev-style with the distilled guidance embedding; schnell-style without),
PixArt-Alpha and PixArt-Sigma, Sana, latent consistency models (LCM-LoRA-style use: an SD or SDXL
pipeline with ``--scheduler lcm``). The SDXL refiner (an image-to-image pipeline) is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

from memaudit.errors import ModelError

# PixArt's and Sana's resolution bins exist for these transformer sample sizes only; for another
# size the pipeline's default (binning on) raises "Invalid sample size".
_PIXART_BINNED_SIZES = (32, 64, 128, 256)
_SANA_BINNED_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class Family:
    """One text-to-image family: how its call is resolved and what its options mean."""

    name: str
    # pipeline -> (arguments passed to the call, derived values only recorded)
    resolve: Callable[[Any], tuple[dict[str, Any], dict[str, Any]]]
    # what guidance_scale does in this pipeline, or None where the pipeline ignores it
    guidance: Callable[[Any], str | None]
    # --scheduler values the family can use: None = any of adapters.schedulers; () = none
    schedulers: tuple[str, ...] | None = None
    scheduler_reason: str = ""
    refused: str | None = None  # set: the pipeline cannot be sampled text-to-image, and why
    # the recorded (JSON) call -> the call's own types (SDXL takes its sizes as tuples)
    call_form: Callable[[dict], dict] | None = None


def _size(pipeline, default_sample_size: int) -> tuple[int, int]:
    """The pixel size the pipeline's call defaults to: its latent sample size x the VAE's factor."""
    size = default_sample_size * pipeline.vae_scale_factor
    return size, size


def _call_default(pipeline, name: str):
    import inspect

    parameter = inspect.signature(pipeline.__call__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _flow_schedule(pipeline, image_seq_len: int, default_max_shift: float) -> dict[str, Any]:
    """The flow-matching schedule's shift: fixed (``shift``) or dynamic (``mu`` from the token
    count, the line from (base_image_seq_len, base_shift) to (max_image_seq_len, max_shift) that
    SD3's and Flux's ``calculate_shift`` evaluate)."""
    config = pipeline.scheduler.config
    dynamic = bool(config.get("use_dynamic_shifting", False))
    mu = None
    if dynamic:
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", default_max_shift)
        slope = (max_shift - base_shift) / (max_len - base_len)
        mu = image_seq_len * slope + base_shift - slope * base_len
    return {"scheduler": type(pipeline.scheduler).__name__, "shift": None if dynamic else config.get("shift", 1.0),
            "use_dynamic_shifting": dynamic, "mu": mu, "image_seq_len": image_seq_len}


def _cfg(pipeline) -> str:
    return "classifier-free guidance with an empty negative prompt (off at guidance <= 1)"


# --- Stable Diffusion XL --------------------------------------------------------------------------

def _resolve_sdxl(pipeline):
    height, width = _size(pipeline, pipeline.default_sample_size)
    call = {"height": height, "width": width,
            # the micro-conditioning SDXL's UNet embeds (add_time_ids): the pipeline's defaults
            "original_size": [height, width], "crops_coords_top_left": [0, 0], "target_size": [height, width],
            "guidance_rescale": _call_default(pipeline, "guidance_rescale")}
    derived = {"force_zeros_for_empty_prompt": bool(pipeline.config.get("force_zeros_for_empty_prompt", True)),
               "aesthetic_score": None,  # embedded by the refiner only (requires_aesthetics_score), not sampled here
               "refiner": "not supported: the base pipeline alone is sampled"}
    return call, derived


def _sdxl_call(call: dict) -> dict:
    """The pipeline takes sizes as tuples (JSON records them as lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in call.items()}


# --- Stable Diffusion 3 ---------------------------------------------------------------------------

def _resolve_sd3(pipeline):
    height, width = _size(pipeline, pipeline.default_sample_size)
    patch = pipeline.transformer.config.patch_size
    latent_h, latent_w = height // pipeline.vae_scale_factor, width // pipeline.vae_scale_factor
    schedule = _flow_schedule(pipeline, (latent_h // patch) * (latent_w // patch), default_max_shift=1.16)
    call = {"height": height, "width": width, "max_sequence_length": _call_default(pipeline, "max_sequence_length")}
    if schedule["mu"] is not None:
        call["mu"] = schedule["mu"]
    derived = {**schedule, "t5": pipeline.text_encoder_3 is not None}  # no T5: its embeddings are zeros
    return call, derived


# --- Flux -----------------------------------------------------------------------------------------

def _resolve_flux(pipeline):
    height, width = _size(pipeline, pipeline.default_sample_size)
    packed = 2 * pipeline.vae_scale_factor  # latents are packed in 2x2 patches
    schedule = _flow_schedule(pipeline, (height // packed) * (width // packed), default_max_shift=1.15)
    if schedule["use_dynamic_shifting"] is False:
        schedule["mu"] = None  # FluxPipeline passes its mu on, and a static-shift scheduler ignores it
    call = {"height": height, "width": width, "max_sequence_length": _call_default(pipeline, "max_sequence_length")}
    flow_sigmas = bool(pipeline.scheduler.config.get("use_flow_sigmas", False))  # then the pipeline passes none
    derived = {**schedule, "sigmas": "the scheduler's own" if flow_sigmas else "linspace(1, 1/steps, steps)",
               "true_cfg_scale": _call_default(pipeline, "true_cfg_scale"),
               "true_cfg": "off: it needs a negative prompt, which memaudit does not pass"}
    return call, derived


def _flux_guidance(pipeline) -> str | None:
    if pipeline.transformer.config.guidance_embeds:
        return "distilled guidance: guidance_scale is embedded in the transformer (one pass, no negative prompt)"
    return None  # schnell-style: no guidance embedding, and the pipeline ignores guidance_scale


# --- PixArt and Sana ------------------------------------------------------------------------------

def _clean_caption_available() -> bool:
    from diffusers.utils import is_bs4_available, is_ftfy_available

    return is_bs4_available() and is_ftfy_available()


def _resolve_dit_t2i(binned_sizes, native_size_default: bool):
    def resolve(pipeline):
        sample_size = pipeline.transformer.config.sample_size
        height, width = _size(pipeline, sample_size)
        binning = sample_size in binned_sizes and bool(_call_default(pipeline, "use_resolution_binning"))
        # caption cleaning needs bs4 and ftfy: without them the pipeline turns it off itself
        clean = bool(_call_default(pipeline, "clean_caption")) and _clean_caption_available()
        call = {"height": height, "width": width, "use_resolution_binning": binning, "clean_caption": clean,
                "max_sequence_length": _call_default(pipeline, "max_sequence_length")}
        derived = {"resolution_binning": "on" if binning else f"off: sample size {sample_size} has no resolution bin"}
        if not native_size_default:  # Sana's call defaults to 1024x1024 whatever the model
            derived["size"] = "the transformer's own (sample_size x the VAE's factor), not the call's 1024x1024"
        instruction = _call_default(pipeline, "complex_human_instruction")
        if instruction:  # Sana prefixes every prompt with it: recorded by digest (a page of text)
            text = "\n".join(instruction)
            derived["complex_human_instruction"] = (f"the call's default, {len(instruction)} lines, "
                                                    f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")
        return call, derived
    return resolve


# --- latent consistency models --------------------------------------------------------------------

def _resolve_lcm(pipeline):
    height, width = _size(pipeline, pipeline.unet.config.sample_size)
    return ({"height": height, "width": width,
             "original_inference_steps": pipeline.scheduler.config.original_inference_steps}, {})


def _lcm_guidance(pipeline) -> str | None:
    return "LCM guidance embedding w = guidance - 1 (one pass, no negative prompt)"


def _refused(pipeline):
    return {}, {}


_FLOW_ONLY = "samples by flow matching (FlowMatchEulerDiscreteScheduler); --scheduler swaps noise-prediction samplers only"

FAMILIES: dict[str, Family] = {
    "StableDiffusionXLPipeline": Family("stable-diffusion-xl", _resolve_sdxl, _cfg, call_form=_sdxl_call),
    "StableDiffusion3Pipeline": Family("stable-diffusion-3", _resolve_sd3, _cfg, (), _FLOW_ONLY),
    "FluxPipeline": Family("flux", _resolve_flux, _flux_guidance, (), _FLOW_ONLY),
    "PixArtAlphaPipeline": Family("pixart-alpha", _resolve_dit_t2i(_PIXART_BINNED_SIZES, True), _cfg),
    "PixArtSigmaPipeline": Family("pixart-sigma", _resolve_dit_t2i(_PIXART_BINNED_SIZES, True), _cfg),
    "SanaPipeline": Family("sana", _resolve_dit_t2i(_SANA_BINNED_SIZES, False), _cfg, (), _FLOW_ONLY),
    "LatentConsistencyModelPipeline": Family(
        "latent-consistency", _resolve_lcm, _lcm_guidance, ("lcm",),
        "steps with LCMScheduler only (its call unpacks the scheduler's denoised output)"),
    "StableDiffusionXLImg2ImgPipeline": Family(
        "stable-diffusion-xl-refiner", _refused, _cfg,
        refused="an image-to-image pipeline (the SDXL refiner): memaudit samples text-to-image; audit the base"),
}


def family_of(pipeline) -> Family | None:
    """The registered family of a pipeline object, or None (the generic text-to-image path)."""
    return FAMILIES.get(type(pipeline).__name__)


def check_scheduler(family: Family | None, name: str | None, spec: str) -> None:
    """Refuse a --scheduler the family cannot sample with (before anything is swapped)."""
    if family is None or name is None or family.schedulers is None or name in family.schedulers:
        return
    usable = f"--scheduler {', '.join(family.schedulers)} or none" if family.schedulers else "no --scheduler"
    raise ModelError(f"{spec}: --scheduler {name} does not apply to {family.name}: it {family.scheduler_reason}; "
                     f"it takes {usable}")


def check_steps(pipeline, steps: int | None, spec: str) -> None:
    """LCMScheduler draws its few steps from a schedule of ``original_inference_steps``: more is an error."""
    limit = getattr(pipeline.scheduler.config, "original_inference_steps", None)
    if type(pipeline.scheduler).__name__ == "LCMScheduler" and steps is not None and limit and steps > limit:
        raise ModelError(f"--steps {steps}: the LCM scheduler takes at most its original_inference_steps ({limit}); "
                         "few-step models are sampled with --steps 1..8")


@dataclass(frozen=True)
class Resolved:
    """A family's call resolved for one loaded pipeline."""

    family: Family
    call: dict[str, Any]  # passed to the pipeline's call, recorded
    derived: dict[str, Any]  # computed by the pipeline from the call, recorded only
    guidance: str | None  # what guidance means; None: the pipeline ignores it

    def settings(self) -> dict[str, Any]:
        return {"name": self.family.name, "call": self.call, "derived": self.derived, "guidance": self.guidance}

    def call_arguments(self) -> dict[str, Any]:
        return self.family.call_form(self.call) if self.family.call_form else dict(self.call)

    @property
    def size(self) -> tuple[int, int] | None:
        return (self.call["height"], self.call["width"]) if "height" in self.call else None


def resolve(family: Family, pipeline, spec: str) -> Resolved:
    """The family's call for this pipeline, or ``ModelError`` where the family is refused."""
    if family.refused:
        raise ModelError(f"{spec}: {type(pipeline).__name__} is {family.refused}")
    call, derived = family.resolve(pipeline)
    return Resolved(family, call, derived, family.guidance(pipeline))
