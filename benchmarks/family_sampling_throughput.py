"""memaudit's sampling of an SDXL-sized text-to-image pipeline against calling the pipeline directly.

``--arch sdxl``: a StableDiffusionXLPipeline of SDXL base's layout (UNet about 2.6B parameters,
CLIP-L and CLIP-G text encoders, the 4-block VAE) with random weights, built on the device in the
chosen dtype (fp16 by default: the form a reviewer's GPU runs), handed to memaudit as a pipeline
object (the Python API's door; no weights on disk) and sampled for ``--n`` images at ``--size``
pixels a side: once through memaudit (``load_model_object`` + ``generate_samples``: one generator
per seed, the family's call resolved, resumable shards, uint8 out) and once as a diffusers user
calls it (``pipeline(prompt=[...], generator=[...], num_inference_steps=S, output_type="np")``) in
the same batch size. ``--arch tiny`` runs the test suite's tiny SDXL on the CPU (a smoke check of
the script, not a figure). Prints one JSON object: wall times, images/s, the ratio direct/memaudit.

    python benchmarks/family_sampling_throughput.py [--arch sdxl] [--n 32] [--steps 30] [--batch 8]
                                                    [--size 1024] [--device auto] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from provenance import library_version

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the offline tokenizers


def build_sdxl(device: str, dtype):
    """SDXL base's published layout, random weights, made on ``device`` directly."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from family_pipelines import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab = clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer", max_length=77)
    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "pad_token_id": vocab["<|endoftext|>"], "vocab_size": len(vocab), "max_position_embeddings": 77}
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, hidden_act="quick_gelu", **ids))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                            num_attention_heads=20, num_hidden_layers=32,
                                                            projection_dim=1280, hidden_act="gelu", **ids))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipeline = StableDiffusionXLPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, text_encoder_2=text_2,
                                         tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    return pipeline.to(device, dtype)


def build_tiny(device: str, dtype):
    from diffusers import DiffusionPipeline
    from family_pipelines import build_sdxl as build_tiny_sdxl

    folder = build_tiny_sdxl(Path(tempfile.mkdtemp()) / "sdxl")
    return DiffusionPipeline.from_pretrained(folder).to(device, dtype)


ARCHS = {"sdxl": build_sdxl, "tiny": build_tiny}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sdxl", choices=list(ARCHS))
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="pixels a side (default: the model's own)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp16")
    args = parser.parse_args()

    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import numpy as np
    import torch

    from memaudit import progress
    from memaudit.adapters import SamplerOptions, load_model_object
    from memaudit.data import ImageSet
    from memaudit.devices import resolve_device
    from memaudit.sampling import generate_samples

    progress.set_enabled(False)
    device = resolve_device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    pipeline = ARCHS[args.arch](device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    if args.size:  # the pipeline's default size is its UNet's sample size x the VAE's factor
        pipeline.unet.register_to_config(sample_size=args.size // pipeline.vae_scale_factor)
        pipeline.default_sample_size = args.size // pipeline.vae_scale_factor
    parameters = sum(p.numel() for p in pipeline.unet.parameters())
    captions = ["a photograph of a red square", "two lines on a white wall", "a portrait of a person"]
    train = ImageSet(np.zeros((len(captions), 8, 8, 3), np.uint8), ["a", "b", "c"], "captions", captions=captions)
    adapter = load_model_object(pipeline, train, SamplerOptions(steps=args.steps, device=device, dtype=args.dtype,
                                                                prompts="train"))
    adapter.sample([0], 1)  # warm-up (kernels, allocator), not timed
    prompts = adapter.conditioning(list(range(args.n)))["prompts"]
    synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        images, _ = generate_samples(adapter, 0, args.n, args.batch, Path(tmp) / "cache")
        synchronize()
        memaudit_s = time.perf_counter() - tick
    tick = time.perf_counter()
    for start in range(0, args.n, args.batch):
        seeds = range(start, min(start + args.batch, args.n))
        pipeline(prompt=[prompts[s] for s in seeds], generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                 num_inference_steps=args.steps, output_type="np")
    synchronize()
    direct_s = time.perf_counter() - tick
    print(json.dumps({
        "benchmark": "family_sampling_throughput", "arch": args.arch, "pipeline": type(pipeline).__name__,
        "unet_parameters": parameters, "n": args.n, "batch": args.batch, "steps": args.steps,
        "shape": list(images.shape), "device": device, "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "memaudit_s": round(memaudit_s, 3), "direct_s": round(direct_s, 3),
        "memaudit_images_per_s": round(args.n / memaudit_s, 3), "direct_images_per_s": round(args.n / direct_s, 3),
        "throughput_vs_direct": round(direct_s / memaudit_s, 3),
        "settings": adapter.settings().get("text_to_image"),
        "machine": platform.machine(), "torch": torch.__version__, "memaudit": library_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
