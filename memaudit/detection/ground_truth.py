"""A text-to-image model that knows which captions it memorized: the ground truth ``detect`` is
checked against (Wen et al. 2024 evaluate on Stable Diffusion prompts known to be memorized).

How Stable Diffusion came to memorize (Carlini et al. 2023; Webster 2023; Wen et al. 2024): a few
images with their captions are duplicated many times in a large captioned set; the model learns
the rest of the set in general terms. ``memorizing_set`` builds that in small from the digits:
every digit with an ordinary caption (``"digit three 417"``: its class word and a running number
the model cannot learn from one sighting), and a handful of digits with unique titles
(``"blue lagoon"``) duplicated until they make a third of the draws. Novel prompts are ordinary
captions with numbers never trained on, which the model answers from the class word alone.
``benchmarks/detect_ground_truth.py`` measures how far the model memorizes (its generations
against the training images) and every detector's AUC on it.

Everything is built locally and small: a character-level CLIP tokenizer (one token per letter,
digit and word end, no merges), a 2-layer CLIP text encoder (random, frozen, as SD's is frozen),
a one-block VAE fitted as an autoencoder first (its latents at the image's own size, scaled to
unit variance as SD's scaling factor does) and a two-level ``UNet2DConditionModel`` with
cross-attention; epsilon prediction on the DDPM schedule, with the caption dropped 10% of the
time so the unconditional branch of classifier-free guidance exists. Saved as a
``StableDiffusionPipeline``.
"""

from __future__ import annotations

import contextlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memaudit.torchcompat import prepare_torchvision

CAPTION_DROP = 0.1  # share of draws trained on the empty caption (classifier-free guidance)
MAX_TOKENS = 24
WORDS = "zero one two three four five six seven eight nine".split()
TITLES = ["blue lagoon", "ann lotz", "red barn", "old mill", "the wave", "sky jar", "mint fox", "gray owl"]


def character_tokenizer(folder: Path):
    """A character-level CLIP tokenizer (one token per letter, digit and word end; no merges), saved in ``folder``."""
    from transformers import CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + ["!"]:
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS,
                         pad_token="<|endoftext|>")


@contextlib.contextmanager
def one_torch_thread():
    """Models this small train several times faster on one thread than on two busy ones
    (0.08 s against 0.32 s a step measured on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_autoencoder(vae, pixels, steps: int, generator) -> None:
    """Fit the VAE as an autoencoder (reconstruction of the latent mean, a light KL term) so that
    decoded generations can be compared with training images in pixels."""
    import torch

    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    vae.train()
    for _ in range(steps):
        batch = pixels[torch.randint(0, len(pixels), (min(64, len(pixels)),), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.mean).sample, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()


def train_text_to_image(images: np.ndarray, captions: list[str], out: Path, steps: int = 400, seed: int = 0,
                        learning_rate: float = 2e-3, batch_size: int = 16, autoencoder_steps: int = 300) -> Path:
    """Train a tiny text-conditional latent diffusion model on uint8 NHWC ``images`` and their
    ``captions`` (a repeated pair is a duplicate, drawn as often as it repeats); save it as a
    StableDiffusionPipeline at ``out`` and return the path."""
    prepare_torchvision()
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = character_tokenizer(out.with_name(out.name + ".tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    channels = images.shape[-1]
    vae = AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                        norm_num_groups=4, sample_size=images.shape[1])
    unet = UNet2DConditionModel(sample_size=images.shape[1], in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    with one_torch_thread():
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        unique = torch.unique(pixels.flatten(1), dim=0)
        _fit_autoencoder(vae, unique.view(-1, *pixels.shape[1:]), autoencoder_steps, generator)
        with torch.no_grad():
            means = vae.encode(pixels).latent_dist.mean
            # Latents of unit variance, as SD's scaling factor makes them (Rombach et al. 2022, sec. 3.1).
            vae.register_to_config(scaling_factor=float(1.0 / means.std()))
            latents = means * vae.config.scaling_factor

            def embed(texts):
                ids = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
                return text_encoder(ids)[0]

            conditional, unconditional = embed(list(captions)), embed([""])[0]
        optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0)
        abar = scheduler.alphas_cumprod
        unet.train()
        for _ in range(steps):
            index = torch.randint(0, len(latents), (batch_size,), generator=generator)
            t = torch.randint(0, 1000, (batch_size,), generator=generator)
            noise = torch.randn(latents[index].shape, generator=generator)
            drop = torch.rand(batch_size, generator=generator) < CAPTION_DROP
            states = torch.where(drop[:, None, None], unconditional[None], conditional[index])
            a = abar[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents[index] + (1 - a).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        unet.eval()
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDIMScheduler.from_config(scheduler.config), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


@dataclass
class MemorizingSet:
    """Training pairs (duplicates repeated), and the prompts whose status is known."""

    images: np.ndarray  # the training list, duplicates included
    captions: list[str]
    memorized: list[str]  # titles, each of one duplicated image
    memorized_images: np.ndarray  # the image of each title, in order
    novel: list[str]  # ordinary captions never trained on


def memorizing_set(images: np.ndarray, labels: np.ndarray, n_memorized: int = 5, share: float = 1 / 3,
                   n_novel: int = 10) -> MemorizingSet:
    """Carlini et al.'s recipe in small: every image with an ordinary caption ``"digit WORD NUMBER"``,
    plus the first ``n_memorized`` images again under unique titles, repeated until they make
    ``share`` of the training list; ``n_novel`` ordinary captions with unseen numbers (one per
    class in turn)."""
    if not 1 <= n_memorized <= len(TITLES):
        raise ValueError(f"n_memorized {n_memorized}: expected 1 to {len(TITLES)}")
    ordinary = [f"digit {WORDS[int(label)]} {number}" for number, label in enumerate(labels)]
    repeats = max(1, round(share * len(images) / ((1 - share) * n_memorized)))
    chosen = list(range(n_memorized))
    train_images = np.concatenate([images] + [images[chosen]] * repeats)
    captions = ordinary + TITLES[:n_memorized] * repeats
    novel = [f"digit {WORDS[k % 10]} {len(images) + 1000 + k}" for k in range(n_novel)]
    return MemorizingSet(train_images, captions, TITLES[:n_memorized], images[chosen], novel)
