"""Make ``torchvision`` importable beside a CPU-only torch.

The torchvision wheel on PyPI is a CUDA build. Beside the CPU torch wheel its C++ extension
fails to load, and ``import torchvision`` then dies registering fake kernels for operators that
were never defined ("operator torchvision::nms does not exist"). diffusers, transformers and
open_clip import torchvision, so memaudit could not load a model at all.

``prepare_torchvision()`` tries the normal import first; only when it fails that way does it
define the two operator schemas torchvision's Python side expects and import again. The Python
transforms then work; the C++ ops (nms, image decoding) do not, and memaudit uses neither
(images are decoded with Pillow). With a matching torch + torchvision nothing is touched.
"""

from __future__ import annotations

import importlib
import sys

_MISSING_OPERATOR = "torchvision::"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the schema registration alive for the process lifetime
_prepared = False


def prepare_torchvision() -> None:
    """Import torchvision once, defining its missing operator schemas if a CPU torch needs them."""
    global _library, _prepared
    if _prepared:
        return
    if importlib.util.find_spec("torchvision") is None:
        _prepared = True
        return
    import torch

    try:
        importlib.import_module("torchvision")
    except RuntimeError as error:
        if _MISSING_OPERATOR not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
        importlib.import_module("torchvision")
    _prepared = True
