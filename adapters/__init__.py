"""Model adapters: everything memaudit can sample, behind one interface (``base.ModelAdapter``).

A MODEL argument resolves through ``ADAPTERS``: a registered name (optionally ``name:argument``),
else the first adapter whose ``recognises`` accepts it (a path of a known kind, a code reference).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from memaudit.data import ImageSet
from memaudit.denoisers.networks import is_denoiser_dir
from memaudit.errors import ModelError

from .base import Accepts, ModelAdapter, SamplerOptions, refuse_inapplicable
from .denoiser import (is_edm_pickle, is_full_torch_pickle, is_torchscript, load_edm_pickle, load_full_torch_pickle,
                       load_memaudit_denoiser, load_state_dict_with_factory, load_torchscript)
from .diffusers_pipeline import DiffusersPipelineAdapter, is_pipeline_dir, resolve_hub_cache
from .finetunes import is_component_dir
from .objects import adapt_object
from .optimal import OptimalAdapter
from .snapshots import is_diffusers_checkpoint, load_diffusers_checkpoint
from .user_code import UserCodeAdapter, is_code_reference


@dataclass(frozen=True)
class AdapterEntry:
    load: Callable[[str, str | None, ImageSet, SamplerOptions], ModelAdapter]
    help: str
    recognises: Callable[[str], bool] | None = None  # for MODEL given as a path or code reference
    queryable: bool = True  # a network to query (mia, detect); optimal is defined by a training set


def _path_loader(check: Callable[[Path], bool], load, what: str):
    """An entry's loader for MODEL given as ``name:PATH`` or as a PATH it recognises."""
    def loader(spec, argument, train, options):
        path = Path(argument if argument is not None else spec).expanduser()
        if not check(path):
            raise ModelError(f"{spec}: not {what} ({path})")
        return load(spec, path, train, options)
    return loader


def _on_path(check: Callable[[Path], bool]) -> Callable[[str], bool]:
    return lambda spec: check(Path(spec).expanduser())


def _load_hub_cache(spec, argument, train, options):
    if not argument:
        raise ModelError(f"{spec}: expected hf:ORG/NAME, a repo id in the local Hugging Face cache")
    return DiffusersPipelineAdapter(spec, resolve_hub_cache(argument), train, options)


def base_pipeline_path(base: str) -> Path:
    """The folder of ``--base``: a diffusers pipeline folder, or hf:ORG/NAME in the local cache."""
    if base.startswith("hf:"):
        return resolve_hub_cache(base[3:])
    path = Path(base).expanduser()
    if not is_pipeline_dir(path):
        raise ModelError(f"--base {base}: not a diffusers pipeline folder (no model_index.json); expected the "
                         "pipeline the fine-tune was made from, a folder or hf:ORG/NAME")
    return path


def _load_component(spec, argument, train, options):
    """A fine-tuned UNet/transformer folder, loaded into the ``--base`` pipeline in place of its own."""
    path = Path(argument if argument is not None else spec).expanduser()
    if not is_component_dir(path):
        raise ModelError(f"{spec}: not a diffusers model folder (config.json and weights, no model_index.json)")
    if options.base is None:
        raise ModelError(f"{spec}: a single model folder (a fine-tuned UNet or transformer); give --base DIR, "
                         "the pipeline it was fine-tuned from, to load it into")
    return DiffusersPipelineAdapter(spec, base_pipeline_path(options.base), train, options, component=path)


def _is_state_dict(path: Path) -> bool:
    return path.is_file() and path.suffix == ".safetensors"


ADAPTERS: dict[str, AdapterEntry] = {
    "optimal": AdapterEntry(lambda spec, arg, train, options: OptimalAdapter(spec, train, options),
                            "the closed-form optimal denoiser of the training set (positive control)",
                            queryable=False),
    "diffusers": AdapterEntry(_path_loader(is_pipeline_dir, DiffusersPipelineAdapter, "a diffusers pipeline directory"),
                              "a local diffusers pipeline directory (model_index.json)", _on_path(is_pipeline_dir)),
    "component": AdapterEntry(_load_component, "a fine-tuned UNet/transformer folder (config.json + weights) "
                              "with --base DIR, the pipeline it goes into", _on_path(is_component_dir)),
    "hf": AdapterEntry(_load_hub_cache, "hf:ORG/NAME, a diffusers pipeline already in the local Hugging Face cache"),
    "checkpoint": AdapterEntry(_path_loader(is_diffusers_checkpoint, load_diffusers_checkpoint, "a diffusers checkpoint-N folder"),
                               "a checkpoint-N folder of the diffusers training scripts (unet/ or unet_ema/)",
                               _on_path(is_diffusers_checkpoint)),
    "edm": AdapterEntry(_path_loader(is_edm_pickle, load_edm_pickle, "an EDM snapshot .pkl"),
                        "an EDM network-snapshot-*.pkl (needs --trust-checkpoint)", _on_path(is_edm_pickle)),
    "memaudit-denoiser": AdapterEntry(_path_loader(is_denoiser_dir, load_memaudit_denoiser,
                                                   "a memaudit denoiser folder (memaudit_denoiser.json)"),
                                      "a folder written by memaudit emm --precond edm|vp|ve (safetensors + JSON)",
                                      _on_path(is_denoiser_dir)),
    "torchscript": AdapterEntry(_path_loader(is_torchscript, load_torchscript, "a TorchScript file"),
                                "a TorchScript denoiser D(x, sigma) (torch.jit.save)", _on_path(is_torchscript)),
    "torch-pickle": AdapterEntry(_path_loader(is_full_torch_pickle, load_full_torch_pickle, "a torch.save file"),
                                 "a whole model saved with torch.save (needs --trust-checkpoint)",
                                 _on_path(is_full_torch_pickle)),
    "state-dict": AdapterEntry(_path_loader(_is_state_dict, load_state_dict_with_factory, "a .safetensors file"),
                               "a .safetensors state dict with --factory file.py:build", _on_path(_is_state_dict)),
    "code": AdapterEntry(lambda spec, arg, train, options: UserCodeAdapter(arg or spec, train, options),
                         "path/to/file.py:factory or package.module:factory returning an adapter", is_code_reference),
}


def describe_models() -> str:
    return "; ".join(f"{name}: {entry.help}" for name, entry in ADAPTERS.items())


def load_model(spec: str, train: ImageSet, options: SamplerOptions) -> ModelAdapter:
    """Resolve a MODEL argument to an adapter, or raise ``ModelError`` listing the valid forms."""
    adapter = _resolve(spec, train, options)
    refuse_inapplicable(adapter, options)  # an option the model cannot use is an error, never ignored
    _refuse_finetune(adapter, options)
    return adapter


def _refuse_finetune(adapter, options: SamplerOptions) -> None:
    """--lora, --embedding and --base need a diffusers pipeline, also for adapters that declare no ``accepts``."""
    given = [flag for flag, value in (("--lora", options.loras), ("--embedding", options.embeddings),
                                      ("--base", options.base)) if value]
    if given and not isinstance(adapter, DiffusersPipelineAdapter):
        raise ModelError(f"{adapter.spec}: {given[0]} applies to diffusers pipelines (a folder with model_index.json, "
                         "hf:ORG/NAME, or a fine-tuned component folder with --base), not to this model")


def _resolve(spec: str, train: ImageSet, options: SamplerOptions) -> ModelAdapter:
    name, sep, argument = spec.partition(":")
    if name in ADAPTERS and (sep or not Path(spec).exists()):
        return ADAPTERS[name].load(spec, argument if sep else None, train, options)
    for entry in ADAPTERS.values():
        if entry.recognises is not None and entry.recognises(spec):
            return entry.load(spec, None, train, options)
    if Path(spec).exists():
        raise ModelError(f"{spec}: no adapter recognises this path; valid models: {describe_models()}")
    raise ModelError(f"{spec}: unknown model (no such name or path); valid models: {describe_models()}")


def load_model_to_query(spec: str, options: SamplerOptions) -> ModelAdapter:
    """A model loaded to be queried (membership inference, detection), never sampled: a conditional
    model gets a placeholder condition source, since every queried image brings its own label or
    caption; only the options the user set are checked against the model."""
    name = spec.partition(":")[0]
    if name in ADAPTERS and not ADAPTERS[name].queryable and not Path(spec).exists():
        raise ModelError(f"{spec}: {ADAPTERS[name].help}, not a trained network to query; give a trained MODEL "
                         "(a diffusers pipeline, an EDM snapshot, a memaudit emm folder, ...)")
    placeholder = ImageSet(images=np.zeros((1, 1, 1, 1), np.uint8), ids=["-"], spec="(queried)", captions=["-"])
    adapter = _resolve(spec, placeholder, dataclasses.replace(options, labels="uniform", prompts="train"))
    refuse_inapplicable(adapter, options)
    return adapter


def load_model_object(model, train: ImageSet, options: SamplerOptions) -> ModelAdapter:
    """The adapter of MODEL: a spec or path (``load_model``) or a Python object
    (``objects``: a diffusers pipeline object, a callable); options it cannot use refused."""
    if isinstance(model, (str, Path)):
        return load_model(str(model), train, options)
    adapter = adapt_object(model, train, options)
    refuse_inapplicable(adapter, options)
    _refuse_finetune(adapter, options)
    return adapter


def model_to_query(model, options: SamplerOptions) -> ModelAdapter:
    """A model loaded to be queried (``load_model_to_query``), also from a Python object."""
    if isinstance(model, (str, Path)):
        return load_model_to_query(str(model), options)
    placeholder = ImageSet(images=np.zeros((1, 1, 1, 1), np.uint8), ids=["-"], spec="(queried)", captions=["-"])
    adapter = adapt_object(model, placeholder, dataclasses.replace(options, labels="uniform", prompts="train"))
    refuse_inapplicable(adapter, options)
    return adapter


__all__ = ["base_pipeline_path", "ADAPTERS", "Accepts", "ModelAdapter", "SamplerOptions", "load_model", "load_model_to_query",
           "load_model_object", "model_to_query", "describe_models"]
