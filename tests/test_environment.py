"""The environment memaudit sets up on import: torchvision importable beside a CPU torch, cheaply."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import memaudit


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_memaudit_makes_model_libraries_importable():
    # The Done-when line of the issue, in a fresh interpreter (pytest's own process may have
    # imported torchvision already through conftest).
    result = _run("import memaudit; from diffusers import UNet2DModel; import open_clip; import timm; "
                  "import transformers; import torchvision.transforms as T; print(T.Resize.__name__)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "Resize"


def test_import_memaudit_imports_neither_torch_nor_torchvision():
    # The guard is an import hook: importing memaudit alone stays cheap (no torch import).
    result = _run("import sys, memaudit; print('torch' in sys.modules, 'torchvision' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]


def test_guard_is_installed_once():
    from memaudit import torchcompat

    torchcompat.install_guard()
    torchcompat.install_guard()
    assert sum(finder is torchcompat._finder for finder in sys.meta_path) == 1


def test_version_matches_the_installed_distribution():
    assert memaudit.__version__ == importlib.metadata.version("memaudit")
