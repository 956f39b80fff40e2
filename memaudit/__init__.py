"""memaudit: audit diffusion models for memorized training images."""

# Before anything can import torchvision: the guard makes it importable beside a CPU-only torch
# (see memaudit.torchcompat). It only registers an import hook; it imports nothing itself.
from memaudit.torchcompat import install_guard as _install_torchvision_guard

_install_torchvision_guard()

__version__ = "0.1.0"
