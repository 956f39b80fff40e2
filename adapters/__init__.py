"""Model adapters: everything memaudit can sample, behind one interface (``base.ModelAdapter``).

MODEL arguments resolve through ``ADAPTERS``: a registered name, optionally ``name:argument``,
or a path that an adapter recognises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memaudit.data import ImageSet
from memaudit.errors import ModelError

from .base import ModelAdapter, SamplerOptions
from .diffusers_pipeline import DiffusersPipelineAdapter, is_pipeline_dir, resolve_hub_cache
from .optimal import OptimalAdapter


@dataclass(frozen=True)
class AdapterEntry:
    load: Callable[[str, str | None, ImageSet, SamplerOptions], ModelAdapter]
    help: str
    recognises: Callable[[Path], bool] | None = None  # for MODEL given as a path


def _load_optimal(spec, argument, train, options):
    return OptimalAdapter(spec, train, options)


def _load_diffusers(spec, argument, train, options):
    path = Path(argument if argument is not None else spec).expanduser()
    if not is_pipeline_dir(path):
        raise ModelError(f"{spec}: not a diffusers pipeline directory (no model_index.json in {path})")
    return DiffusersPipelineAdapter(spec, path, train, options)


def _load_hub_cache(spec, argument, train, options):
    if not argument:
        raise ModelError(f"{spec}: expected hf:ORG/NAME, a repo id in the local Hugging Face cache")
    return DiffusersPipelineAdapter(spec, resolve_hub_cache(argument), train, options)


ADAPTERS: dict[str, AdapterEntry] = {
    "optimal": AdapterEntry(_load_optimal, "the closed-form optimal denoiser of the training set (positive control)"),
    "diffusers": AdapterEntry(_load_diffusers, "a local diffusers pipeline directory (model_index.json)", is_pipeline_dir),
    "hf": AdapterEntry(_load_hub_cache, "hf:ORG/NAME, a diffusers pipeline already in the local Hugging Face cache"),
}


def describe_models() -> str:
    return "; ".join(f"{name}: {entry.help}" for name, entry in ADAPTERS.items())


def load_model(spec: str, train: ImageSet, options: SamplerOptions) -> ModelAdapter:
    """Resolve a MODEL argument to an adapter, or raise ``ModelError`` listing the valid forms."""
    name, sep, argument = spec.partition(":")
    if name in ADAPTERS and (sep or not Path(spec).exists()):
        return ADAPTERS[name].load(spec, argument if sep else None, train, options)
    path = Path(spec).expanduser()
    if path.exists():
        for entry in ADAPTERS.values():
            if entry.recognises is not None and entry.recognises(path):
                return entry.load(spec, None, train, options)
        raise ModelError(f"{spec}: no adapter recognises this path; valid models: {describe_models()}")
    raise ModelError(f"{spec}: unknown model (no such name or path); valid models: {describe_models()}")


__all__ = ["ADAPTERS", "ModelAdapter", "SamplerOptions", "load_model", "describe_models"]
