"""The files of a run directory: audit.json, neighbors.csv, verdicts.csv, samples.npz (report.html: reports/)."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from memaudit.storage import RowBlocks, npz_member_memmap, write_json_atomic, write_npz_streamed_atomic, write_text_atomic

AUDIT_JSON = "audit.json"
NEIGHBORS_CSV = "neighbors.csv"
SAMPLES_NPZ = "samples.npz"
REPORT_HTML = "report.html"
VERDICTS_CSV = "verdicts.csv"
CACHE_DIR = ".cache"  # a run folder's own cache: sample shards, the samples' features shared by ranks
VERDICTS_COLUMNS = ("sample", "seed", "space", "criterion", "score", "threshold", "memorized", "nn")
NEIGHBORS_COLUMNS = ("sample", "seed", "space", "nn1", "d1", "nn2", "d2", "ratio", "memorized")
EMM_JSON = "emm.json"  # an EMM run folder (memaudit.retraining), for its writer and the reports alike
EMM_HTML = "emm.html"


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 HWC image as an inline ``data:image/png`` URI (the report embeds, never links)."""
    from PIL import Image

    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_samples(run_dir: Path, images: np.ndarray | RowBlocks, seeds: np.ndarray,
                  conditions: dict | None = None) -> None:
    """samples.npz: images, seeds, and what each sample was conditioned on (labels, prompts).
    Uncompressed, the images written block by block when given as ``RowBlocks``: ``mapped_samples``
    memory-maps them."""
    extra = {name: np.asarray(values) for name, values in (conditions or {}).items()}
    write_npz_streamed_atomic(run_dir / SAMPLES_NPZ, images=images, seeds=seeds, **extra)


def mapped_samples(run_dir: Path) -> np.ndarray:
    """The images of a run's samples.npz, memory-mapped (read-only): a process reads the rows it uses."""
    images = npz_member_memmap(run_dir / SAMPLES_NPZ, "images")
    if images is None:
        raise ValueError(f"{run_dir / SAMPLES_NPZ}: images stored compressed; write_samples writes them plain")
    return images


def write_neighbors(run_dir: Path, spaces: list, seeds: np.ndarray) -> None:
    """One row per sample and space: its two nearest training images, L2 distances, the nn ratio
    and its verdict. ``spaces`` holds (name, distances, indices, nn-ratio verdicts) per space."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NEIGHBORS_COLUMNS)
    for space, distances, indices, verdicts in spaces:
        for i in range(len(seeds)):
            writer.writerow([
                i, "" if seeds[i] < 0 else int(seeds[i]), space,
                int(indices[i, 0]), f"{distances[i, 0]:.6g}", int(indices[i, 1]), f"{distances[i, 1]:.6g}",
                f"{verdicts.scores[i]:.6g}", "true" if verdicts.memorized[i] else "false",
            ])
    write_text_atomic(run_dir / NEIGHBORS_CSV, buffer.getvalue())


def write_verdicts(run_dir: Path, spaces: dict, seeds: np.ndarray) -> None:
    """verdicts.csv: one row per sample, space and criterion: its score, the threshold, the verdict
    and ``nn``, the 0-based training index the score refers to. ``spaces`` maps each space to its
    {criterion: Verdicts}."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VERDICTS_COLUMNS)
    for space, verdicts in spaces.items():
        for criterion, v in verdicts.items():
            for i in range(len(seeds)):
                writer.writerow([i, "" if seeds[i] < 0 else int(seeds[i]), space, criterion, repr(float(v.scores[i])),
                                 repr(float(v.threshold)), "true" if v.memorized[i] else "false", int(v.nn[i])])
    write_text_atomic(run_dir / VERDICTS_CSV, buffer.getvalue())


def write_audit(run_dir: Path, audit: dict) -> None:
    write_json_atomic(run_dir / AUDIT_JSON, audit)


AUDIT_SCHEMA = "audit.schema.json"  # package data under memaudit/schemas/
AUDIT_SCHEMA_VERSIONS = (1,)  # the audit.json versions this memaudit reads


def read_audit(run_dir: Path) -> dict:
    """A run's audit.json, checked against the package's JSON Schema before anything reads it:
    a document of another shape or version is one InputError naming where it goes wrong."""
    audit = read_run_json(run_dir, AUDIT_JSON, "a finished audit", "audit")
    validate_audit(audit, Path(run_dir) / AUDIT_JSON)
    return audit


def validate_audit(audit, source) -> None:
    """InputError unless ``audit`` is an audit.json of a schema_version this memaudit reads."""
    from memaudit import __version__
    from memaudit.errors import InputError

    if not isinstance(audit, dict):
        raise InputError(f"{source}: not an audit (a JSON {_json_type(audit)}, expected an object with schema_version, "
                         "memorization_ratio, spaces, ...)")
    version = audit.get("schema_version")
    if type(version) is not int or version not in AUDIT_SCHEMA_VERSIONS:
        raise InputError(f"{source}: schema_version {json.dumps(version)} is not one this memaudit {__version__} reads "
                         f"({', '.join(map(str, AUDIT_SCHEMA_VERSIONS))}); render it with the memaudit that wrote it, or rerun the audit")
    import jsonschema

    error = jsonschema.exceptions.best_match(_audit_validator().iter_errors(audit))
    if error is not None:
        raise InputError(f"{source}: not an audit.json memaudit can render: {_describe(error)} "
                         f"(schema: memaudit/schemas/{AUDIT_SCHEMA})")


def _audit_validator():
    import importlib.resources

    import jsonschema

    global _VALIDATOR
    if _VALIDATOR is None:
        schema = json.loads(importlib.resources.files("memaudit").joinpath("schemas", AUDIT_SCHEMA).read_text(encoding="utf-8"))
        # JSON has no NaN or Infinity; Python's parser takes them, so the schema's "number" is a
        # finite number here (a NaN ratio would otherwise render as a plausible page)
        finite = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "number", lambda checker, value: _is_number(value) and math.isfinite(value))
        _VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=finite)(schema)
    return _VALIDATOR


_VALIDATOR = None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _describe(error) -> str:
    """Where a schema error is (audit.spaces.pixel...) and what was expected, kept short."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    where = where.lstrip(".") or "the document"
    if error.validator == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
        return f"{where} is {error.instance}, expected a finite number (JSON has no NaN or Infinity)"
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{where} is a {_json_type(error.instance)}, expected {' or '.join(expected)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "const":
        return f"{where} must be {json.dumps(error.validator_value)}"
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{where}: {message}"


def read_run_json(run_dir: Path, name: str, producer: str, what: str) -> dict:
    """The JSON document ``name`` of a run folder; ``InputError`` says which command makes it."""
    from memaudit.errors import InputError

    path = Path(run_dir) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{run_dir}: no {name} here; expected the --out folder of {producer}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable {what} ({error})") from None


def read_emm(run_dir: Path) -> dict:
    """emm.json of an EMM run folder."""
    return read_run_json(run_dir, EMM_JSON, "memaudit emm", "emm.json")
