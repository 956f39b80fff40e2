"""The built-in demo: audit a real diffusers checkpoint trained on the digits, and the optimal
denoiser as the positive control, with no arguments needed."""

from __future__ import annotations

from pathlib import Path

from memaudit.api import AuditResult, run_audit
from memaudit.config import AuditConfig

DEMO_TRAIN = "digits"
DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "digits-ddim"
DEMO_STEPS = 50


def run_demo(out: Path, n: int = 1000, batch_size: int = 250, device: str = "auto",
             command: str | None = None) -> dict[str, AuditResult]:
    """Audit the shipped DDIM checkpoint and the optimal denoiser against the digits."""
    runs = {
        "ddim-digits": AuditConfig(train=DEMO_TRAIN, out=Path(out) / "ddim-digits", model=str(DEMO_CHECKPOINT),
                                   steps=DEMO_STEPS, n=n, batch_size=batch_size, device=device, command=command),
        "optimal": AuditConfig(train=DEMO_TRAIN, out=Path(out) / "optimal", model="optimal",
                               n=n, batch_size=batch_size, device=device, command=command),
    }
    return {name: run_audit(config) for name, config in runs.items()}


def train_demo_checkpoint(out: Path = DEMO_CHECKPOINT, device: str = "cpu") -> Path:
    """Re-create the shipped checkpoint: memaudit.train's default recipe on all 1797 digits."""
    from memaudit.data import load_image_set
    from memaudit.train import TrainConfig, train_ddpm

    return train_ddpm(load_image_set(DEMO_TRAIN).images, out, TrainConfig(), device=device)


if __name__ == "__main__":  # python -m memaudit.demo: re-train the shipped checkpoint
    print(train_demo_checkpoint())
