"""Fine-tunes on top of a diffusers pipeline: LoRA files (``--lora FILE[:SCALE]``), textual-inversion
embeddings (``--embedding FILE``) and a fine-tuned UNet/transformer folder loaded into its base
pipeline (MODEL a component folder, with ``--base DIR``).

Everything loads through diffusers' own loaders (``load_lora_weights`` with one adapter name per
file and ``set_adapters`` with the scales; ``load_textual_inversion``; a component passed to
``DiffusionPipeline.from_pretrained``), so a fine-tune samples as diffusers samples it. Files are
safetensors unless ``--trust-checkpoint`` allows pickles (the rule of every checkpoint memaudit
loads). Each file's content digest, scale and what it added are part of the model's settings, hence
of its fingerprint: samples of the base and of each fine-tune never share a cache entry.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit.errors import ModelError
from memaudit.storage import file_digest, fingerprint_files

from .base import SamplerOptions

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch.load files: code can run on load
_COMPONENT_WEIGHTS = ("diffusion_pytorch_model", "model")


@dataclass(frozen=True)
class LoraFile:
    path: Path
    scale: float
    text: str  # as the user wrote it


def parse_lora(text: str) -> LoraFile:
    """``FILE`` or ``FILE:SCALE`` (scale 1.0 when left out). A trailing ``:...`` without a slash is
    read as the scale, so a bad scale is an error, not a missing file of a strange name."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head and "/" not in tail and "\\" not in tail and not Path(text).expanduser().is_file():
        try:
            scale = float(tail)
        except ValueError:
            raise ModelError(f"--lora {text}: scale {tail!r} is not a number; expected FILE or FILE:SCALE "
                             "such as lora.safetensors:0.8") from None
        if not math.isfinite(scale):
            raise ModelError(f"--lora {text}: scale {tail} is not finite; expected a number such as 0.8")
        return LoraFile(Path(head).expanduser(), scale, str(text))
    return LoraFile(Path(text).expanduser(), 1.0, str(text))


def _check_file(path: Path, flag: str, text: str, trusted: bool) -> None:
    if not path.is_file():
        raise ModelError(f"{flag} {text}: no such file; expected a .safetensors file")
    if path.suffix == ".safetensors":
        return
    if path.suffix in PICKLE_SUFFIXES:
        if not trusted:
            raise ModelError(f"{flag} {text}: a pickled {path.suffix} file runs code when loaded; convert it to "
                             ".safetensors, or pass --trust-checkpoint if you trust it")
        return
    raise ModelError(f"{flag} {text}: expected a .safetensors file (or {', '.join(PICKLE_SUFFIXES)} with --trust-checkpoint)")


def lora_layout(path: Path) -> str:
    """The key naming of a LoRA file: kohya (``lora_unet_...``), peft (``...lora_A.weight``),
    diffusers (``...lora.down.weight``), or unknown (diffusers' loader decides)."""
    if path.suffix != ".safetensors":
        return "pickle"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise ModelError(f"--lora {path}: not a readable safetensors file ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    if any(".lora.down." in k or ".lora_linear_layer." in k or ".lora.up." in k for k in keys):
        return "diffusers"
    return "unknown"


def is_component_dir(path: Path) -> bool:
    """A single diffusers model saved with ``save_pretrained`` (config.json and weights, no
    model_index.json): a fine-tuned UNet or transformer to load into a base pipeline."""
    if not path.is_dir() or (path / "model_index.json").exists() or not (path / "config.json").is_file():
        return False
    try:  # diffusers writes _class_name (transformers' text encoders do not: they are not a denoiser)
        if "_class_name" not in json.loads((path / "config.json").read_text(encoding="utf-8")):
            return False
    except (OSError, ValueError, TypeError):
        return False
    return any(f.name.startswith(_COMPONENT_WEIGHTS) and f.suffix in (".safetensors", ".bin", ".json")
               and (f.suffix != ".json" or f.name.endswith(".index.json"))  # sharded: the weight map
               for f in path.iterdir() if f.is_file())


def _component_class(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: config.json is not readable JSON ({error})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise ModelError(f"{path}: config.json names no diffusers model class (_class_name); expected a UNet or "
                         "transformer folder saved with save_pretrained")
    return name


class FineTune:
    """What ``--lora``, ``--embedding`` and a component MODEL add to a base pipeline; checked (files,
    scales) before anything loads, applied by ``DiffusersPipelineAdapter``."""

    def __init__(self, spec: str, options: SamplerOptions, component: Path | None = None):
        trusted = options.trust_checkpoint
        self.spec = spec
        self.loras = [parse_lora(text) for text in options.loras]
        for lora in self.loras:
            _check_file(lora.path, "--lora", lora.text, trusted)
        self.embeddings = [Path(text).expanduser() for text in options.embeddings]
        for path, text in zip(self.embeddings, options.embeddings):
            _check_file(path, "--embedding", text, trusted)
        self.component = component
        self.component_class = _component_class(component) if component is not None else None
        self.component_name: str | None = None
        self.layouts = [lora_layout(lora.path) for lora in self.loras]
        self.tokens: list[list[str]] = []
        self.base = options.base

    @property
    def active(self) -> bool:
        return bool(self.loras or self.embeddings or self.component is not None)

    def components(self, base_path: Path, index: dict, dtype, options: SamplerOptions) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments putting the fine-tuned component in its place in the base."""
        if self.component is None:
            return {}
        import diffusers

        names = [name for name, entry in index.items()
                 if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] == self.component_class]
        if len(names) != 1:
            held = ", ".join(f"{name} ({entry[1]})" for name, entry in index.items()
                             if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]) or "none"
            raise ModelError(f"{self.spec}: a {self.component_class} folder, but --base {base_path} has "
                             f"{'no' if not names else 'several'} such component; its components: {held}")
        model_class = getattr(diffusers, self.component_class, None)
        if model_class is None or not hasattr(model_class, "from_pretrained"):
            raise ModelError(f"{self.spec}: {self.component_class} is not a diffusers model class")
        self.component_name = names[0]
        trusted = options.trust_checkpoint
        try:
            model = model_class.from_pretrained(self.component, use_safetensors=None if trusted else True,
                                                torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            hint = " (pickled .bin weights load only with --trust-checkpoint)" if not trusted and any(
                self.component.glob("*.bin")) else ""
            raise ModelError(f"{self.spec}: cannot load as a {self.component_class} with safetensors weights "
                             f"({first}){hint}") from None
        return {names[0]: model}

    def apply(self, pipeline) -> None:
        """Load the LoRA files (one adapter each, then their scales) and the embeddings into ``pipeline``."""
        kind = type(pipeline).__name__
        if self.loras:
            if not hasattr(pipeline, "load_lora_weights"):
                raise ModelError(f"--lora: {self.spec} is a {kind}, which has no LoRA loader in diffusers; "
                                 "--lora applies to pipelines with load_lora_weights (Stable Diffusion, SDXL, SD3, Flux, ...)")
            names = []
            for number, lora in enumerate(self.loras):
                name = f"lora{number}"
                try:
                    pipeline.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=name,
                                               use_safetensors=lora.path.suffix == ".safetensors")
                except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError, RuntimeError) as error:
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise ModelError(f"--lora {lora.text}: diffusers cannot load it into {kind} ({first[:300]})") from None
                names.append(name)
            pipeline.set_adapters(names, adapter_weights=[lora.scale for lora in self.loras])
        if self.embeddings:
            if not hasattr(pipeline, "load_textual_inversion") or getattr(pipeline, "tokenizer", None) is None:
                raise ModelError(f"--embedding: {self.spec} is a {kind}, which has no textual-inversion loader in "
                                 "diffusers; --embedding applies to pipelines with load_textual_inversion (Stable Diffusion 1.x/2.x)")
            for path, text in zip(self.embeddings, [str(p) for p in self.embeddings]):
                before = set(pipeline.tokenizer.get_vocab())
                try:
                    pipeline.load_textual_inversion(str(path.parent), weight_name=path.name,
                                                    use_safetensors=path.suffix == ".safetensors")
                except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise ModelError(f"--embedding {text}: diffusers cannot load it into {kind} ({first[:300]})") from None
                added = sorted(set(pipeline.tokenizer.get_vocab()) - before)
                self.tokens.append(added)

    @functools.cached_property
    def _digests(self) -> dict[str, str]:
        """Content digests, read once (fingerprint() and settings() ask for them repeatedly)."""
        digests = {str(path): file_digest(path) for path in [lora.path for lora in self.loras] + self.embeddings}
        if self.component is not None:
            files = [p for p in self.component.rglob("*") if p.is_file()
                     and not any(part.startswith(".") for part in p.parts[len(self.component.parts):])]
            digests["component"] = fingerprint_files(self.component, files)
        return digests

    def settings(self) -> dict[str, Any]:
        """What the fine-tune adds, with each file's content digest (part of the model fingerprint)."""
        component = None
        if self.component is not None:
            component = {"folder": str(self.component), "name": self.component_name, "class": self.component_class,
                         "sha256": self._digests["component"]}
        return {
            "loras": [{"file": str(lora.path), "sha256": self._digests[str(lora.path)], "scale": lora.scale,
                       "adapter_name": f"lora{number}", "layout": layout}
                      for number, (lora, layout) in enumerate(zip(self.loras, self.layouts))],
            "embeddings": [{"file": str(path), "sha256": self._digests[str(path)],
                            "tokens": self.tokens[number] if number < len(self.tokens) else []}
                           for number, path in enumerate(self.embeddings)],
            "component": component,
            "base": self.base if self.component is not None else None,
        }
