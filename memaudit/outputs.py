"""The files of a run directory: audit.json, neighbors.csv, verdicts.csv, samples.npz (report.html: reports/)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np

from memaudit.storage import write_json_atomic, write_npz_atomic, write_text_atomic

AUDIT_JSON = "audit.json"
NEIGHBORS_CSV = "neighbors.csv"
SAMPLES_NPZ = "samples.npz"
REPORT_HTML = "report.html"
VERDICTS_CSV = "verdicts.csv"
VERDICTS_COLUMNS = ("sample", "seed", "space", "criterion", "score", "threshold", "memorized", "nn")
NEIGHBORS_COLUMNS = ("sample", "seed", "space", "nn1", "d1", "nn2", "d2", "ratio", "memorized")


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 HWC image as an inline ``data:image/png`` URI (the report embeds, never links)."""
    from PIL import Image

    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_samples(run_dir: Path, images: np.ndarray, seeds: np.ndarray, conditions: dict | None = None) -> None:
    """samples.npz: images, seeds, and what each sample was conditioned on (labels, prompts)."""
    extra = {name: np.asarray(values) for name, values in (conditions or {}).items()}
    write_npz_atomic(run_dir / SAMPLES_NPZ, images=images, seeds=seeds, **extra)


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


def read_audit(run_dir: Path) -> dict:
    return read_run_json(run_dir, AUDIT_JSON, "a finished audit", "audit")


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
