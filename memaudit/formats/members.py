"""Names of archive members (zip, tar): checked before anything is read.

Archives are read in memory, never extracted, yet a member named with an absolute path or a
``..`` component marks an archive built to escape a folder (the classic "zip slip"), so such an
archive is refused as a whole, with the member named.
"""

from __future__ import annotations

import re

from memaudit.errors import DataError

MAX_MEMBER_BYTES = 1 << 28  # 256 MiB: a larger image member is refused before it is read
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_name(archive: str, name: str) -> str:
    """``name`` with ``/`` separators; ``DataError`` when it is absolute or has a ``..`` part."""
    posix = name.replace("\\", "/")
    parts = posix.split("/")
    if posix.startswith("/") or _DRIVE.match(posix) or ".." in parts or "\x00" in posix:
        raise DataError(f"{archive}: member {name!r} has an absolute path or a '..' component; "
                        "refusing the archive (members must be relative paths inside it)")
    return posix


def read_bounded(stream, name: str, size: int) -> bytes:
    """A member's bytes, read as the ``size`` its archive declares (zip and tar stop a member at
    its declared size); one over ``MAX_MEMBER_BYTES`` is a ``DecodeError`` naming it."""
    from .decode import DecodeError

    if size > MAX_MEMBER_BYTES:
        raise DecodeError(f"{name}: member of {size} bytes, over {MAX_MEMBER_BYTES >> 20} MiB; refused as an image")
    return stream.read(max(size, 0))
