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


def _torch_version() -> str | None:
    """torch's version without importing it (a second) when this audit did not need it."""
    import sys
    from importlib import metadata

    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def provenance(config: AuditConfig, device: str | None, timings: dict) -> dict:
    return {
        "memaudit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "device": device,
        **distributed.current().describe(),
        "batch_size": config.batch_size,
        "python": platform.python_version(),
        "torch": _torch_version(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
