"""Pick the torch device a run uses."""

from __future__ import annotations

from memaudit.errors import InputError

VALID_DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> str:
    """``auto`` is CUDA when a GPU is visible (this rank's own GPU under torchrun), else CPU; an
    explicit device must exist."""
    import torch

    from memaudit import distributed

    if name == "auto":
        return distributed.current().cuda_device() if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2] or "0"
        if not index.isdigit():
            raise InputError(f"--device {name}: expected {VALID_DEVICES}")
        if not torch.cuda.is_available() or int(index) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); use auto or cpu")
        return name
    raise InputError(f"--device {name}: expected {VALID_DEVICES}")
