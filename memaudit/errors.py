"""Errors memaudit raises for user mistakes.

Every message names the input at fault and says what would be valid; the CLI prints it on one
line and exits with code 2. Anything that is not a ``MemauditError`` is a bug in memaudit.
"""

from __future__ import annotations


class MemauditError(Exception):
    """Base class of the errors a user can cause and fix."""


class InputError(MemauditError, ValueError):
    """An argument, path or file the user gave is missing, malformed or inconsistent."""


class DataError(InputError):
    """A training set or a set of samples cannot be read as images."""


class ModelError(InputError):
    """A MODEL argument names nothing memaudit can load and sample."""
