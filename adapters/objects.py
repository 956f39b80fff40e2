"""Models given as Python objects (the Python API): a diffusers pipeline object, an object with a
``sample`` method, or a plain callable ``sample(seeds) -> uint8 (N, H, W, C)``.

The cache rule for them (design.md, "Trust rules"): a pipeline object is keyed by the content of
its weights and configurations, like a pipeline folder; a callable or object is keyed only by its
own ``fingerprint()``. Without one its samples are never reused from a cache
(``fingerprint_trusted`` False and ``reusable`` False: not even on resume), since nothing memaudit
can see says that the code behind it is the code that drew them.
"""

from __future__ import annotations

import hashlib
import inspect
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memaudit import distributed
from memaudit.errors import ModelError
from memaudit.storage import fingerprint_json

from .base import Accepts, SamplerOptions


def describe_model(model) -> str:
    """How a model object is named in audit.json and messages: ``<DDPMPipeline object>``."""
    if isinstance(model, (str, Path)):
        return str(model)
    name = getattr(model, "__qualname__", None) if inspect.isfunction(model) or inspect.ismethod(model) else None
    return f"<{name or type(model).__name__} {'function' if name else 'object'}>"


def is_diffusers_pipeline(model) -> bool:
    """Whether ``model`` is a diffusers ``DiffusionPipeline`` (told by its classes, so that a
    callable is recognised without importing diffusers)."""
    return any(cls.__name__ == "DiffusionPipeline" and cls.__module__.startswith("diffusers.")
               for cls in type(model).__mro__)


def adapt_object(model, train, options: SamplerOptions):
    """The adapter of a model object; ``ModelError`` naming what would be valid otherwise."""
    if is_diffusers_pipeline(model):
        return PipelineObjectAdapter(model, train, options)
    if callable(getattr(model, "sample", None)) or callable(model):
        return CallableAdapter(model, train, options)
    raise ModelError(f"model={describe_model(model)}: not a model memaudit can sample; expected a MODEL spec or path, "
                     "a diffusers pipeline object, an object with sample(seeds, batch_size, conditioning=None), "
                     "or a callable sample(seeds) -> uint8 array (N, H, W, C)")


def weights_digest(pipeline) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes) and configuration of a pipeline's
    components: the in-memory counterpart of hashing a pipeline folder's files."""
    import torch

    digest = hashlib.sha256()
    digest.update(type(pipeline).__name__.encode())
    for name, component in sorted(pipeline.components.items()):
        digest.update(f"\0{name}:{type(component).__module__}.{type(component).__name__}".encode())
        config = getattr(component, "config", None)  # diffusers: a dict; transformers: a PretrainedConfig
        if config is not None:
            digest.update(_json_text(config.to_dict() if hasattr(config, "to_dict") else dict(config)).encode())
        elif hasattr(component, "get_vocab"):  # a tokenizer: its vocabulary decides the prompts' tokens
            digest.update(_json_text(component.get_vocab()).encode())
        if isinstance(component, torch.nn.Module):
            for key, tensor in sorted(component.state_dict().items()):
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{key}|{flat.dtype}|{tuple(tensor.shape)}".encode())
                digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _json_text(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _from_diffusers(obj) -> bool:
    return type(obj).__module__.split(".")[0] in ("diffusers", "transformers")


class PipelineObjectAdapter:
    """A diffusers pipeline object, sampled exactly as a pipeline folder is (``DiffusersPipelineAdapter``).

    It samples a shallow copy (the same modules in a new pipeline), so that the sampler swap,
    progress-bar setting and detached safety checker of the audit never change the caller's
    pipeline (its modules, shared, do move to the audit's device). Its fingerprint hashes the weights in memory; a pipeline or component class from
    outside diffusers/transformers is code that hash cannot see, so its samples are not reused."""

    def __init__(self, pipeline, train, options: SamplerOptions):
        from .diffusers_pipeline import DiffusersPipelineAdapter

        spec = describe_model(pipeline)
        try:
            copy = type(pipeline)(**pipeline.components)
        except TypeError as error:
            raise ModelError(f"model={spec}: cannot rebuild the pipeline from its components ({error})") from None
        self._inner = DiffusersPipelineAdapter(spec, Path("."), train, options, pipeline=copy)
        self.spec = spec
        self.fingerprint_trusted = _from_diffusers(pipeline) and all(
            component is None or _from_diffusers(component) or not hasattr(component, "forward")
            for component in pipeline.components.values())
        self.reusable = self.fingerprint_trusted
        self._weights = weights_digest(pipeline)

    def __getattr__(self, name):  # pipeline, family, accepts, initial_noise, safety_flags, ...
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def image_shape(self):
        return self._inner.image_shape

    def settings(self) -> dict[str, Any]:
        return {**self._inner.settings(), "source": "python object"}

    def fingerprint(self) -> str:
        return fingerprint_json({"weights": self._weights, **self.settings()})

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        return self._inner.conditioning(seeds)

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        return self._inner.sample(seeds, batch_size, conditioning)


class CallableAdapter:
    """A plain callable ``sample(seeds) -> uint8 (N, H, W, C)``, or an object whose ``sample``
    follows the adapter signature ``sample(seeds, batch_size, conditioning=None)`` (it may also
    define ``fingerprint()``, ``settings()``, ``conditioning(seeds)`` and ``image_shape``).

    The contract is the adapters' one: sample i depends on ``seeds[i]`` alone. Every batch is
    checked for dtype and shape. Sampler options do not reach a callable, so they are refused."""

    def __init__(self, model, train, options: SamplerOptions):
        self.model = model
        self.spec = describe_model(model)
        self._function = model.sample if callable(getattr(model, "sample", None)) else model
        self._positional = _positional_count(self._function)
        self._expected_shape = tuple(getattr(model, "image_shape", None) or train.image_shape)
        self.fingerprint_trusted = callable(getattr(model, "fingerprint", None))
        self.reusable = self.fingerprint_trusted  # no fingerprint: never from a cache, even on resume
        if not self.fingerprint_trusted and distributed.current().distributed:
            raise ModelError(f"model={self.spec}: under torchrun the ranks share sample shards by the model's key; "
                             "define fingerprint() on the model (a string that changes whenever its samples would)")
        self._nonce = uuid.uuid4().hex  # keys the samples of an object without fingerprint() to this run alone
        self.accepts = Accepts(frozenset(), f"a Python {'object' if self._function is not model else 'callable'} "
                                            f"({self.spec})")

    @property
    def image_shape(self):
        return self._expected_shape

    def settings(self) -> dict[str, Any]:
        own = self.model.settings() if callable(getattr(self.model, "settings", None)) else {}
        return {"adapter": "python-object", "object": self.spec, **own}

    def fingerprint(self) -> str:
        if not self.fingerprint_trusted:
            return fingerprint_json({"object": self.spec, "unfingerprinted": self._nonce})
        return fingerprint_json({"object": type(self.model).__qualname__, "model": str(self.model.fingerprint()),
                                 "shape": list(self._expected_shape)})

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        own = getattr(self.model, "conditioning", None)
        return own(list(seeds)) if callable(own) else {}

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        seeds = [int(s) for s in seeds]
        arguments = (seeds, batch_size, conditioning)[:max(1, self._positional)]
        images = self._function(*arguments)  # the caller's own errors surface as they are
        expected = (len(seeds), *self._expected_shape)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape != expected:
            got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
            raise ModelError(f"model={self.spec}: sample() returned {got}; expected a uint8 numpy array of shape "
                             f"{expected} (one image per seed, NHWC, the training images' size)")
        return images


def _positional_count(function) -> int:
    """How many positional arguments of (seeds, batch_size, conditioning) ``function`` takes."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 3
    return min(3, sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                      for p in parameters))
