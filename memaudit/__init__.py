"""memaudit: audit diffusion models for memorized training images."""

# Before anything can import torchvision: the guard makes it importable beside a CPU-only torch
# (see memaudit.torchcompat). It only registers an import hook; it imports nothing itself.
from memaudit.torchcompat import install_guard as _install_torchvision_guard

_install_torchvision_guard()

__version__ = "0.1.0"


# --- the Python API: memaudit.audit(...), .compare, .mia, .extract, .detect, .emm, .index, .dedup --
# The functions of memaudit.api, loaded on first use so that `import memaudit` stays cheap. No
# submodule bears one of these names: the command packages are memaudit.auditing, .comparison,
# .membership, .extraction, .detection, .retraining and .trainset (docs/architecture.md).
import importlib as _importlib

_API = ("audit", "compare", "mia", "extract", "detect", "emm", "index", "dedup")
_EXPORTS = {
    **{name: "memaudit.api" for name in _API},
    "AuditResult": "memaudit.result", "RunResult": "memaudit.result",
    "ImageSet": "memaudit.imageset", "MemauditError": "memaudit.errors",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_API, "AuditResult", "RunResult", "ImageSet", "MemauditError"]
