"""memaudit: audit diffusion models for memorized training images."""

# Before anything can import torchvision: the guard makes it importable beside a CPU-only torch
# (see memaudit.torchcompat). It only registers an import hook; it imports nothing itself.
from memaudit.torchcompat import install_guard as _install_torchvision_guard

_install_torchvision_guard()

__version__ = "0.1.0"


# --- the Python API: memaudit.audit(...), .compare, .mia, .extract, .emm -------------------------
# Loaded on first use, so that `import memaudit` stays cheap. compare, emm and mia are also
# submodules (memaudit/compare.py, memaudit/emm/, memaudit/mia/), and importing a submodule sets
# the package attribute of that name to the module; so those three modules are made callable,
# each calling the API function of its name: memaudit.compare(...) and memaudit.compare.X both work.
import importlib as _importlib
import types as _types

_EXPORTS = {
    "audit": "memaudit.api", "extract": "memaudit.api",
    "AuditResult": "memaudit.result", "RunResult": "memaudit.result",
    "ImageSet": "memaudit.data", "MemauditError": "memaudit.errors",
}
_ENTRY_MODULES = ("compare", "emm", "mia")


class _EntryModule(_types.ModuleType):
    """A submodule that is also an entry point: calling it calls ``memaudit.api.<its name>``."""

    def __call__(self, *args, **kwargs):
        return self._entry()(*args, **kwargs)

    @property
    def __signature__(self):  # what inspect.signature and notebooks show for memaudit.compare(...)
        import inspect

        return inspect.signature(self._entry())

    def _entry(self):
        return getattr(_importlib.import_module("memaudit.api"), self.__name__.rpartition(".")[2])


for _name in _ENTRY_MODULES:
    _importlib.import_module(f"{__name__}.{_name}").__class__ = _EntryModule


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", "audit", "compare", "emm", "extract", "mia", "AuditResult", "RunResult", "ImageSet",
           "MemauditError"]
