"""memaudit's sampling of a diffusers pipeline against calling the pipeline directly.

A DDIMPipeline around a UNet2DModel of the paper's DDPM++ 32x32 layout (``--arch ddpmpp-32``, about
35.7M parameters, random weights saved with safetensors and loaded back as users load theirs) is
sampled for ``--n`` images at each of ``--steps`` (35 and 1000 model evaluations by default, the
paper's Heun budget and full DDPM): once through memaudit (``load_model`` + ``generate_samples``:
one generator per seed, resumable shards, uint8 out) and once as a user would call diffusers
(``pipeline(batch_size=B, num_inference_steps=S, output_type="np")``), in the same batch size.
Prints one JSON object: wall times, images/s and the ratio memaudit / direct per step count.

    python benchmarks/sampling_throughput.py [--n 10000] [--steps 35,1000] [--batch 500] [--device auto]
                                             [--dtype fp32] [--arch ddpmpp-32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from provenance import library_version


def build_pipeline(folder: Path, arch: str) -> Path:
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler

    from memaudit.denoisers.architectures import build_unet, count_parameters, resolve_architecture

    torch.manual_seed(0)
    unet = build_unet(resolve_architecture(arch), (32, 32, 3))
    path = folder / "pipeline"
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(path, safe_serialization=True)
    return path, count_parameters(unet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--steps", default="35,1000")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--arch", default="ddpmpp-32")
    args = parser.parse_args()

    import numpy as np
    import torch

    from memaudit import progress
    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.data import ImageSet
    from memaudit.devices import resolve_device
    from memaudit.sampling import generate_samples

    progress.set_enabled(False)
    device = resolve_device(args.device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, parameters = build_pipeline(tmp, args.arch)
        train = ImageSet(np.zeros((2, 32, 32, 3), np.uint8), ["a", "b"], "zeros")
        from diffusers import DDIMPipeline

        direct = DDIMPipeline.from_pretrained(path, torch_dtype=dtypes[args.dtype]).to(device)
        direct.set_progress_bar_config(disable=True)
        for steps in [int(s) for s in args.steps.split(",")]:
            adapter = load_model(str(path), train, SamplerOptions(steps=steps, device=device, dtype=args.dtype))
            adapter.sample([0], 1)  # warm-up (kernels, allocator), not timed
            direct(batch_size=1, num_inference_steps=steps, output_type="np")
            synchronize()
            tick = time.perf_counter()
            images, _ = generate_samples(adapter, 0, args.n, args.batch, tmp / f"cache-{steps}")
            synchronize()
            memaudit_s = time.perf_counter() - tick
            tick = time.perf_counter()
            for start in range(0, args.n, args.batch):
                direct(batch_size=min(args.batch, args.n - start), num_inference_steps=steps, output_type="np",
                       generator=torch.Generator(device).manual_seed(start))
            synchronize()
            direct_s = time.perf_counter() - tick
            rows.append({"model_evaluations": steps, "memaudit_s": round(memaudit_s, 3), "direct_s": round(direct_s, 3),
                         "memaudit_images_per_s": round(args.n / memaudit_s, 2),
                         "direct_images_per_s": round(args.n / direct_s, 2),
                         "throughput_vs_direct": round(direct_s / memaudit_s, 3), "shape": list(images.shape)})

    print(json.dumps({
        "benchmark": "sampling_throughput", "n": args.n, "batch": args.batch, "arch": args.arch,
        "parameters": parameters, "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None, "dtype": args.dtype,
        "runs": rows, "machine": platform.machine(), "torch": torch.__version__, "memaudit": library_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
