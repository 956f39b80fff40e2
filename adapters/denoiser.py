"""Torch denoising networks in EDM's convention, sampled with EDM's sampler as in the paper.

A network is called as ``net(x, sigma)`` (``net(x, sigma, class_labels)`` when it has
``label_dim > 0``, labels one-hot) on float32 NCHW images in [-1, 1] plus noise, and returns the
denoised image D(x; sigma). A network whose attribute ``prediction`` is ``"eps"`` returns the
noise instead (D = x - sigma * eps). Three ways to bring one:
- an EDM / DiffMemorize training snapshot ``network-snapshot-*.pkl`` (its ``ema`` network); a
  pickle runs code when loaded, so only with --trust-checkpoint, and EDM's code via --code-path;
- a TorchScript file (``torch.jit.save``), loaded without unpickling Python objects;
- a safetensors state dict plus ``--factory file.py:build`` that constructs the network;
- a folder written by ``memaudit emm --precond edm|vp|ve`` (``memaudit_denoiser.json`` +
  ``model.safetensors``): memaudit's own network class rebuilt from the JSON, no code loaded.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from memaudit.errors import ModelError
from memaudit.storage import fingerprint_files, fingerprint_json

from .base import Accepts, SamplerOptions, batches
from .conditioning import LabelChooser
from .edm import edm_sample, edm_settings, to_pixels
from .seeding import check_seeding, draw, generator_device
from .user_code import call_with_known_arguments, load_callable

PICKLE_REFUSAL = ("a pickle runs code when it is loaded, so memaudit refuses it; pass --trust-checkpoint if you "
                  "trust this file (EDM snapshots also need --code-path pointing to EDM's code)")


class DenoiserAdapter:
    """A denoising network sampled from per-seed noise with EDM's sampler (``adapters.edm``), its
    seeds drawn as ``adapters.seeding`` says (EDM's generate.py by default)."""

    def __init__(self, spec: str, net, source: str, kind: str, train, options: SamplerOptions,
                 dataset_kwargs: dict | None = None):
        self.spec, self.net, self.kind, self.device = spec, net, kind, options.device
        self.seeding = check_seeding(options.seeding)
        self.edm = edm_settings(options.steps, options.sampler_options, spec).for_network(net)
        if self.edm.sigma_min >= self.edm.sigma_max:
            raise ModelError(f"{spec}: the network supports sigma {getattr(net, 'sigma_min', 0)}..{getattr(net, 'sigma_max', 'inf')}, "
                             f"which leaves nothing of the requested range; adjust --sampler-option sigma_min/sigma_max")
        if self.edm.stochastic and self.seeding != "edm":
            raise ModelError(f"--sampler-option S_churn {self.edm.S_churn}: stochastic sampling draws its noise "
                             "from each seed's generator and needs --seeding edm")
        self.prediction = getattr(net, "prediction", "x0")
        resolution = getattr(net, "img_resolution", None)
        channels = getattr(net, "img_channels", None)
        self._shape = (resolution, resolution, channels) if resolution and channels else tuple(train.image_shape)
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)
        # EDM's generate.py draws a uniform class per seed unless told a class; legacy asked.
        label_mode = options.labels or ("uniform" if self.seeding == "edm" else None)
        self.labels = LabelChooser(label_mode, self.label_dim, train, spec) if self.label_dim else None
        self._label_mode = label_mode if self.label_dim else None
        self.round_sigma = getattr(net, "round_sigma", None) if callable(getattr(net, "round_sigma", None)) else None
        # EDM snapshots are called exactly as generate.py calls them (float64 x, a 0-d float64
        # sigma, class_labels or None); other networks with float32 x and one sigma per sample.
        self.edm_call = kind == "edm-snapshot"
        # What this network can use; any other option is refused (adapters.base.refuse_inapplicable).
        loading = {"edm-snapshot": {"code_path"}, "torch-pickle": {"code_path"}, "state-dict": {"factory"}}.get(kind, set())
        self.accepts = Accepts(frozenset({"steps", "seeding", "sampler_options", *loading, *(["labels"] if self.label_dim else [])}),
                               f"{'a class-conditional' if self.label_dim else 'an unconditional'} {kind} network "
                               "(EDM's sampler in float64, float32 network input)")
        self.dataset_kwargs = dataset_kwargs
        self.warnings = check_training_data(spec, dataset_kwargs, train) if dataset_kwargs else []
        self._weights = source
        # --labels train draws training images' labels: the samples depend on the training set too
        self._labels_from = train.fingerprint if label_mode == "train" and self.label_dim else None

    @property
    def image_shape(self):
        return self._shape

    def settings(self) -> dict[str, Any]:
        return {"adapter": self.kind, "sampler": "edm-heun" if not self.edm.stochastic else "edm-stochastic",
                "steps": self.edm.steps, "model_evaluations": 2 * self.edm.steps - 1, **self.edm.record(),
                "round_sigma": self.round_sigma is not None, "prediction": self.prediction,
                "seeding": self.seeding, "noise_device": generator_device(self.device) if self.seeding == "edm" else "cpu",
                "labels": self._label_mode}

    def fingerprint(self) -> str:
        return fingerprint_json({"weights": self._weights, "labels_from": self._labels_from, **self.settings()})

    def _draw(self, seeds: Sequence[int]):
        height, width, channels = self._shape
        label_range = self.labels.draw_range if self.labels is not None and self.seeding == "edm" else 0
        return draw(self.seeding, seeds, (channels, height, width), self.device, label_range)

    def _labels(self, seeds: Sequence[int], seed_draw) -> np.ndarray | None:
        if self.labels is None:
            return None
        if self.seeding == "edm":
            return self.labels.from_draws(seed_draw.label_draws.cpu().numpy())
        return self.labels(seeds)

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        if self.labels is None:
            return {}
        labels = [self._labels(chunk, self._draw(chunk)) for chunk in batches(list(seeds), 256)]
        return {"labels": np.concatenate(labels).tolist() if labels else []}

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        out = []
        for chunk in batches(list(seeds), batch_size):
            seed_draw = self._draw(chunk)
            labels = self._labels(chunk, seed_draw)
            if labels is not None:
                labels = torch.eye(self.label_dim, device=self.device)[torch.as_tensor(labels, device=self.device)]
            with torch.inference_mode():
                x = edm_sample(self._denoiser(labels), seed_draw.latents, self.edm, self.round_sigma, seed_draw.randn_like)
            out.append(to_pixels(x))
        return np.concatenate(out)

    def _denoiser(self, labels):
        import torch

        def denoise(x, sigma):
            if self.edm_call:
                result = self.net(x, sigma, labels)
            else:
                sigma_batch = torch.full((len(x),), float(sigma), device=x.device)
                arguments = (x.float(), sigma_batch) if labels is None else (x.float(), sigma_batch, labels)
                result = self.net(*arguments)
            if tuple(result.shape) != tuple(x.shape):
                raise ModelError(f"{self.spec}: the network returned shape {tuple(result.shape)} for input "
                                 f"{tuple(x.shape)}; a denoiser must return its input's shape")
            result = result.to(torch.float64)
            return x - sigma * result if self.prediction == "eps" else result

        return denoise


def check_training_data(spec: str, dataset_kwargs: dict, train) -> list[str]:
    """Compare what an EDM snapshot says it was trained on (``dataset_kwargs``, saved by EDM's training
    loop) with --train. A different resolution makes the audit meaningless and is refused; the
    rest are warnings for audit.json and the report."""
    height, width = train.image_shape[:2]
    resolution = dataset_kwargs.get("resolution")
    if resolution is not None and (int(resolution), int(resolution)) != (height, width):
        raise ModelError(f"{spec}: trained on {resolution}x{resolution} images (its dataset_kwargs) but --train "
                         f"{train.spec} holds {height}x{width} images; audit it against its own training set")
    warnings = []
    size = dataset_kwargs.get("max_size")
    if size is not None and int(size) != len(train):
        warnings.append(f"the snapshot was trained on {int(size)} images (dataset_kwargs.max_size) but --train {train.spec} "
                        f"holds {len(train)}: copies of images missing from --train go unseen, and neighbours from images "
                        "the model never saw can call a sample a copy")
    if dataset_kwargs.get("use_labels") and train.labels is None:
        warnings.append(f"the snapshot was trained with class labels (dataset_kwargs.use_labels) but --train {train.spec} has none")
    if dataset_kwargs.get("xflip"):
        warnings.append("the snapshot was trained with x-flips (dataset_kwargs.xflip): mirrored copies of training "
                        "images are not in --train, so they are not found")
    path = dataset_kwargs.get("path")
    if path and Path(str(path)).name != Path(str(train.spec).partition(":")[2] or train.spec).name:
        warnings.append(f"the snapshot was trained on {path} (dataset_kwargs.path); --train is {train.spec}")
    return warnings


def is_edm_pickle(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pkl"


def is_torchscript(path: Path) -> bool:
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def is_full_torch_pickle(path: Path) -> bool:
    """A ``torch.save`` file that is no TorchScript: unpickling it runs code."""
    return path.is_file() and path.suffix in (".pt", ".pth", ".ckpt") and not is_torchscript(path)


def load_edm_pickle(spec: str, path: Path, train, options: SamplerOptions) -> DenoiserAdapter:
    if not options.trust_checkpoint:
        raise ModelError(f"{spec}: {PICKLE_REFUSAL}")
    if options.code_path:
        code = str(Path(options.code_path).resolve())
        if code not in sys.path:
            sys.path.insert(0, code)
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)  # trusted by the user's explicit --trust-checkpoint
    except ModuleNotFoundError as error:
        raise ModelError(f"{spec}: the pickle needs module {error.name!r}; pass --code-path with the folder that "
                         "defines it (EDM's repository for EDM snapshots)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError) as error:
        raise ModelError(f"{spec}: not a readable snapshot pickle ({type(error).__name__}: {error})") from None
    import torch

    net = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"{spec}: expected an EDM snapshot (a dict with the 'ema' network, a torch module), found "
                         f"{_kind(data)}")
    net = net.eval().requires_grad_(False).to(options.device)
    dataset_kwargs = data.get("dataset_kwargs") if isinstance(data, dict) else None
    return DenoiserAdapter(spec, net, fingerprint_files(path.parent, [path]), "edm-snapshot", train, options,
                           dataset_kwargs=dict(dataset_kwargs) if isinstance(dataset_kwargs, dict) else None)


def load_torchscript(spec: str, path: Path, train, options: SamplerOptions) -> DenoiserAdapter:
    import torch

    try:
        net = torch.jit.load(str(path), map_location=options.device).eval()
    except RuntimeError as error:
        raise ModelError(f"{spec}: not a loadable TorchScript file ({str(error).splitlines()[0]})") from None
    return DenoiserAdapter(spec, net, fingerprint_files(path.parent, [path]), "torchscript", train, options)


def load_full_torch_pickle(spec: str, path: Path, train, options: SamplerOptions) -> DenoiserAdapter:
    import torch

    if not options.trust_checkpoint:
        raise ModelError(f"{spec}: a torch.save file of a whole model is a pickle: {PICKLE_REFUSAL}; "
                         "or save the weights as safetensors and pass --factory")
    if options.code_path and options.code_path not in sys.path:
        sys.path.insert(0, str(Path(options.code_path).resolve()))
    try:
        net = torch.load(path, map_location=options.device, weights_only=False)  # trusted explicitly
    except ModuleNotFoundError as error:
        raise ModelError(f"{spec}: the pickle needs module {error.name!r}; pass --code-path with the folder that "
                         "defines it") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError) as error:
        raise ModelError(f"{spec}: not a readable torch.save file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(net, torch.nn.Module):  # a state dict, a number: nothing to sample
        raise ModelError(f"{spec}: holds {_kind(net)}, not a network (a torch.nn.Module saved whole with torch.save); "
                         "for a state dict save the weights as safetensors and pass --factory file.py:build")
    return DenoiserAdapter(spec, net.eval(), fingerprint_files(path.parent, [path]), "torch-pickle", train, options)


def _kind(value) -> str:
    """How a loaded object is named in a message: a dict by its keys, anything else by its type."""
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:5]) + (", ..." if len(value) > 5 else "")
        return f"a dict (keys {keys})"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def load_state_dict_with_factory(spec: str, path: Path, train, options: SamplerOptions) -> DenoiserAdapter:
    from safetensors.torch import load_file

    if not options.factory:
        raise ModelError(f"{spec}: a safetensors state dict needs --factory file.py:build that constructs its network")
    build, code = load_callable(options.factory)
    try:
        net = call_with_known_arguments(build, {"train": train, "device": options.device})
        net.load_state_dict(load_file(str(path)), strict=True)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"{spec}: loading the weights into {options.factory}'s network failed "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    net = net.eval().requires_grad_(False).to(options.device)
    source = fingerprint_json({"weights": fingerprint_files(path.parent, [path]), "code": code})
    return DenoiserAdapter(spec, net, source, "state-dict", train, options)


def load_memaudit_denoiser(spec: str, path: Path, train, options: SamplerOptions) -> DenoiserAdapter:
    """A denoiser folder trained by ``memaudit emm`` (safetensors + JSON; nothing unpickled)."""
    from memaudit.denoisers.networks import DENOISER_JSON, WEIGHTS, load_denoiser

    net = load_denoiser(path, options.device)
    return DenoiserAdapter(spec, net, fingerprint_files(path, [path / DENOISER_JSON, path / WEIGHTS]),
                           "memaudit-denoiser", train, options)
