"""Throughput of each membership-inference attack: images scored per second.

The shipped digits-100 checkpoint (8x8 DDIM, memaudit's small U-Net) scores ``--n`` of its
members with each attack at its paper settings, with no score cache, in batches of ``--batch``;
one warm-up batch first, all attacks in one process so that their ratios hold even on a shared,
loaded machine. Prints one JSON object: per attack, queries per image, seconds, images/s, noise-
predictor queries/s and images/s relative to ``loss``, with the device, thread count, commit and
the 1-minute load average before and after (absolute figures only mean something on an idle
machine).

With ``--scan 10:300:10`` each attack with a timestep is also timed scoring every step of the scan
at once (``Attack.scan``: PIA's eps(x0, 0) and SecMI's inversion chain shared across steps) against
one ``score`` call per step, with the two results' largest relative difference.

    python benchmarks/mia_attacks.py [--n 512] [--batch 256] [--device auto] [--threads N] [--scan 10:300:10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from provenance import library_version

ASSET = Path(__file__).resolve().parents[1] / "memaudit" / "assets" / "digits100-ddim"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scan", default=None, help="also time a --timesteps scan, e.g. 10:300:10")
    args = parser.parse_args()

    import torch

    from memaudit import progress
    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.data import load_image_set
    from memaudit.devices import resolve_device
    from memaudit.membership import ATTACKS, attack_settings
    from memaudit.membership.predictor import Conditions, noise_predictor

    progress.set_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    members = load_image_set("digits:100")
    images = members.images[(torch.arange(args.n) % len(members)).numpy()]
    predictor = noise_predictor(load_model(str(ASSET), members, SamplerOptions(device=device)), str(ASSET))

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    load_before = os.getloadavg()[0]
    rows = {}
    for name, attack in ATTACKS.items():
        settings = attack_settings(name, {})
        attack.score(predictor, predictor.encode(images[:args.batch]), Conditions(), settings)  # warm-up
        synchronize()
        started = time.perf_counter()
        for start in range(0, len(images), args.batch):
            attack.score(predictor, predictor.encode(images[start:start + args.batch]), Conditions(), settings)
        synchronize()
        seconds = time.perf_counter() - started
        queries = attack.queries(settings)
        rows[name] = {"settings": settings, "queries_per_image": queries, "seconds": round(seconds, 3),
                      "images_per_s": round(len(images) / seconds, 1),
                      "queries_per_s": round(len(images) * queries / seconds, 1)}
    if args.scan:
        import numpy as np

        from memaudit.membership.timesteps import parse_timesteps

        steps = parse_timesteps(args.scan)
        x0 = predictor.encode(images[:args.batch])
        for name, attack in ATTACKS.items():
            if attack.learned or attack.timestep_key is None:
                continue
            settings = attack_settings(name, {})
            if "k" in settings:
                steps_here = [t for t in steps if t % settings["k"] == 0 and t >= settings["k"]]
            else:
                steps_here = steps
            started = time.perf_counter()
            together = attack.scan(predictor, x0, Conditions(), settings, steps_here)
            synchronize()
            scan_s = time.perf_counter() - started
            started = time.perf_counter()
            one_by_one = np.stack([attack.score(predictor, x0, Conditions(), {**settings, attack.timestep_key: t})
                                   for t in steps_here])
            synchronize()
            loop_s = time.perf_counter() - started
            rows[name]["scan"] = {"steps": len(steps_here), "images": len(x0), "scan_s": round(scan_s, 3),
                                  "one_score_per_step_s": round(loop_s, 3), "speedup": round(loop_s / scan_s, 2),
                                  "max_rel_diff": float(np.max(np.abs(together - one_by_one) / np.abs(one_by_one)))}
    for row in rows.values():
        row["relative_to_loss"] = round(row["images_per_s"] / rows["loss"]["images_per_s"], 3) if "loss" in rows else None
    print(json.dumps({"benchmark": "mia_attacks", "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
                      "cpus": os.cpu_count(), "model": "digits100-ddim (8x8, UNet2DModel 32-64-64)",
                      "n": len(images), "batch": args.batch, "device": device,
                      "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                      "threads": torch.get_num_threads(), "machine": platform.machine(), "python": platform.python_version(),
                      "torch": torch.__version__, "commit": library_version(), "attacks": rows}, indent=2))


if __name__ == "__main__":
    main()
