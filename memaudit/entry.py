"""Submodules that are also entry points of the Python API.

``memaudit.compare``, ``memaudit.emm`` and ``memaudit.mia`` are modules and, as the API promises,
functions: importing a submodule sets the package attribute of that name to the module, so each of
these modules makes itself callable (calling it calls ``memaudit.api.<its name>``). Each does so at
its own import, whichever way it is imported, so ``import memaudit`` need not import them."""

from __future__ import annotations

import importlib
import sys
import types


class EntryModule(types.ModuleType):
    """A submodule that is also an entry point: calling it calls ``memaudit.api.<its name>``."""

    def __call__(self, *args, **kwargs):
        return self._entry()(*args, **kwargs)

    @property
    def __signature__(self):  # what inspect.signature and notebooks show for memaudit.compare(...)
        import inspect

        return inspect.signature(self._entry())

    def _entry(self):
        return getattr(importlib.import_module("memaudit.api"), self.__name__.rpartition(".")[2])


def make_callable(module_name: str) -> None:
    """Make the (just imported) module ``module_name`` an ``EntryModule``."""
    sys.modules[module_name].__class__ = EntryModule
