"""diffusers pipelines from a local directory or the local Hugging Face cache (offline).

Three families, told apart by the pipeline itself:
- unconditional (DDPM, DDIM, latent LDM, score-SDE, any call taking batch_size/generator/output_type);
- class-conditional (a UNet2DModel with a class embedding, or a DiT-style call taking class_labels);
- text-to-image (a call taking prompt: the Stable Diffusion family; latents decoded to pixels).
DDPM, DDIM, LDM and DiT pipelines run memaudit's own loop (``diffusers_loops``), which draws
every noise from the seed's generator; the others are called as they are, and a draw from torch's
global random state (a generator not passed on) is refused rather than left to make samples
depend on the batch. Options the loaded pipeline cannot use are refused (``accepts``), and the
settings it runs with, the pipeline's defaults included, are recorded (``settings``).
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memaudit import progress
from memaudit.errors import ModelError
from memaudit.storage import fingerprint_files, fingerprint_json
from memaudit.torchcompat import prepare_torchvision

from .base import Accepts, SamplerOptions, batches, to_uint8
from .conditioning import LabelChooser, PromptChooser
from .diffusers_loops import LOOPS, LoopRequest, seed_noise
from .finetunes import FineTune
from .schedulers import swap_scheduler

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
SAFETY_CHECKER_MODES = {
    "off": "not loaded: the audit sees what the model draws",
    "flag": "run on every sample; flagged samples are marked and audited as drawn, never blacked out",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@contextlib.contextmanager
def _quiet_diffusers():
    """No loading bars, log lines or network requests from diffusers: memaudit reports its own
    errors in one line, and loads only what is on disk (memaudit.hub.offline)."""
    from diffusers.utils import logging as diffusers_logging

    from memaudit.hub import offline

    libraries = [diffusers_logging]
    with contextlib.suppress(ImportError):  # text encoders load through transformers
        from transformers.utils import logging as transformers_logging

        libraries.append(transformers_logging)
    verbosities = [library.get_verbosity() for library in libraries]
    for library in libraries:
        library.set_verbosity(library.CRITICAL)
        library.disable_progress_bar()
    try:
        with offline():
            yield
    finally:
        for library, verbosity in zip(libraries, verbosities):
            library.set_verbosity(verbosity)
            library.enable_progress_bar()


def _report_step(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
    """diffusers' ``callback_on_step_end``: tell memaudit's progress that a denoising step is done."""
    progress.denoising_step(step + 1, len(pipeline.scheduler.timesteps))
    return callback_kwargs


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


def _weight_variants(path: Path) -> set[str]:
    """Variants of the weight files under a pipeline folder (``model.fp16.safetensors`` -> fp16)."""
    variants = set()
    for file in path.rglob("*"):
        if file.suffix in _WEIGHT_SUFFIXES:
            parts = file.name.split(".")
            if len(parts) == 3:
                variants.add(parts[1])
    return variants


def _has_plain_weights(path: Path, suffix: str) -> bool:
    return any(len(file.name.split(".")) == 2 for file in path.rglob(f"*{suffix}"))


def _load_hint(path: Path, options: SamplerOptions) -> str:
    """What would make a failed load work, judged from the files there."""
    variants = _weight_variants(path)
    if options.variant is None and variants and not _has_plain_weights(path, ".safetensors"):
        names = sorted(variants)
        choice = names[0] if len(names) == 1 else f"one of {', '.join(names)}"
        return f" (the folder holds weights of variant {', '.join(names)} only: pass --variant {choice})"
    if not options.trust_checkpoint and any(path.rglob("*.bin")):
        return " (pickled .bin weights and custom code load only with --trust-checkpoint)"
    return ""


def _model_index(path: Path) -> dict:
    import json

    try:
        return json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}


def _ships_safety_checker(index: dict) -> bool:
    entry = index.get("safety_checker")
    return isinstance(entry, (list, tuple)) and entry[0] is not None


def _json_config(config) -> dict[str, Any]:
    """A scheduler's configuration as JSON values (internal ``_`` keys left out)."""
    import json

    return {k: json.loads(json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
            for k, v in dict(config).items() if not k.startswith("_")}


def _default(parameters, name: str):
    parameter = parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


class DiffusersPipelineAdapter:
    """Samples a diffusers pipeline with one CPU generator per seed.

    Weights load from safetensors only, and no code from the checkpoint runs, unless the user
    passes --trust-checkpoint: pickled ``.bin`` weights and custom pipeline code execute on load.
    """

    def __init__(self, spec: str, path: Path, train, options: SamplerOptions, pipeline=None,
                 component: Path | None = None):
        """Load the pipeline at ``path`` (or take ``pipeline`` built from the files at ``path``);
        ``component``: a fine-tuned UNet/transformer folder put in its place (``finetunes``)."""
        prepare_torchvision()
        import diffusers
        import torch
        from diffusers import DiffusionPipeline

        self.spec, self.path, self.options = spec, path, options
        self.device = options.device
        if options.dtype not in DTYPES:
            raise ModelError(f"--dtype {options.dtype}: expected one of {', '.join(DTYPES)}")
        if options.dtype != "fp32" and not options.device.startswith("cuda"):
            raise ModelError(f"--dtype {options.dtype}: half precision needs a CUDA device; use fp32 on {options.device}")
        if options.safety_checker not in SAFETY_CHECKER_MODES:
            raise ModelError(f"--safety-checker {options.safety_checker}: expected one of {', '.join(SAFETY_CHECKER_MODES)}")
        if options.steps is not None and options.steps < 1:
            raise ModelError(f"--steps {options.steps}: expected a positive number of sampling steps")
        self.dtype = getattr(torch, DTYPES[options.dtype])
        trusted = options.trust_checkpoint
        loaded_here = pipeline is None
        ships_checker = loaded_here and _ships_safety_checker(_model_index(path))
        self.finetune = FineTune(spec, options, component)  # files and scales checked before anything loads
        if self.finetune.active and not loaded_here:
            raise ModelError(f"{spec}: --lora and --embedding load into a diffusers pipeline folder (model_index.json) "
                             "or hf:ORG/NAME; into a pipeline object or a training checkpoint, load them yourself first")
        if loaded_here:
            if options.variant is not None and options.variant not in _weight_variants(path):
                present = ", ".join(sorted(_weight_variants(path))) or "none (plain weights only: leave --variant out)"
                raise ModelError(f"--variant {options.variant}: {spec} has no weights of that variant; variants there: {present}")
            extra = {"safety_checker": None} if ships_checker and options.safety_checker == "off" else {}
            extra.update(self.finetune.components(path, _model_index(path), self.dtype, options))
            try:
                with _quiet_diffusers():
                    pipeline = DiffusionPipeline.from_pretrained(
                        path, use_safetensors=None if trusted else True, local_files_only=True,
                        trust_remote_code=trusted, dtype=self.dtype, variant=options.variant, **extra)
            except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as error:
                raise ModelError(f"{spec}: cannot load as a diffusers pipeline with safetensors weights "
                                 f"({_first_line(error)}){_load_hint(path, options)}") from None
            with _quiet_diffusers():
                self.finetune.apply(pipeline)
        self._checker = getattr(pipeline, "safety_checker", None)
        if self._checker is not None:  # never run inside the pipeline: it would black samples out
            pipeline.safety_checker = None
        self.safety_checker = options.safety_checker if ships_checker else None
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
        self.loop = LOOPS.get(type(pipeline).__name__)
        # settings actually used: the user's, else the pipeline's own defaults
        self.steps = options.steps if options.steps is not None else _default(self.call_parameters, "num_inference_steps")
        self.guidance = None
        if self.family != "unconditional" and "guidance_scale" in self.call_parameters:
            self.guidance = options.guidance if options.guidance is not None else _default(self.call_parameters, "guidance_scale")
        self.accepts = self._accepted(type(pipeline).__name__, loaded_here, ships_checker)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline.to(options.device)
        if self._checker is not None:  # detached from the pipeline, so moved on its own
            self._checker = self._checker.to(options.device)
        self._diffusers_version = diffusers.__version__

    def _accepted(self, pipeline_name: str, loaded_here: bool, ships_checker: bool) -> Accepts:
        """The options this pipeline can use (``base.refuse_inapplicable`` refuses the others)."""
        usable = {"scheduler", "dtype"}
        if "num_inference_steps" in self.call_parameters:
            usable.add("steps")
        usable |= {"class-conditional": {"labels"}, "text-to-image": {"prompts"}}.get(self.family, set())
        if self.guidance is not None:
            usable.add("guidance")
        if loaded_here:
            usable.add("variant")
        if ships_checker:
            usable.add("safety_checker")
        if loaded_here:  # a fine-tune's files, and the base it is compared with (auditing.base)
            usable |= {"loras", "embeddings", "base"}
        return Accepts(frozenset(usable), f"{'an' if self.family == 'unconditional' else 'a'} {self.family} {pipeline_name}")

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        config = getattr(self.denoiser, "config", None)
        if config is None or getattr(config, "sample_size", None) is None:
            return None
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        vae = getattr(self.pipeline, "vae", None) or getattr(self.pipeline, "vqvae", None)
        if vae is not None:  # latent model: pixels are vae_scale_factor times the latent size
            scale = getattr(self.pipeline, "vae_scale_factor", 2 ** (len(vae.config.block_out_channels) - 1))
            return (height * scale, width * scale, vae.config.out_channels)
        return (height, width, config.out_channels)

    def settings(self) -> dict[str, Any]:
        """Every setting the samples are drawn with, the pipeline's defaults resolved."""
        return {
            "adapter": "diffusers",
            "family": self.family,
            "pipeline": type(self.pipeline).__name__,
            "loop": "memaudit" if self.loop is not None else "pipeline",
            "scheduler": type(self.pipeline.scheduler).__name__,
            "scheduler_config": _json_config(self.pipeline.scheduler.config),
            "steps": self.steps,
            "labels": self.options.labels if self.labels else None,
            "prompts": self.options.prompts if self.prompts else None,
            **({"prompts_digest": self.prompts.digest()} if self.prompts else {}),
            "guidance": self.guidance,
            "dtype": self.options.dtype,
            "variant": self.options.variant,
            "safety_checker": self.safety_checker,
            "diffusers_version": self._diffusers_version,
            # only for a fine-tune, so a plain pipeline's fingerprint (and its cached samples) stay as they were
            **({"finetune": self.finetune.settings()} if self.finetune.active else {}),
        }

    def fingerprint(self) -> str:
        files = [p for p in self.path.rglob("*")
                 if p.is_file() and not any(part.startswith(".") for part in p.parts[len(self.path.parts):])]
        return fingerprint_json({"weights": fingerprint_files(self.path, files), **self.settings()})

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        if self.labels is not None:
            return {"labels": self.labels(seeds).tolist()}
        if self.prompts is not None:  # prompt_index: the training row (train) or file prompt each seed drew
            return {"prompts": self.prompts(seeds), "prompt_index": self.prompts.indices(seeds)}
        return {}

    def initial_noise(self, seeds: Sequence[int]):
        """The float32 starting noise of each seed, (len(seeds), C, H, W): a function of the seed alone,
        bit for bit, whatever the batch (the exact part of the batch-size promise)."""
        import torch

        size = self.denoiser.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (self.denoiser.config.in_channels, height, width)
        return seed_noise([torch.Generator("cpu").manual_seed(int(s)) for s in seeds], shape)

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        out = []
        for chunk in batches(list(seeds), batch_size):
            # CPU generators: the noise (and any sampler noise) depends on the seed alone,
            # whatever the device and the batch.
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in chunk]
            with torch.inference_mode(), self._seeded_draws_only():
                images = self._loop(chunk, generators) if self.loop is not None else self._call(chunk, generators)
            out.append(to_uint8(np.asarray(images, dtype=np.float64)))
        return np.concatenate(out)

    @contextlib.contextmanager
    def _seeded_draws_only(self):
        """Refuse a batch that drew from torch's global random state: its samples would depend on
        what was drawn before them (the batch, the shard), not on their seeds."""
        import torch

        cuda = self.device.startswith("cuda")
        before = torch.random.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else []
        yield
        after = torch.random.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else []
        if not torch.equal(before[0], after[0]) or any(not torch.equal(a, b) for a, b in zip(before[1], after[1])):
            raise ModelError(f"{self.spec}: {type(self.pipeline).__name__} with {type(self.pipeline.scheduler).__name__} "
                             "draws random numbers outside the seeds' generators, so its samples would not follow "
                             "their seeds; choose another sampler with --scheduler (ddim is deterministic)")

    def _loop(self, seeds, generators):
        labels = self.labels(seeds).tolist() if self.labels is not None else None
        return self.loop(LoopRequest(self.pipeline, generators, self.steps, self.guidance, labels, self.device, self.dtype))

    def _call(self, seeds, generators):
        kwargs: dict[str, Any] = {"generator": generators, "output_type": "np"}
        if self.steps is not None:
            kwargs["num_inference_steps"] = self.steps
        if self.guidance is not None:
            kwargs["guidance_scale"] = self.guidance
        if self.family == "text-to-image":
            kwargs["prompt"] = self.prompts(seeds)
        elif self.family == "class-conditional":
            kwargs["class_labels"] = self.labels(seeds).tolist()
        else:
            kwargs["batch_size"] = len(seeds)
        if "callback_on_step_end" in self.call_parameters:  # the bar moves per denoising step
            kwargs["callback_on_step_end"] = _report_step
        return self.pipeline(**kwargs).images

    def safety_flags(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray | None:
        """Which samples the pipeline's safety checker flags (``--safety-checker flag``), or None when
        it is off. The checker only classifies here: the samples stay as the model drew them."""
        if self.safety_checker != "flag" or self._checker is None:
            return None
        import torch
        from PIL import Image

        flags = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            # the pipeline's own route: uint8 PIL images through its feature extractor
            clip_input = self.pipeline.feature_extractor([Image.fromarray(image) for image in chunk], return_tensors="pt")
            with torch.inference_mode():
                _, flagged = self._checker(images=chunk.astype(np.float32) / 255.0,
                                           clip_input=clip_input.pixel_values.to(self.device, self.dtype))
            flags.extend(bool(f) for f in flagged)
        return np.array(flags, dtype=bool)
