"""Errors memaudit raises for user mistakes.

Every message names the input at fault and says what would be valid; the CLI prints it on one
line and exits with code 2. Anything that is not a ``MemauditError`` is a bug in memaudit.
"""

from __future__ import annotations

import errno
import re


class MemauditError(Exception):
    """Base class of the errors a user can cause and fix."""

    def __str__(self) -> str:
        # one line whatever a library's text embedded in the message holds (pyarrow's end in "\n)")
        return re.sub(r"\s*\n\s*", " ", super().__str__()).strip()


class InputError(MemauditError, ValueError):
    """An argument, path or file the user gave is missing, malformed or inconsistent."""


class DataError(InputError):
    """A training set or a set of samples cannot be read as images."""


class ModelError(InputError):
    """A MODEL argument names nothing memaudit can load and sample."""


class StorageError(MemauditError):
    """A file cannot be written or read for a reason of the system's: a full disk, a read-only
    filesystem, missing permissions."""


# errno -> what the user can do about it
_STORAGE_ERRNOS = {
    errno.ENOSPC: "free some space or give another folder",
    errno.EDQUOT: "free some space or give another folder",
    errno.EROFS: "give a folder on a writable filesystem",
    errno.EACCES: "fix its permissions or give another folder",
    errno.EPERM: "fix its permissions or give another folder",
    errno.ENOTDIR: "a folder on its path is a file: give a folder path",
}


def storage_error(error: OSError) -> StorageError | None:
    """The one-line error for an ``OSError`` of the filesystem (full disk, read-only, permissions),
    or None for other OS errors (bugs). Files already finished stay as they are: every write is atomic."""
    if error.errno not in _STORAGE_ERRNOS:
        return None
    where = error.filename if error.filename is not None else "a file"
    reason = error.strerror or errno.errorcode.get(error.errno, str(error.errno))
    return StorageError(f"{where}: {reason} ({errno.errorcode[error.errno]}); {_STORAGE_ERRNOS[error.errno]} "
                        "(--out, $MEMAUDIT_CACHE); files already finished are kept, rerun the same command to resume")
