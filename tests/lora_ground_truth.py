"""A LoRA fine-tune of a tiny Stable Diffusion on 10 captioned real images, and its base: the ground
truth of ``memaudit audit BASE --base BASE --lora L.safetensors --train captioned/ --prompts train``.

Everything is built here, on CPU, from real images that ship inside scikit-learn
(``load_sample_images``: the China temple and flower photographs, 427x640 RGB):

- the images: 16x16 RGB tiles, each the area-average of a 48x48 square on a grid of
  non-overlapping squares of either photograph. The 10 *members* (the fine-tuning set, one caption
  each) are the tiles farthest from every other tile, so no non-member looks like a member; the
  others are the base's pretraining tiles and *non-members* for the independent check;
- the base: a ``StableDiffusionPipeline`` of diffusers' and transformers' own classes: a
  character-level ``CLIPTokenizer`` and a random, frozen 2-layer ``CLIPTextModel`` (SD's text encoder
  is frozen too), an ``AutoencoderTiny`` (one 2x downsampling, 12 latent channels) fitted as an
  autoencoder on every tile (it reconstructs, it does not generate: SD's VAE reconstructs any
  natural image), and a two-level ``UNet2DConditionModel`` with cross-attention at 8x8 latents,
  pretrained briefly with v-prediction (SD 2.x's objective) on the pretraining tiles under
  ordinary captions (``"photo tile 17"``): it has never seen a member;
- the LoRA: diffusers' LoRA training conventions (``train_text_to_image_lora.py``): the base frozen,
  ``unet.add_adapter(LoraConfig(...))``, the diffusion loss on the members' latents under their
  captions, saved with ``StableDiffusionPipeline.save_lora_weights`` from
  ``get_peft_model_state_dict`` so that ``pipeline.load_lora_weights(file)`` loads it. The adapted
  modules are the attention projections and, as kohya's "LoCon" LoRAs do, the transformer blocks'
  other linear layers and the ResNet convolutions (``TARGETS``): on a UNet this small the
  attention projections alone did not learn the images in a CPU budget (measured: nearest
  training image its own caption's 0-30% of the time after 1200 steps);
- ``captioned/``: the members as ``NAME.png`` with their captions in ``NAME.txt`` sidecars.

The build is deterministic (one torch thread, fixed seeds) and cached in a folder named by the
digest of the settings, this file's source (and the tokenizer's) and the library versions, complete once
``built.json`` is written. ``benchmarks/lora_ground_truth.py`` prints its figures as JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from memaudit.detection.ground_truth import MAX_TOKENS, character_tokenizer, one_torch_thread

TILE, PIXELS = 48, 16  # a 48x48 square of a photograph, area-averaged to 16x16
CAPTION_DROP = 0.1  # the base learns the empty caption too (classifier-free guidance's branch)
# The members' captions: distinct words the base never saw (its own captions are "china tile N").
# Distinct from the first character (a shared prefix gives every caption the same first token
# states under CLIP's causal attention, and slows the learning of which image is whose).
CAPTIONS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "jade"]
PREDICTION = "v_prediction"  # SD 2.x's: x0 is learnt directly at high noise, so copies form fast
LATENT_CHANNELS = 12
TARGETS = {  # the modules a LoRA adapts
    "attention": ["to_k", "to_q", "to_v", "to_out.0"],  # diffusers' LoRA scripts
    # kohya/LyCORIS "LoCon" style: the attention projections plus the transformer blocks' other
    # linear layers and the ResNet convolutions
    "locon": ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
              "conv_shortcut", "time_emb_proj"],
}
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name save_lora_weights gives


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    pretrain_tiles: int = 64  # non-member tiles the base is pretrained on
    extra_nonmembers: int = 30  # further non-member tiles, only in the independent check's reference set
    vae_steps: int = 600
    vae_lr: float = 3e-3
    base_steps: int = 300
    base_lr: float = 2e-3
    lora_targets: str = "locon"
    lora_rank: int = 64  # at least every adapted layer's width: a LoRA as expressive as full fine-tuning
    lora_steps: int = 800
    lora_lr: float = 2e-3
    batch_size: int = 16


@dataclass
class GroundTruth:
    base: Path  # the base pipeline folder (save_pretrained, safetensors)
    lora: Path  # the LoRA .safetensors file
    captioned: Path  # members as NAME.png + NAME.txt
    members: np.ndarray  # (10, 16, 16, 3) uint8, in caption order
    captions: list[str]
    nonmembers: np.ndarray  # real tiles the fine-tune never saw (pretraining tiles first)
    settings: Settings
    build_seconds: float = 0.0
    cached: bool = False
    extra: dict = field(default_factory=dict)


def real_tiles() -> tuple[np.ndarray, list[str]]:
    """Every tile of the grid on both photographs, as uint8 (N, 16, 16, 3), and their names."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    tiles, names = [], []
    for photo, filename in zip(photos.images, photos.filenames):
        stem = Path(filename).stem
        rows, cols = photo.shape[0] // TILE, photo.shape[1] // TILE
        for r in range(rows):
            for c in range(cols):
                square = photo[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
                tiles.append(np.asarray(Image.fromarray(square).resize((PIXELS, PIXELS), Image.BOX)))
                names.append(f"{stem}-r{r}c{c}")
    return np.stack(tiles), names


def choose(settings: Settings) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Members: the 10 most isolated tiles (largest uint8 L2 distance to the nearest tile that does
    not touch it), none touching another, so that each is a distinct picture with no look-alike
    among the non-members; the other tiles, in a seeded order, give the pretraining tiles and the
    extra non-members (tiles touching a member excluded)."""
    tiles, names = real_tiles()
    flat = tiles.reshape(len(tiles), -1).astype(np.float64)
    distance = np.sqrt(np.maximum((flat ** 2).sum(1)[:, None] + (flat ** 2).sum(1)[None] - 2 * flat @ flat.T, 0))
    touching = np.array([[_adjacent(a, b) for b in names] for a in names])
    isolation = np.where(touching, np.inf, distance).min(axis=1)
    members: list[int] = []
    for index in np.argsort(-isolation, kind="stable"):
        if not touching[index, members].any():
            members.append(int(index))
        if len(members) == len(CAPTIONS):
            break
    rest = np.flatnonzero(~touching[:, members].any(axis=1))
    rest = np.random.default_rng(settings.seed).permutation(rest)
    pretrain = rest[:settings.pretrain_tiles]
    extra = rest[settings.pretrain_tiles:settings.pretrain_tiles + settings.extra_nonmembers]
    return tiles[members], [names[m] for m in members], tiles[pretrain], tiles[extra]


def _adjacent(a: str, b: str) -> bool:
    """Tiles of the same photograph that touch (neighbours share an edge or corner)."""
    (pa, ra, ca), (pb, rb, cb) = (_grid(a), _grid(b))
    return pa == pb and abs(ra - rb) <= 1 and abs(ca - cb) <= 1


def _grid(name: str) -> tuple[str, int, int]:
    photo, place = name.rsplit("-", 1)
    r, c = place[1:].split("c")
    return photo, int(r), int(c)


def _pixels(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _diffusion_steps(unet, latents, states, unconditional, steps, lr, batch_size, generator, drop, params):
    """The diffusion loss of diffusers' training scripts (uniform timesteps, SD's scaled-linear
    schedule, target ``PREDICTION``), AdamW on ``params``; the last batch's loss."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    abar = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled_linear
    abar = torch.cumprod(1.0 - abar, 0).float()
    unet.train()
    for _ in range(steps):
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        t = torch.randint(0, 1000, (batch_size,), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator)
        cond = states[index]
        if drop:
            dropped = torch.rand(batch_size, generator=generator) < drop
            cond = torch.where(dropped[:, None, None], unconditional[None], cond)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents[index] + (1 - a).sqrt() * noise
        target = noise if PREDICTION == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents[index]  # v (Salimans & Ho 2022)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    unet.eval()
    return float(loss.detach())


def _build_base(out: Path, pretrain: np.ndarray, tiles: np.ndarray, settings: Settings, generator) -> dict:
    """Fit the VAE, pretrain the UNet on the pretraining tiles; save the StableDiffusionPipeline."""
    import torch
    from diffusers import AutoencoderTiny, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = character_tokenizer(out.parent / "tokenizer-files")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    vae = AutoencoderTiny(encoder_block_out_channels=(32, 32), decoder_block_out_channels=(32, 32),
                          num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=LATENT_CHANNELS)
    unet = UNet2DConditionModel(sample_size=PIXELS // 2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    # The VAE as an autoencoder of every tile (SD's VAE reconstructs any natural image; it draws
    # nothing by itself). The base UNet is pretrained on the pretraining tiles only.
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.vae_lr)
    everything = _pixels(tiles)
    vae.train()
    for _ in range(settings.vae_steps):
        batch = everything[torch.randint(0, len(everything), (32,), generator=generator)]
        loss = torch.nn.functional.mse_loss(vae.decode(vae.encode(batch).latents).sample, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    vae_loss = float(loss.detach())
    with torch.no_grad():
        means = vae.encode(_pixels(pretrain)).latents
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))  # unit-variance latents, as SD's factor
        latents = means * vae.config.scaling_factor
        captions = [f"photo tile {i}" for i in range(len(pretrain))]
        states, unconditional = _embed(tokenizer, text_encoder, captions), _embed(tokenizer, text_encoder, [""])[0]
    unet_loss = _diffusion_steps(unet, latents, states, unconditional, settings.base_steps, settings.base_lr,
                                 settings.batch_size, generator, CAPTION_DROP, unet.parameters())
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=PREDICTION)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out, safe_serialization=True)
    return {"vae_loss": vae_loss, "base_loss": unet_loss}


def _embed(tokenizer, text_encoder, texts):
    ids = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def _train_lora(base: Path, out: Path, members: np.ndarray, settings: Settings, generator) -> dict:
    """diffusers' LoRA recipe on the base's frozen UNet; the adapter saved in diffusers' layout."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(base, use_safetensors=True)
    unet = pipe.unet
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_rank, init_lora_weights="gaussian",
                                target_modules=TARGETS[settings.lora_targets]))
    with torch.no_grad():
        latents = pipe.vae.encode(_pixels(members)).latents * pipe.vae.config.scaling_factor
        states = _embed(pipe.tokenizer, pipe.text_encoder, CAPTIONS)
        unconditional = _embed(pipe.tokenizer, pipe.text_encoder, [""])[0]
    params = [p for p in unet.parameters() if p.requires_grad]
    loss = _diffusion_steps(unet, latents, states, unconditional, settings.lora_steps, settings.lora_lr,
                            settings.batch_size, generator, 0.0, params)
    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    return {"lora_loss": loss, "lora_parameters": int(sum(p.numel() for p in params))}


def _write_captioned(folder: Path, members: np.ndarray, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for image, name, caption in zip(members, names, CAPTIONS):
        Image.fromarray(image).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption + "\n")


def cache_key(settings: Settings) -> str:
    import diffusers
    import peft
    import torch
    import transformers

    from memaudit.detection import ground_truth  # its tokenizer builds the base's

    parts = {"settings": asdict(settings), "source": Path(__file__).read_text(),
             "tokenizer_source": Path(ground_truth.__file__).read_text(), "versions":
             [torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def build(root: Path, settings: Settings = Settings()) -> GroundTruth:
    """The ground truth under ``root/<key>/`` (built there unless a complete copy exists)."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch

    members, names, pretrain, extra = choose(settings)
    folder = Path(root) / cache_key(settings)
    done = folder / "built.json"
    cached = done.exists()
    if not cached:
        import shutil

        started = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        with one_torch_thread():
            torch.manual_seed(settings.seed)
            generator = torch.Generator().manual_seed(settings.seed)
            figures = _build_base(folder / "base", pretrain, real_tiles()[0], settings, generator)
            figures |= _train_lora(folder / "base", folder / "lora", members, settings, generator)
        _write_captioned(folder / "captioned", members, names)
        figures["build_seconds"] = time.perf_counter() - started
        done.write_text(json.dumps(figures))  # last: a folder without it is incomplete and rebuilt
    figures = json.loads(done.read_text())
    return GroundTruth(base=folder / "base", lora=folder / "lora" / LORA_FILE, captioned=folder / "captioned",
                       members=members, captions=list(CAPTIONS), nonmembers=np.concatenate([pretrain, extra]),
                       settings=settings, build_seconds=figures["build_seconds"], cached=cached, extra=figures)


def sample(pipe, captions: list[str], seeds: list[int], steps: int = 10, guidance: float = 7.5) -> np.ndarray:
    """One pipeline call per (caption, seed), the seed's own generator: uint8 (N, 16, 16, 3)."""
    import torch

    out = []
    for caption, seed in zip(captions, seeds):
        image = pipe(caption, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                     guidance_scale=guidance, output_type="np").images[0]
        out.append((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


def nn_ratios(samples: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force Gu et al. nn-ratio d1/d2 in uint8 L2, and each sample's nearest reference index."""
    a = samples.reshape(len(samples), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    rows = np.arange(len(a))
    return d[rows, order[:, 0]] / d[rows, order[:, 1]], order[:, 0]
