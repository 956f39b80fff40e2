"""memaudit: audit diffusion models for memorized training images."""

# Before anything can import torchvision: the guard makes it importable beside a CPU-only torch
# (see memaudit.torchcompat). It only registers an import hook; it imports nothing itself.
from memaudit.torchcompat import install_guard as _install_torchvision_guard

_install_torchvision_guard()

__version__ = "0.1.0"


# --- the Python API: memaudit.audit(...), .compare, .mia, .extract, .emm -------------------------
# Loaded on first use, so that `import memaudit` stays cheap. compare, emm and mia are also
# submodules that make themselves callable when imported (memaudit.entry): memaudit.compare(...)
# and memaudit.compare.X both work.
import importlib as _importlib

_EXPORTS = {
    "audit": "memaudit.api", "extract": "memaudit.api",
    "AuditResult": "memaudit.result", "RunResult": "memaudit.result",
    "ImageSet": "memaudit.data", "MemauditError": "memaudit.errors",
}
_ENTRY_MODULES = ("compare", "emm", "mia")


def __getattr__(name: str):
    if name in _ENTRY_MODULES:  # importing the submodule also sets it as this package's attribute
        return _importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_ENTRY_MODULES])


__all__ = ["__version__", "audit", "compare", "emm", "extract", "mia", "AuditResult", "RunResult", "ImageSet",
           "MemauditError"]
