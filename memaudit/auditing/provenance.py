"""How a run was asked for and made: its manifest's inputs and audit.json's provenance."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform

from memaudit import __version__, distributed
from memaudit.auditing.config import AuditConfig
from memaudit.inputs import describe_input


def manifest_inputs(config: AuditConfig) -> dict:
    """The settings of a run, JSON-ready, for its manifest (objects given to the Python API by
    description: an array by its shape, a model object by its type)."""
    inputs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "command"}
    return {key: list(value) if isinstance(value, tuple) else
            value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else describe_input(value)
            for key, value in inputs.items()}


def provenance(config: AuditConfig, device: str | None, timings: dict) -> dict:
    import torch

    return {
        "memaudit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "device": device,
        **distributed.current().describe(),
        "batch_size": config.batch_size,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
