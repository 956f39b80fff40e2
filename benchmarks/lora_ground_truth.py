"""Does the LoRA ground truth copy its training images, and does its base not? Builds
tests/lora_ground_truth.py's base + LoRA (cached under ``--cache`` by settings and source), samples
both with diffusers' own per-seed pipeline calls (each member caption x ``--seeds`` seeds, DDIM),
and measures Gu et al.'s nn-ratio d1/d2 (uint8 L2, brute force) against the 10 members plus the
real non-member tiles. Prints one JSON object.

    python benchmarks/lora_ground_truth.py [--seeds 4] [--steps 10] [--guidance 7.5] [--cache /tmp/...] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from provenance import library_version

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    import lora_ground_truth as gt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per member caption")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--cache", default="/tmp/memaudit-lora-ground-truth")
    parser.add_argument("--fresh", action="store_true", help="rebuild even if cached")
    for f in fields(gt.Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = parser.parse_args()
    settings = gt.Settings(**{f.name: getattr(args, f.name) for f in fields(gt.Settings)})
    if args.fresh:
        shutil.rmtree(Path(args.cache) / gt.cache_key(settings), ignore_errors=True)

    import torch
    torch.set_num_threads(1)  # the tiny pipeline samples fastest on one thread of a busy machine
    truth = gt.build(Path(args.cache), settings)

    from diffusers import StableDiffusionPipeline
    import torch

    pipe = StableDiffusionPipeline.from_pretrained(truth.base, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    captions = [c for c in truth.captions for _ in range(args.seeds)]
    seeds = list(range(args.seeds)) * len(truth.captions)
    own = np.repeat(np.arange(len(truth.captions)), args.seeds)
    reference = np.concatenate([truth.members, truth.nonmembers])
    started = time.perf_counter()
    figures = {}
    for name in ("base", "finetune"):
        if name == "finetune":
            pipe.load_lora_weights(truth.lora)
        images = gt.sample(pipe, captions, seeds, steps=args.steps, guidance=args.guidance)
        ratio, nearest = gt.nn_ratios(images, reference)
        members_only, _ = gt.nn_ratios(images, truth.members)
        figures[name] = {"ratio_members_and_nonmembers": float((ratio < 1 / 3).mean()),
                         "ratio_members_only": float((members_only < 1 / 3).mean()),
                         "nearest_is_own_member": float((nearest == own).mean()),
                         "d1_over_d2_median": float(np.median(ratio)),
                         "d1_over_d2_max": float(ratio.max())}
    print(json.dumps({"benchmark": "lora_ground_truth", "settings": asdict(settings), "samples": len(captions),
                      "steps": args.steps, "guidance": args.guidance, "reference": {"members": len(truth.members),
                      "nonmembers": len(truth.nonmembers)}, "build_seconds": round(truth.build_seconds, 1),
                      "cached": truth.cached, "build": truth.extra, "sample_seconds": round(time.perf_counter() - started, 1),
                      **figures, "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
                      "commit": library_version()}, indent=2))


if __name__ == "__main__":
    main()
