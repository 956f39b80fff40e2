"""A loaded model seen the way membership-inference attacks query it: a noise predictor
eps_theta(x_t, t, condition) on the DDPM discrete schedule (Ho et al. 2020), plus the map
between images and the space the model diffuses in.

All four attacks (loss, PIA, SecMI, score norm) are written against this one interface, as the
authors' code is written against an ``EpsGetter`` and ``noise_level[t] = prod_{k<=t}(1 - beta_k)``.
- diffusers pipelines: the U-Net (``UNet2DModel``, class labels when it has a class embedding;
  ``UNet2DConditionModel`` with the pipeline's text encoder), the scheduler's ``alphas_cumprod``,
  and the VAE's latent mean for latent models;
- EDM-style denoisers D(x; sigma) (EDM snapshots, TorchScript, state dicts): queried at the VP
  noise level of DDPM step t, sigma_t = sqrt((1 - abar_t) / abar_t), on DDPM's linear schedule
  (beta 1e-4..0.02, T = 1000), with eps = (x/sqrt(abar) - D(x/sqrt(abar); sigma)) / sigma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from memaudit.errors import ModelError


@dataclass
class Conditions:
    """What each queried image is conditioned on: its class label or its caption (None: nothing)."""

    labels: np.ndarray | None = None
    captions: list[str] | None = None
    keys: np.ndarray | None = None  # each image's content digest (seeds --loss-noise per-image)

    def take(self, rows) -> "Conditions":
        """The conditions of ``rows`` (a slice or an index array)."""
        captions = None
        if self.captions is not None:
            captions = [self.captions[i] for i in np.arange(len(self.captions))[rows]]
        return Conditions(None if self.labels is None else np.asarray(self.labels)[rows], captions,
                          None if self.keys is None else np.asarray(self.keys)[rows])


def linear_alphas_cumprod(steps: int = 1000, beta_1: float = 1e-4, beta_t: float = 0.02):
    """DDPM's linear schedule (Ho et al. 2020), float64: abar_t = prod_{k<=t} (1 - beta_k)."""
    import torch

    return torch.cumprod(1.0 - torch.linspace(beta_1, beta_t, steps, dtype=torch.float64), 0)


class NoisePredictor:
    """eps_theta(x_t, t, c) of one model; ``encode`` maps uint8 NHWC images to x_0 in [-1, 1] (or latents)."""

    kind: str
    alphas_cumprod: Any  # float64 torch tensor, indexed by the integer timestep
    conditioning: str  # "none", "class" or "text"

    def eps(self, x, t: int, conditions: Conditions):
        raise NotImplementedError

    def encode(self, images: np.ndarray):
        import torch

        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a copy: memory-mapped sets are read-only
        x = x.to(self.device, torch.float32)
        return x / 127.5 - 1.0

    def decode(self, x0) -> np.ndarray:
        """x_0 (model space) back to uint8 NHWC pixels, for the report's reconstructions."""
        return ((x0.float().clamp(-1, 1) + 1.0) * 127.5).round().to("cpu").permute(0, 2, 3, 1).numpy().astype(np.uint8)

    def check(self, conditions: Conditions, name: str) -> None:
        """A conditional model needs every queried image's label or caption."""
        if self.conditioning == "class" and conditions.labels is None:
            raise ModelError(f"{name}: the model is class-conditional; the images need labels (each member is "
                             "scored under its own label)")
        if self.conditioning == "text" and not conditions.captions:
            raise ModelError(f"{name}: the model is text-to-image; the images need captions (each member is "
                             "scored under its own caption)")


class DiffusersPredictor(NoisePredictor):
    def __init__(self, adapter):
        import torch

        pipeline = adapter.pipeline
        self.unet, self.device = pipeline.unet, adapter.device
        self.kind = type(self.unet).__name__
        self.alphas_cumprod = pipeline.scheduler.alphas_cumprod.to(torch.float64)
        prediction = getattr(pipeline.scheduler.config, "prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ModelError(f"{adapter.spec}: scheduler prediction_type {prediction!r}; the attacks need epsilon "
                             "or v_prediction")
        self.prediction = prediction
        self.vae = getattr(pipeline, "vae", None)
        self.text_encoder, self.tokenizer = getattr(pipeline, "text_encoder", None), getattr(pipeline, "tokenizer", None)
        if self.text_encoder is not None:
            self.conditioning = "text"
        elif getattr(self.unet.config, "num_class_embeds", None):
            self.conditioning = "class"
        else:
            self.conditioning = "none"
        self._text_cache: dict[str, Any] = {}

    def _embed(self, captions: Sequence[str]):
        import torch

        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            tokens = self.tokenizer(list(missing), padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids.to(self.device)
            with torch.inference_mode():
                states = self.text_encoder(tokens)[0]
            self._text_cache.update(zip(missing, states))
        return torch.stack([self._text_cache[c] for c in captions])

    def eps(self, x, t: int, conditions: Conditions):
        import torch

        timestep = torch.full((len(x),), int(t), device=self.device, dtype=torch.long)
        with torch.inference_mode():
            if self.conditioning == "text":
                out = self.unet(x, timestep, encoder_hidden_states=self._embed(conditions.captions)).sample
            elif self.conditioning == "class":
                out = self.unet(x, timestep, class_labels=torch.as_tensor(conditions.labels, device=self.device)).sample
            else:
                out = self.unet(x, timestep).sample
        if self.prediction == "v_prediction":  # eps = sqrt(abar) v + sqrt(1 - abar) x_t
            abar = float(self.alphas_cumprod[int(t)])
            out = abar ** 0.5 * out + (1 - abar) ** 0.5 * x
        return out

    def encode(self, images: np.ndarray):
        import torch

        x = super().encode(images)
        if self.vae is None:
            return x
        with torch.inference_mode():  # the latent mean: deterministic, as SecMI-LDM and PIA query SD
            return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, x0) -> np.ndarray:
        import torch

        if self.vae is not None:
            with torch.inference_mode():
                x0 = self.vae.decode(x0 / self.vae.config.scaling_factor).sample
        return super().decode(x0)


class DenoiserPredictor(NoisePredictor):
    """An EDM-convention denoiser D(x; sigma) queried on the VP path of DDPM's linear schedule."""

    conditioning = "none"

    def __init__(self, adapter):
        self.net, self.device = adapter.net, adapter.device
        self.kind, self.label_dim = adapter.kind, adapter.label_dim
        self.prediction = adapter.prediction
        self.alphas_cumprod = linear_alphas_cumprod()
        if self.label_dim:
            self.conditioning = "class"

    def eps(self, x, t: int, conditions: Conditions):
        import torch

        abar = float(self.alphas_cumprod[int(t)])
        sigma = ((1.0 - abar) / abar) ** 0.5
        x_sigma = x / abar ** 0.5  # VP x_t = sqrt(abar) (x_0 + sigma n): EDM's x is x_t / sqrt(abar)
        arguments = [x_sigma, torch.full((len(x),), sigma, device=self.device)]
        if self.label_dim:
            labels = torch.as_tensor(conditions.labels, device=self.device)
            arguments.append(torch.nn.functional.one_hot(labels, self.label_dim).float())
        with torch.inference_mode():
            out = self.net(*arguments).float()
        return out if self.prediction == "eps" else (x_sigma - out) / sigma


def noise_predictor(adapter, spec: str) -> NoisePredictor:
    """The noise predictor of a loaded model adapter; ``ModelError`` for models the attacks cannot query."""
    if getattr(adapter, "pipeline", None) is not None and getattr(adapter.pipeline, "unet", None) is not None:
        return DiffusersPredictor(adapter)
    if getattr(adapter, "net", None) is not None:
        return DenoiserPredictor(adapter)
    raise ModelError(f"{spec}: membership inference needs the model's noise predictor: a diffusers pipeline with a "
                     "U-Net, an EDM snapshot, a TorchScript or a state-dict denoiser")
