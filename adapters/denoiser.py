"""Torch denoising networks in EDM's convention, sampled with EDM's Heun sampler as in the paper.

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

from .base import SamplerOptions, batches
from .conditioning import LabelChooser
from .edm import EDM_STEPS, RHO, SIGMA_MAX, SIGMA_MIN, edm_sigmas, heun_sample
from .user_code import call_with_known_arguments, load_callable

PICKLE_REFUSAL = ("a pickle runs code when it is loaded, so memaudit refuses it; pass --trust-checkpoint if you "
                  "trust this file (EDM snapshots also need --code-path pointing to EDM's code)")


class DenoiserAdapter:
    """A denoising network sampled from per-seed noise with EDM's deterministic Heun sampler."""

    def __init__(self, spec: str, net, source: str, kind: str, train, options: SamplerOptions):
        self.spec, self.net, self.kind, self.device = spec, net, kind, options.device
        self.steps = options.steps or EDM_STEPS
        if self.steps < 2:
            raise ModelError(f"--steps {self.steps}: EDM's Heun sampler needs at least 2 steps")
        self.prediction = getattr(net, "prediction", "x0")
        resolution = getattr(net, "img_resolution", None)
        channels = getattr(net, "img_channels", None)
        self._shape = (resolution, resolution, channels) if resolution and channels else tuple(train.image_shape)
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)
        self.labels = LabelChooser(options.labels, self.label_dim, train, spec) if self.label_dim else None
        self._weights = source
        self._options = options

    @property
    def image_shape(self):
        return self._shape

    def settings(self) -> dict[str, Any]:
        return {"adapter": self.kind, "sampler": "edm-heun", "steps": self.steps, "model_evaluations": 2 * self.steps - 1,
                "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO, "prediction": self.prediction,
                "labels": self._options.labels if self.labels else None}

    def fingerprint(self) -> str:
        return fingerprint_json({"weights": self._weights, **self.settings()})

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        return {"labels": self.labels(seeds).tolist()} if self.labels else {}

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        height, width, channels = self._shape
        sigmas = edm_sigmas(self.steps)
        out = []
        for chunk in batches(list(seeds), batch_size):
            noise = torch.stack([torch.randn((channels, height, width), generator=torch.Generator().manual_seed(int(s)),
                                             dtype=torch.float64) for s in chunk]).to(self.device)
            labels = None
            if self.labels is not None:
                labels = torch.nn.functional.one_hot(torch.as_tensor(self.labels(chunk)), self.label_dim)
                labels = labels.to(self.device, torch.float32)

            def denoise(x, sigma, labels=labels):
                sigma_batch = torch.full((len(x),), float(sigma), device=self.device)
                arguments = (x.float(), sigma_batch) if labels is None else (x.float(), sigma_batch, labels)
                result = self.net(*arguments)
                if tuple(result.shape) != tuple(x.shape):
                    raise ModelError(f"{self.spec}: the network returned shape {tuple(result.shape)} for input "
                                     f"{tuple(x.shape)}; a denoiser must return its input's shape")
                result = result.to(torch.float64)
                return x - float(sigma) * result if self.prediction == "eps" else result

            with torch.inference_mode():
                x = heun_sample(denoise, noise, sigmas)
            pixels = (x * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)  # EDM's output quantisation
            out.append(pixels.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)


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
    net = data.get("ema") if isinstance(data, dict) else data
    if net is None or not callable(net):
        raise ModelError(f"{spec}: expected an EDM snapshot (a dict with the 'ema' network), found {type(data).__name__}")
    net = net.eval().requires_grad_(False).to(options.device)
    return DenoiserAdapter(spec, net, fingerprint_files(path.parent, [path]), "edm-snapshot", train, options)


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
    net = torch.load(path, map_location=options.device, weights_only=False)  # trusted explicitly
    return DenoiserAdapter(spec, net.eval(), fingerprint_files(path.parent, [path]), "torch-pickle", train, options)


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
    from memaudit.emm.networks import DENOISER_JSON, WEIGHTS, load_denoiser

    net = load_denoiser(path, options.device)
    return DenoiserAdapter(spec, net, fingerprint_files(path, [path / DENOISER_JSON, path / WEIGHTS]),
                           "memaudit-denoiser", train, options)
