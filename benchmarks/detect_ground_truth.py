"""Does ``detect`` find the prompts a model memorized? A tiny text-to-image model with known
memorized captions (memaudit.detection.ground_truth: all 8x8 digits under ordinary captions, a few
of them again under unique titles, duplicated to a share of the draws), memorization checked
independently, then every detector's AUC of memorized titles against novel ordinary captions.

Memorization check: each prompt's guided generations (50 DDIM steps, guidance 7.5, the detectors'
starting seeds) decoded to uint8 pixels and compared with the training images (duplicates
removed): Carlini et al.'s tiled L2 to the title's own image and to the nearest training image,
and Gu et al.'s nn-ratio d1/d2 in uint8 L2. The trained pipeline is cached under ``--cache`` by
its settings. Prints one JSON object.

    python benchmarks/detect_ground_truth.py [--steps 2000] [--n 1797] [--share 0.333] [--cache /tmp/...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from provenance import library_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="U-Net training steps (batch 16)")
    parser.add_argument("--n", type=int, default=1797, help="digits under ordinary captions")
    parser.add_argument("--memorized", type=int, default=5, help="titled, duplicated digits")
    parser.add_argument("--share", type=float, default=1 / 3, help="share of the training draws that are titled")
    parser.add_argument("--novel", type=int, default=10)
    parser.add_argument("--generations", type=int, default=4, help="generations per prompt for the memorization check")
    parser.add_argument("--cache", default="/tmp/memaudit-detect-ground-truth")
    args = parser.parse_args()

    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch
    from diffusers import DiffusionPipeline

    from memaudit import progress
    from memaudit.criteria import nn_ratio_scores
    from memaudit.data import load_image_set
    from memaudit.detection.detectors import DETECTORS
    from memaudit.detection.ground_truth import memorizing_set, train_text_to_image
    from memaudit import roc as metrics
    from memaudit.tiled import tiled_l2

    progress.set_enabled(False)
    digits = load_image_set("digits")
    chosen = memorizing_set(digits.images[:args.n], digits.labels[:args.n], n_memorized=args.memorized,
                            share=args.share, n_novel=args.novel)
    key = hashlib.sha256(json.dumps({"steps": args.steps, "n": args.n, "memorized": args.memorized, "share": args.share,
                                     "captions": chosen.captions}).encode()).hexdigest()[:16]
    path = Path(args.cache) / key / "pipeline"
    started = time.perf_counter()
    if not (path / "model_index.json").exists():
        train_text_to_image(chosen.images, chosen.captions, path, steps=args.steps)
    train_seconds = time.perf_counter() - started
    pipeline = DiffusionPipeline.from_pretrained(path, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    prompts = chosen.memorized + chosen.novel
    k = len(chosen.memorized)

    # Independent check of memorization, in pixels.
    generated = []
    for prompt in prompts:
        out = pipeline([prompt] * args.generations, num_inference_steps=50, guidance_scale=7.5, output_type="np",
                       generator=[torch.Generator().manual_seed(g) for g in range(args.generations)]).images
        generated.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8)[..., :digits.images.shape[-1]])
    generated = np.stack(generated)  # (prompts, generations, H, W, C)
    flat = generated.reshape(-1, *digits.images.shape[1:])
    train = np.unique(digits.images[:args.n].reshape(args.n, -1), axis=0)
    tiled_nearest = tiled_l2(flat, train.reshape(-1, *digits.images.shape[1:])).min(axis=1).reshape(len(prompts), -1)
    squared = ((flat.reshape(len(flat), -1).astype(np.float64)[:, None] - train[None].astype(np.float64)) ** 2).sum(-1)
    ratio = nn_ratio_scores(np.sqrt(np.sort(squared, axis=1)[:, :2])).reshape(len(prompts), -1)
    own = np.stack([tiled_l2(generated[i], chosen.memorized_images[i:i + 1])[:, 0] for i in range(k)])
    check = {"memorized": {"tiled_l2_to_own_image_median": float(np.median(own)),
                           "share_within_0.15_of_own_image": float((own <= 0.15).mean()),
                           "nn_ratio_median": float(np.median(ratio[:k])),
                           "share_nn_ratio_below_1/3": float((ratio[:k] < 1 / 3).mean())},
             "novel": {"tiled_l2_to_nearest_median": float(np.median(tiled_nearest[k:])),
                       "share_within_0.15_of_a_training_image": float((tiled_nearest[k:] <= 0.15).mean()),
                       "nn_ratio_median": float(np.median(ratio[k:])),
                       "share_nn_ratio_below_1/3": float((ratio[k:] < 1 / 3).mean())}}

    detectors = {}
    for name, detector in DETECTORS.items():
        started = time.perf_counter()
        columns = detector.run(pipeline, prompts, seed=0, device="cpu", batch_size=64, **detector.defaults)
        detectors[name] = {"settings": detector.defaults, "seconds": round(time.perf_counter() - started, 2),
                           **{("auc" if c == "score" else "auc_" + c): metrics.auc(v[:k], v[k:]) for c, v in columns.items()},
                           "scores": {p: round(float(s), 5) for p, s in zip(prompts, columns["score"])}}
    print(json.dumps({"benchmark": "detect_ground_truth", "settings": vars(args), "pipeline": str(path),
                      "train_seconds": round(train_seconds, 1), "memorized": chosen.memorized, "novel": chosen.novel,
                      "memorization_check": check, "detectors": detectors,
                      "load_average_1min": os.getloadavg()[0], "torch": torch.__version__, "commit": library_version()},
                     indent=2))


if __name__ == "__main__":
    main()
