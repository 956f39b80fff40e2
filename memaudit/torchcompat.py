"""Make ``torchvision`` importable beside a CPU-only torch.

The torchvision wheel on PyPI is a CUDA build. Beside the CPU torch wheel its C++ extension
fails to load, and ``import torchvision`` then dies registering fake kernels for operators that
were never defined ("operator torchvision::nms does not exist"). diffusers, transformers, timm and
open_clip import torchvision, so nothing could load a model at all.

``install_guard()`` (run by ``import memaudit``) puts a finder on ``sys.meta_path`` that only
wraps torchvision's loader: importing memaudit imports neither torch nor torchvision, and the fix
costs nothing until, and unless, something imports torchvision. The wrapped loader runs
torchvision's own ``__init__``; only when that fails with the missing-operator error does it
define the two operator schemas torchvision's Python side expects and run it again. The Python
transforms then work; the C++ ops (nms, image decoding) do not, and memaudit uses neither (images
are decoded with Pillow). With a matching torch + torchvision nothing is touched.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys

_MISSING_OPERATOR = "torchvision::"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the schema registration alive for the process lifetime


def _define_schemas() -> None:
    global _library
    if _library is None:
        import torch

        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)


def _forget_torchvision_submodules() -> None:
    for name in [m for m in sys.modules if m.startswith("torchvision.")]:
        del sys.modules[name]


class _GuardedLoader:  # a loader by protocol: importlib.abc would cost more import time than the rest
    """torchvision's own loader, run a second time with the schemas defined if the first run
    fails for want of them. Everything else (resources, file names) is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        except RuntimeError as error:
            if _MISSING_OPERATOR not in str(error):
                raise
            _forget_torchvision_submodules()  # half-initialised ones would be reused otherwise
            _define_schemas()
            self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _TorchvisionFinder:  # a meta path finder by protocol
    """Finds ``torchvision`` as the rest of ``sys.meta_path`` does, with its loader guarded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _GuardedLoader(spec.loader)
        return spec


_finder = _TorchvisionFinder()


def install_guard() -> None:
    """Put the torchvision import guard first on ``sys.meta_path`` (idempotent, no imports).
    A torchvision imported before this call is left as it is."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def prepare_torchvision() -> None:
    """Import torchvision (if installed) through the guard. Kept for callers that want the import
    done now; ``import memaudit`` already installs the guard, so later imports need nothing."""
    import importlib.util

    install_guard()
    if importlib.util.find_spec("torchvision") is None:
        return
    importlib.import_module("torchvision")
