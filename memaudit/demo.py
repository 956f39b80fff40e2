"""The built-in demo: real diffusers checkpoints trained on the digits, and the optimal denoiser
as the positive control, audited with no arguments needed.

Two DDIM checkpoints ship in ``memaudit/assets``, trained by ``memaudit.emm.training`` with one recipe on
two training-set sizes: all 1797 digits, and a class-balanced 100 (Gu et al. 2023: memorization
rises as the training set shrinks); the one trained on 100 digits is calibrated on the 1697 it never
saw (``--holdout digits:100:rest``). Each run prints and records (audit.json ``model.seeding``) how
its seeds became noise: ``diffusers`` for the checkpoints, ``edm`` (EDM generate.py's) for optimal.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from memaudit.api import AuditResult, run_audit
from memaudit.config import AuditConfig

ASSETS = Path(__file__).parent / "assets"
DEMO_STEPS = 50  # DDIM steps used to sample the shipped checkpoints


@dataclass(frozen=True)
class DemoRun:
    name: str  # run folder under --out
    model: str  # MODEL spec
    train: str  # the training set the model was fitted to
    checkpoint: str | None = None  # asset folder of a shipped checkpoint
    holdout: str | None = None  # digits the model never saw: calibrates every criterion's threshold


DEMO_RUNS = (
    DemoRun("ddim-digits-1797", str(ASSETS / "digits-ddim"), "digits", "digits-ddim"),
    DemoRun("ddim-digits-100", str(ASSETS / "digits100-ddim"), "digits:100", "digits100-ddim", "digits:100:rest"),
    DemoRun("optimal-digits-1797", "optimal", "digits"),
)


def run_demo(out: Path, n: int = 1000, batch_size: int = 250, device: str = "auto",
             command: str | None = None) -> dict[str, AuditResult]:
    """Audit each demo model against its own training set; one run folder each under ``out``."""
    results = {}
    for run in DEMO_RUNS:
        config = AuditConfig(train=run.train, out=Path(out) / run.name, model=run.model, n=n,
                             steps=DEMO_STEPS if run.checkpoint else None, batch_size=batch_size,
                             holdout=run.holdout, device=device, command=command)
        results[run.name] = run_audit(config)
    return results


def train_demo_checkpoints(out: Path = ASSETS, device: str = "cpu") -> list[Path]:
    """Re-create the shipped checkpoints: memaudit.emm.training's default recipe on each demo training set."""
    from memaudit.data import load_image_set
    from memaudit.emm.training import TrainConfig, train_ddpm

    return [train_ddpm(load_image_set(run.train).images, Path(out) / run.checkpoint, TrainConfig(), device=device)
            for run in DEMO_RUNS if run.checkpoint]


if __name__ == "__main__":  # python -m memaudit.demo [--device cuda] [--out DIR]
    parser = argparse.ArgumentParser(description="Train the demo checkpoints again.")
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for path in train_demo_checkpoints(args.out, args.device):
        print(path)
