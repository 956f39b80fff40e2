"""Neural feature spaces: open_clip, DINOv2 (timm) and SSCD (TorchScript), from local weights only.

Images are preprocessed as each model expects (resize the shorter side, centre-crop, normalise)
with batched tensor operations, so extraction costs little beyond the model's own forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memaudit.errors import InputError
from memaudit.features.space import FeatureSpace
from memaudit.hub import cached_hub_file, offline
from memaudit.storage import file_digest
from memaudit.torchcompat import prepare_torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    resize: int  # shorter side after resizing
    crop: int | None  # centre crop (square); None: none
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    squash: bool = False  # resize straight to resize x resize, aspect not kept (open_clip's "squash")

    def describe(self) -> str:
        squash = "-squash" if self.squash else ""
        return f"resize{self.resize}{squash}-crop{self.crop}-{self.interpolation}-mean{self.mean}-std{self.std}"

    def __call__(self, batch: np.ndarray, device: str):
        """uint8 NHWC -> normalised float32 NCHW on ``device``."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        height, width = x.shape[-2:]
        scale = self.resize / min(height, width)
        size = (self.resize, self.resize) if self.squash else (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False).clamp(0, 1)
        if self.crop is not None:
            top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            if top < 0 or left < 0:
                x = F.interpolate(x, size=(self.crop, self.crop), mode=self.interpolation, antialias=True)
            else:
                x = x[..., top:top + self.crop, left:left + self.crop]
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std


def _weights_file(spec: str, text: str, how_to_get: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"--space {spec}: weights file {text} not found; {how_to_get} (memaudit never downloads)")
    return path


def load_state_dict(path: Path, spec: str) -> dict:
    """A state dict from safetensors, or from a torch file with weights_only=True (no code runs)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError for full objects under weights_only
        raise InputError(f"--space {spec}: {path} is not a plain state dict ({type(error).__name__}); "
                         "save the weights with safetensors or torch.save(model.state_dict())") from None
    for key in ("state_dict", "model", "module"):  # common wrappers around a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _encoder_space(spec, model, preprocess: Preprocess, digest: str, device: str, thresholds: dict, settings: dict,
                   forward):
    import torch

    model = model.eval().to(device)  # inference_mode below: no gradients

    def extract(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            features = forward(model, preprocess(batch, device)).float()
            features = torch.nn.functional.normalize(features.flatten(1), dim=1)
        return features.cpu().numpy()

    return FeatureSpace(name=spec, metric="cosine", extract=extract, digest=f"{digest}|{preprocess.describe()}",
                        batch_size=64, thresholds=thresholds, settings={**settings, "preprocess": preprocess.describe()})


@contextlib.contextmanager
def _open_clip_logs_silenced():
    """open_clip logs through the root logger, which prints warnings to stderr when nothing is
    configured: "No pretrained weights loaded ... initialized randomly" would be printed for every
    clip:MODEL@FILE space, whose weights memaudit loads right after."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _require_cached_tag(spec: str, open_clip, model_name: str, tag: str) -> None:
    """Refuse at once, without a network request, a pretrained tag open_clip does not know or
    whose weights are not in the local cache (where open_clip would look: the Hugging Face hub
    cache for tags hosted there, ~/.cache/clip for the others)."""
    from open_clip import pretrained

    config = pretrained.get_pretrained_cfg(model_name, tag)
    if not config:
        tags = ", ".join(pretrained.list_pretrained_tags_by_model(model_name)) or "none"
        raise InputError(f"--space {spec}: open_clip has no pretrained tag {tag!r} for {model_name}; its tags: {tags}")
    if "file" in config and os.path.isfile(config["file"]):
        return
    hub = config.get("hf_hub", "")
    if hub and pretrained.has_hf_hub():
        repo_id, filename = os.path.split(hub)
        filename = filename or getattr(pretrained, "HF_WEIGHTS_NAME", "open_clip_pytorch_model.bin")
        # open_clip prefers a .safetensors twin of the file when there is one (a private helper: guarded)
        alternatives = getattr(pretrained, "_get_safe_alternatives", lambda name: [])(filename)
        if cached_hub_file(repo_id, [*alternatives, filename]) is not None:
            return
        where = f"the Hugging Face hub cache (repo {repo_id}, file {filename})"
    elif config.get("url"):
        where = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(config["url"]))
        if os.path.isfile(where):
            return
    else:
        where = "any local cache"
    raise InputError(f"--space {spec}: the weights of open_clip's {model_name}:{tag} are not in {where} and memaudit "
                     "never downloads; fetch them once with open_clip where there is network, or pass clip:MODEL@FILE")


def make_clip_space(spec: str, argument: str, device: str):
    """``clip:MODEL@WEIGHTS`` (a local file) or ``clip:MODEL:TAG`` (open_clip's local cache)."""
    prepare_torchvision()
    import open_clip

    model_name, at, weights = argument.partition("@")
    tag = None
    if not at:
        model_name, _, tag = argument.partition(":")
        if not tag:
            raise InputError(f"--space {spec}: expected clip:MODEL@WEIGHTS_FILE or clip:MODEL:PRETRAINED_TAG")
    if model_name.endswith(".json"):  # a model config of the user's own
        open_clip.add_model_config(Path(model_name).expanduser())
        model_name = Path(model_name).stem
    if model_name not in open_clip.list_models():
        raise InputError(f"--space {spec}: open_clip has no model {model_name!r}; see open_clip.list_models()")
    if tag is not None:
        _require_cached_tag(spec, open_clip, model_name, tag)
        try:
            with offline(), _open_clip_logs_silenced():  # a failure is reported below, in one line
                model = open_clip.create_model(model_name, pretrained=tag, cache_dir=None, load_weights=True,
                                               require_pretrained=True)
        except Exception as error:
            raise InputError(f"--space {spec}: cannot load open_clip's {model_name}:{tag} from the local cache "
                             f"({type(error).__name__}: {_first_line(error)})") from None
        digest = f"open_clip:{model_name}:{tag}"
    else:
        path = _weights_file(spec, weights, "save the model's state dict (safetensors or torch) to that path")
        with offline(), _open_clip_logs_silenced():  # offline: a Hugging Face text tower would fetch its config
            model = open_clip.create_model(model_name, pretrained=None)  # the weights are loaded just below
        try:
            model.load_state_dict(load_state_dict(path, spec), strict=True)
        except RuntimeError as error:
            raise InputError(f"--space {spec}: {path} does not fit {model_name} ({str(error).splitlines()[0]})") from None
        digest = file_digest(path)
    cfg = model.visual.preprocess_cfg
    size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    preprocess = Preprocess(resize=size, crop=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                            interpolation="bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear",
                            squash=cfg.get("resize_mode") == "squash")  # SigLIP-style configs squash
    return _encoder_space(spec, model, preprocess, digest, device, {"nn-ratio": 1.0 / 3.0, "cosine": 0.95},
                          {"model": model_name, "pretrained": tag}, lambda m, x: m.encode_image(x))


def make_dinov2_space(spec: str, argument: str, device: str):
    """``dinov2:MODEL@WEIGHTS``: a timm DINOv2 ViT (e.g. vit_small_patch14_dinov2), CLS features."""
    prepare_torchvision()
    import timm

    model_name, at, weights = argument.partition("@")
    if not at:
        raise InputError(f"--space {spec}: expected dinov2:TIMM_MODEL@WEIGHTS_FILE, e.g. dinov2:vit_small_patch14_dinov2@dinov2_vits14.pth")
    if model_name not in timm.list_models():
        raise InputError(f"--space {spec}: timm has no model {model_name!r}")
    path = _weights_file(spec, weights, "download the DINOv2 weights (timm or torch.hub layout) once and pass their path")
    with offline():
        model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=224)
    state = load_state_dict(path, spec)
    try:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)  # accepts torch.hub (facebookresearch) key layout
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as error:
        raise InputError(f"--space {spec}: {path} does not fit {model_name} ({str(error).splitlines()[0]})") from None
    preprocess = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return _encoder_space(spec, model, preprocess, file_digest(path), device, {"nn-ratio": 1.0 / 3.0, "cosine": 0.95},
                          {"model": model_name}, lambda m, x: m(x))


def make_sscd_space(spec: str, argument: str, device: str):
    """``sscd:FILE``: an SSCD TorchScript model (Pizzi et al. 2022), as Somepalli et al. (2023) use."""
    import torch

    path = _weights_file(spec, argument, "get an SSCD TorchScript file (e.g. sscd_disc_mixup.torchscript.pt from the "
                                         "facebookresearch/sscd-copy-detection release; licence CC-BY-NC)")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise InputError(f"--space {spec}: {path} is not a TorchScript file ({str(error).splitlines()[0]})") from None
    preprocess = Preprocess(resize=288, crop=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
    return _encoder_space(spec, model, preprocess, file_digest(path), device, {"nn-ratio": 1.0 / 3.0, "cosine": 0.5},
                          {"model": "sscd"}, lambda m, x: m(x))
