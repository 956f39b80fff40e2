"""Tiny random-weight text-to-image pipelines of today's families, built from diffusers' and
transformers' own classes and saved with ``save_pretrained`` (no hub, no sentencepiece).

Each builder writes a pipeline folder memaudit then loads through the user's path. Sizes are the
smallest the classes accept, so a conformance row samples in a second or two on one CPU thread.
The tokenizers are built offline: CLIP's as a byte-level BPE with no merges (every character a
token, as ``conftest.build_tiny_stable_diffusion``), T5's as a character-level Unigram model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path


def _prepare():
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()


def clip_tokenizer(folder: Path, max_length: int = 16):
    """A CLIP tokenizer whose vocabulary is every byte-level character, with no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length), vocab


def clip_text_encoder(vocab: dict, projection: bool, hidden: int = 32, seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, max_position_embeddings=16, projection_dim=hidden,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_tokenizer(max_length: int = 16):
    """T5's tokenizer (tokenizers backend) over a character-level Unigram vocabulary."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def t5_encoder(vocab_size: int, d_model: int = 32, seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0))


def kl_vae(latent_channels: int = 4, blocks: int = 2, **config):
    from diffusers import AutoencoderKL

    channels = (32, 64)[:blocks] if blocks <= 2 else (4,) * blocks
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=channels, latent_channels=latent_channels,
                         norm_num_groups=min(8, channels[0]), down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, **config)


def build_sdxl(path: Path) -> Path:
    """Stable Diffusion XL: two CLIP text encoders (the second with a projection), a UNet with
    size/crop conditioning (``text_time``), 16x16 pixels."""
    _prepare()
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, vocab = clip_tokenizer(path.parent / "clip-tokenizer")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
                                cross_attention_dim=64, norm_num_groups=8)
    with torch.no_grad():  # make the size/crop conditioning matter visibly in a random network
        unet.add_embedding.linear_1.weight.mul_(20.0)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    torch.manual_seed(1)
    pipeline = StableDiffusionXLPipeline(
        vae=kl_vae(), text_encoder=clip_text_encoder(vocab, False, seed=2), tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(vocab, True, seed=3), tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def build_sd3(path: Path) -> Path:
    """Stable Diffusion 3: CLIP-L, CLIP-G (both with projections) and T5, an MMDiT transformer,
    flow matching (FlowMatchEulerDiscreteScheduler, shift 3), 16x16 pixels."""
    _prepare()
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, vocab = clip_tokenizer(path.parent / "clip-tokenizer")
    t5_tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(1)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=kl_vae(shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text_encoder(vocab, True, seed=2), tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(vocab, True, seed=3), tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(len(t5_tok), seed=4), tokenizer_3=t5_tok)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def build_flux(path: Path, guidance_embeds: bool = True) -> Path:
    """Flux: CLIP (pooled) and T5 text encoders, a Flux transformer with (dev) or without (schnell)
    the distilled guidance embedding, flow matching with dynamic shifting (``mu``). The pipeline's
    size is fixed at 128 latent pixels a side: with a one-block VAE, 128x128 pixels."""
    _prepare()
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, vocab = clip_tokenizer(path.parent / "clip-tokenizer")
    t5_tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[2, 2, 4], guidance_embeds=guidance_embeds)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    torch.manual_seed(1)
    vae = kl_vae(latent_channels=1, blocks=1, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                 use_post_quant_conv=False, mid_block_add_attention=False)  # no 16k-token attention
    pipeline = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                            text_encoder=clip_text_encoder(vocab, False, seed=2), tokenizer=tokenizer,
                            text_encoder_2=t5_encoder(len(t5_tok), seed=3), tokenizer_2=t5_tok)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def build_pixart_sigma(path: Path) -> Path:
    """PixArt-Sigma: a T5 text encoder, a DiT-style PixArt transformer (adaLN-single), DPM-Solver++,
    16x16 pixels (a sample size outside the pipeline's resolution bins)."""
    _prepare()
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5_tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(1)
    pipeline = PixArtSigmaPipeline(tokenizer=t5_tok, text_encoder=t5_encoder(len(t5_tok), seed=2), vae=kl_vae(),
                                   transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def build_lcm(path: Path) -> Path:
    """A latent consistency model: a Stable Diffusion UNet with the guidance embedding
    (``time_cond_proj_dim``), LCMScheduler, 16x16 pixels."""
    _prepare()
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel

    tokenizer, vocab = clip_tokenizer(path.parent / "clip-tokenizer")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=8, attention_head_dim=4, time_cond_proj_dim=32)
    with torch.no_grad():  # make the guidance embedding w matter visibly in a random network
        unet.time_embedding.cond_proj.weight.mul_(20.0)
    torch.manual_seed(1)
    pipeline = LatentConsistencyModelPipeline(
        vae=kl_vae(), text_encoder=clip_text_encoder(vocab, False, seed=2), tokenizer=tokenizer, unet=unet,
        scheduler=LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def build_flux_schnell(path: Path) -> Path:
    """Flux without the guidance embedding (FLUX.1-schnell's form): the pipeline ignores guidance."""
    return build_flux(path, guidance_embeds=False)


def build_sdxl_refiner(path: Path) -> Path:
    """The SDXL refiner's form: an image-to-image pipeline (second text encoder only, aesthetic scores)."""
    _prepare()
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(build_sdxl(path.parent / "sdxl-base"))
    StableDiffusionXLImg2ImgPipeline(vae=base.vae, text_encoder=None, tokenizer=None, text_encoder_2=base.text_encoder_2,
                                     tokenizer_2=base.tokenizer_2, unet=base.unet, scheduler=base.scheduler,
                                     requires_aesthetics_score=True).save_pretrained(path, safe_serialization=True)
    return path


BUILDERS = {"sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux, "flux-schnell": build_flux_schnell,
            "pixart-sigma": build_pixart_sigma, "lcm": build_lcm, "sdxl-refiner": build_sdxl_refiner}


def gemma_tokenizer():
    """Gemma's tokenizer (tokenizers backend) over a character-level BPE vocabulary with no merges."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n\u2581")
    vocab = {token: i for i, token in enumerate(specials + chars)}
    return GemmaTokenizer(vocab=vocab, merges=[])


def build_sana(path: Path) -> Path:
    """Sana: a Gemma-2 text encoder (prompts prefixed with the pipeline's complex human instruction),
    a linear-attention Sana transformer, a deep-compression autoencoder (AutoencoderDC), flow
    matching; 32x32 pixels (the pipeline's least; a VAE factor of 4 keeps the sample size, 8, outside
    the pipeline's resolution bins)."""
    _prepare()
    import torch
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = gemma_tokenizer()
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                                         attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                                         cross_attention_dim=8, caption_channels=8, sample_size=8)
    torch.manual_seed(1)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1), downsample_block_type="conv",
                        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407)
    torch.manual_seed(2)
    text_encoder = Gemma2Model(Gemma2Config(head_dim=16, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                            num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tokenizer),
                                            max_position_embeddings=4096, pad_token_id=0, bos_token_id=2,
                                            eos_token_id=1))
    SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(path, safe_serialization=True)
    return path


BUILDERS["sana"] = build_sana
