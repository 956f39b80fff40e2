"""User code: a factory named as ``path/to/file.py:factory`` or ``package.module:factory``.

The user names the code, so running it is their explicit choice; memaudit never imports code
that merely sits in a checkpoint directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from memaudit.errors import ModelError
from memaudit.storage import fingerprint_files, fingerprint_json

_REFERENCE = re.compile(r"^(?P<target>[^:]+\.py|[A-Za-z_][\w.]*):(?P<name>[A-Za-z_]\w*)$")


def is_code_reference(spec: str) -> bool:
    """``file.py:name`` (the file exists) or ``package.module:name``."""
    match = _REFERENCE.match(spec)
    if not match:
        return False
    target = match["target"]
    return Path(target).is_file() if target.endswith(".py") else "/" not in target


def load_callable(reference: str, what: str = "factory") -> tuple[Callable, str]:
    """The object a reference names, and a fingerprint of the code it comes from."""
    match = _REFERENCE.match(reference)
    if not match:
        raise ModelError(f"{reference}: expected path/to/file.py:{what} or package.module:{what}")
    target, name = match["target"], match["name"]
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ModelError(f"{reference}: no such file {target}")
            module_name = f"memaudit_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            source = path.read_bytes()
        else:
            module = importlib.import_module(target)
            source = Path(module.__file__).read_bytes() if getattr(module, "__file__", None) else target.encode()
    except ModelError:
        raise
    except Exception as error:  # the user's code failed to import: say where, in one line
        raise ModelError(f"{reference}: importing {target} failed ({type(error).__name__}: {error})") from None
    if not callable(getattr(module, name, None)):
        raise ModelError(f"{reference}: {target} defines no callable {name!r}")
    return getattr(module, name), "sha256:" + hashlib.sha256(source).hexdigest()


def call_with_known_arguments(function: Callable, available: dict[str, Any]):
    """Call ``function`` with those of ``available`` that its signature names."""
    return function(**known_arguments(function, available))


def known_arguments(function: Callable, available: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters
    return {key: value for key, value in available.items() if key in parameters}


def _file_arguments(function: Callable, passed: dict[str, Any]) -> dict[str, str]:
    """Content fingerprints of every existing file or folder named by the factory's arguments (the
    values passed and the defaults): what a factory typically loads (weights, data) and the one
    thing besides its source memaudit can see it depend on."""
    values = {name: p.default for name, p in inspect.signature(function).parameters.items()
              if p.default is not inspect.Parameter.empty}
    values.update(passed)
    found = {}
    for name, value in values.items():
        if not isinstance(value, (str, Path)) or not str(value):
            continue
        path = Path(value).expanduser()
        try:
            if path.is_file():
                found[name] = fingerprint_files(path.parent, [path])
            elif path.is_dir():
                found[name] = fingerprint_files(path, (p for p in path.rglob("*") if p.is_file()))
        except OSError:
            continue
    return found


class UserCodeAdapter:
    """Wraps the object a user factory returns; checks every batch it produces.

    A model with its own ``fingerprint()`` keys the sample cache with it. Without one, the key is
    the factory's source, the content of every file its arguments name, the training set it was
    given and the sampler options; that still misses what the code reads by other means (a path
    built inside it, another module), so ``fingerprint_trusted`` is False and the run does not
    reuse such samples from an earlier run unless told to (``--resume``)."""

    def __init__(self, spec: str, train, options):
        factory, self._code_fingerprint = load_callable(spec)
        arguments = known_arguments(factory, {"train": train, "device": options.device,
                                              "steps": options.steps, "options": options})
        self._inputs = {
            "files": _file_arguments(factory, {k: v for k, v in arguments.items() if k != "train"}),
            "train": train.fingerprint if "train" in arguments else None,
            "steps": options.steps, "labels": options.labels, "prompts": options.prompts,
            "guidance": options.guidance, "dtype": options.dtype,
        }
        try:
            self.model = factory(**arguments)
        except Exception as error:
            raise ModelError(f"{spec}: the factory raised {type(error).__name__}: {error}") from None
        if not callable(getattr(self.model, "sample", None)):
            raise ModelError(f"{spec}: the factory returned {type(self.model).__name__}, which has no "
                             "sample(seeds, batch_size, conditioning=None) method")
        self.spec = spec
        self.device = options.device if "device" in arguments else None  # None: the code chooses its own
        self._expected_shape = tuple(getattr(self.model, "image_shape", None) or train.image_shape)

    @property
    def image_shape(self):
        return self._expected_shape

    def settings(self) -> dict[str, Any]:
        own = self.model.settings() if callable(getattr(self.model, "settings", None)) else {}
        return {"adapter": "user-code", "factory": self.spec, **own}

    @property
    def fingerprint_trusted(self) -> bool:
        """Whether the fingerprint covers everything the samples depend on (the model says so by
        defining ``fingerprint()``)."""
        return callable(getattr(self.model, "fingerprint", None))

    def fingerprint(self) -> str:
        own = str(self.model.fingerprint()) if self.fingerprint_trusted else None
        return fingerprint_json({"code": self._code_fingerprint, "model": own, "factory": self.spec, **self._inputs})

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        own = getattr(self.model, "conditioning", None)
        return own(seeds) if callable(own) else {}

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        images = self.model.sample(list(seeds), batch_size, conditioning)
        expected = (len(seeds), *self._expected_shape)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape != expected:
            got = (f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}").strip()
            raise ModelError(f"{self.spec}: sample() returned {got}; expected a uint8 numpy array of shape {expected}")
        return images
