"""Model loads never reach the network (README: "nothing is downloaded").

``offline()`` puts the Hugging Face hub libraries (huggingface_hub, and through it diffusers,
transformers, timm and open_clip) into their offline mode for the duration of one of memaudit's
own loads: a file that is not in the local cache then fails at once instead of after minutes of
retries. ``cached_hub_file`` answers "is this file in the local hub cache?" without any request.
The CLI also sets the environment variables for its whole process (``offline_environment``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterable, Iterator

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_environment() -> None:
    """Set the hub libraries' offline variables for this process (before they are imported:
    huggingface_hub reads them once, at import)."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub offline mode for the block, whether or not huggingface_hub was imported already."""
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    offline_environment()
    constants = None
    if importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import constants
    previous = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # what huggingface_hub.is_offline_mode() returns
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cached_hub_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """The local path of the first of ``filenames`` in the hub cache of ``repo_id`` (revision
    main), or None; reads the cache folder only."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None
