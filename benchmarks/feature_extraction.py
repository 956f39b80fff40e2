"""memaudit's clip feature extraction against calling the open_clip model directly.

One open_clip model with random weights (nothing is downloaded) is saved as a state dict and
loaded twice from that file: through ``memaudit.features.get_space("clip:MODEL@FILE")`` and
``extract_features``, and directly, as a user would: ``open_clip.create_model_and_transforms``'
preprocess applied per PIL image, then ``model.encode_image`` in the same batch sizes under
``torch.inference_mode``, then L2-normalisation. Both paths run in this process with the same
torch thread count, are warmed up once, then timed ``--repeats`` times in alternating order;
each path's best time gives its images/s (medians are reported too).
The images are real: random square crops of scikit-learn's two sample photographs, resized to
``--size`` (``--source random`` gives uniform noise instead). Prints one JSON object on stdout
(ratio = memaudit images/s over direct images/s, and the per-image cosine similarity of the two
feature sets); notes go to stderr.

    python benchmarks/feature_extraction.py [--model ViT-B-32] [--images 512] [--size 64]
                                            [--batch N] [--device auto] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from provenance import library_version  # benchmarks/ is the script's folder


def note(message: str) -> None:
    print(f"[feature_extraction {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def real_images(count: int, size: int, seed: int) -> np.ndarray:
    """Random square crops (side 48 px to the full height) of sklearn's sample photographs, resized to size."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427 x 640 RGB uint8 photographs, shipped with scikit-learn
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(48, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name, or a model-config .json")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="input image side (uint8 RGB)")
    parser.add_argument("--source", choices=("real", "random"), default="real")
    parser.add_argument("--batch", type=int, default=None, help="batch size for both paths (default: the space's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both paths (default: cpu count)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from memaudit import progress
    from memaudit.devices import resolve_device
    from memaudit.features import get_space
    from memaudit.features.cache import extract_features
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()  # before open_clip: the CPU torchvision import fails otherwise
    import open_clip
    import torch
    from PIL import Image

    progress.set_enabled(False)
    version = library_version()  # at the start: the checkout may change while this runs
    device = resolve_device(args.device)
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)  # one process: both paths run with the same thread count
    torch.manual_seed(args.seed)

    model_name = args.model
    if model_name.endswith(".json"):
        open_clip.add_model_config(Path(model_name).expanduser())
        model_name = Path(model_name).stem

    note(f"images: {args.images} x {args.size}x{args.size} ({args.source})")
    if args.source == "real":
        images = real_images(args.images, args.size, args.seed)
    else:
        images = np.random.default_rng(args.seed).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory(prefix="memaudit-bench-") as tmp:
        weights = Path(tmp) / f"{model_name}-random.pt"
        note(f"creating {model_name} with random weights -> {weights}")
        model = open_clip.create_model(model_name, pretrained=None)
        torch.save(model.state_dict(), weights)
        del model

        # the direct path: open_clip's own model + preprocess, weights from the same file
        direct_model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
        direct_model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        direct_model = direct_model.eval().to(device)

        spec = f"clip:{args.model}@{weights}"
        space = get_space(spec, device)
        if args.batch:
            space.batch_size = args.batch
        batch_size = space.batch_size

    def run_memaudit() -> np.ndarray:
        features = extract_features(space, images, "benchmark")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return features

    def run_direct() -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images[start:start + batch_size]])
            with torch.inference_mode():
                features = direct_model.encode_image(pixels.to(device))
                features = torch.nn.functional.normalize(features.float(), dim=-1)
            parts.append(features.cpu().numpy())
        return np.concatenate(parts)

    note(f"warm-up (one batch of {batch_size} each), device {device}, {threads} torch threads")
    saved = images
    images = saved[:batch_size]
    run_memaudit()
    run_direct()
    images = saved

    times: dict[str, list[float]] = {"memaudit": [], "direct": []}
    outputs: dict[str, np.ndarray] = {}
    paths = {"memaudit": run_memaudit, "direct": run_direct}
    for repeat in range(args.repeats):
        order = ("memaudit", "direct") if repeat % 2 == 0 else ("direct", "memaudit")
        for name in order:
            tick = time.perf_counter()
            outputs[name] = paths[name]()
            times[name].append(time.perf_counter() - tick)
            note(f"repeat {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.2f}s "
                 f"({len(images) / times[name][-1]:.1f} images/s)")

    a = outputs["memaudit"].astype(np.float64)
    b = outputs["direct"].astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ips = {name: len(images) / median[name] for name in times}
    best_ips = {name: len(images) / best[name] for name in times}
    print(json.dumps({
        "benchmark": "feature_extraction",
        "model": model_name,
        "space": f"clip:{args.model}@<random weights>",
        "images": args.images,
        "image_size": args.size,
        "source": args.source,
        "model_input": space.settings.get("preprocess"),
        "feature_dim": int(a.shape[1]),
        "batch": batch_size,
        "device": device,
        "torch_threads": threads,
        "repeats": args.repeats,
        "memaudit_s": [round(t, 3) for t in times["memaudit"]],
        "direct_s": [round(t, 3) for t in times["direct"]],
        "memaudit_ips": round(best_ips["memaudit"], 2),
        "direct_ips": round(best_ips["direct"], 2),
        "ratio": round(best_ips["memaudit"] / best_ips["direct"], 3),
        "memaudit_ips_median": round(ips["memaudit"], 2),
        "direct_ips_median": round(ips["direct"], 2),
        "ratio_median": round(ips["memaudit"] / ips["direct"], 3),
        "timing": "images/s and ratio from the best of --repeats (robust to other load); *_median from the median; "
                  "warm-up excluded",
        "cosine_mean": round(float(cosine.mean()), 6),
        "cosine_min": round(float(cosine.min()), 6),
        "max_abs_diff": float(np.abs(a - b).max()),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "memaudit_version": version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
