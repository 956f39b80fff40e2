"""What an audit returns to Python: the content of audit.json as attributes, and the run's files.

A run written to a folder (``out=...``) keeps its files there; a run kept in memory (``out=None``)
holds the same files as bytes, so that ``save(folder)`` later writes the run folder the CLI would
have written and ``report_html()`` renders the same page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memaudit import outputs, rundir
from memaudit.errors import InputError
from memaudit.verdict import gate

# Files a run keeps besides its manifest; run.json is rewritten by ``save`` for the new folder.
_NOT_KEPT = (rundir.MANIFEST_JSON, rundir.LOCK_FILE)


@dataclass
class AuditResult:
    """A finished audit.

    ``audit`` is the content of audit.json; its main figures are attributes (``memorization_ratio``,
    ``headline``, ``spaces``, ``findings``, ``gate``, ...), each the value of the audit.json key of
    the same name. ``out`` is the run folder, or None for a run kept in memory, whose files are in
    ``files`` (relative path -> bytes) until ``save`` writes them.
    """

    out: Path | None
    audit: dict = field(repr=False)  # holds every finding's images inline: too long to print
    files: dict[str, bytes] | None = field(default=None, repr=False)
    manifest: dict | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        where = f"out={str(self.out)!r}" if self.out is not None else "in memory"
        return (f"AuditResult(memorization_ratio={self.memorization_ratio!r}, memorized={self.headline['memorized']}, "
                f"n_samples={self.n_samples}, {where})")

    # --- the figures of audit.json ---------------------------------------------------------------
    @property
    def memorization_ratio(self) -> float:
        """The paper's figure: the share of samples the pixel nn-ratio criterion calls memorized."""
        return self.audit["memorization_ratio"]

    @property
    def n_samples(self) -> int:
        return self.audit["n_samples"]

    @property
    def headline(self) -> dict:
        """What the report leads with: the verdict (``verdict``, ``reason``, ``exact_copies``), the
        paper's ratio, the criteria allowed to speak that flag samples (``others_flagging``) and the
        informational ones (``informational``, each with why)."""
        return self.audit["headline"]

    @property
    def spaces(self) -> dict:
        """Per feature space: its search and criteria (``spaces["pixel"]["criteria"]["nn-ratio"]``)."""
        return self.audit["spaces"]

    @property
    def criteria(self) -> dict:
        """``{"SPACE/CRITERION": summary}`` over every space (memorized, n, fraction, ci95, threshold...)."""
        return {f"{space}/{name}": summary for space, body in self.spaces.items()
                for name, summary in body["criteria"].items()}

    @property
    def findings(self) -> list[dict]:
        """The samples the report shows, most memorized first, with their nearest training images."""
        return self.audit["findings"]

    @property
    def gate(self) -> dict:
        return self.audit["gate"]

    @property
    def model(self) -> dict | None:
        return self.audit["model"]

    @property
    def train(self) -> dict:
        return self.audit["train"]

    @property
    def warnings(self) -> list[str]:
        return self.audit.get("warnings") or []

    @property
    def verdict(self) -> str:
        """``copies``, ``memorizes`` or ``no-evidence`` (``memaudit.verdict``'s rule)."""
        return self.headline["verdict"]

    @property
    def exact_copies(self) -> list[dict]:
        """The samples that copy a training image: ``{sample, seed, exact, train_ids}`` each."""
        return self.headline["exact_copies"]

    def exceeds(self, limit: float | None) -> bool:
        """True when a ``--fail-above`` limit is set and the gate fails it: any exact copy, or a
        memorized share above it (``memaudit.verdict.gate``)."""
        return limit is not None and not gate(limit, self.headline)["passed"]

    # --- the run's files --------------------------------------------------------------------------
    @property
    def report(self) -> Path | None:
        """report.html in the run folder (None for a run kept in memory: see ``report_html``)."""
        return None if self.out is None else self.out / outputs.REPORT_HTML

    def report_html(self, redact: str | None = None) -> str:
        """The report page, rendered from audit.json alone (``redact``: none, blur, omit; default:
        the run's choice)."""
        from memaudit.reports import render_report
        from memaudit.reports.redact import REDACTIONS

        mode = redact if redact is not None else (self.audit.get("report") or {}).get("redact", "none")
        if mode not in REDACTIONS:
            raise InputError(f"redact={mode!r}: expected one of {', '.join(REDACTIONS)}")
        return render_report(self.audit, redact=mode)

    def read_file(self, name: str) -> bytes:
        """One file of the run (``"neighbors.csv"``, ``"samples.npz"``, ...), from disk or memory."""
        if self.files is not None:
            if name not in self.files:
                raise InputError(f"{name}: not a file of this run; its files are {', '.join(sorted(self.files))}")
            return self.files[name]
        path = Path(self.out) / name
        if not path.is_file():
            raise InputError(f"{name}: not a file of the run in {self.out}")
        return path.read_bytes()

    @property
    def samples(self) -> np.ndarray:
        """The audited images, uint8 (N, H, W, C), in the order of the per-sample results."""
        return self._samples()["images"]

    @property
    def seeds(self) -> np.ndarray:
        """Each sample's seed (-1 where the given samples recorded none)."""
        return self._samples()["seeds"]

    def _samples(self) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.read_file(outputs.SAMPLES_NPZ)), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}

    def save(self, folder: str | Path) -> Path:
        """Write the run into ``folder`` (created; refused when it holds another run or is being
        written): the files of the CLI's ``--out``, with a complete manifest. Returns the folder."""
        from memaudit.storage import write_bytes_atomic

        folder = Path(folder).expanduser()
        if self.out is not None and folder.resolve() == Path(self.out).resolve():
            return folder
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder")
        if (folder / rundir.MANIFEST_JSON).exists():
            raise InputError(f"{folder}: already holds a run (run.json); save into a new or empty folder")
        files = self.files if self.files is not None else _read_tree(Path(self.out))
        manifest = self.manifest or {}
        inputs = {**(manifest.get("inputs") or {}), "out": str(folder)}
        with rundir.claim(folder, inputs, manifest.get("command")) as run:
            for name, data in files.items():
                write_bytes_atomic(folder / name, data)
            run.complete(sorted(files))
        return folder


def _read_tree(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder by relative path, without hidden ones (sample caches, the lock,
    temporaries) and without the top manifest (``save`` writes its own)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or str(relative) in _NOT_KEPT:
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files


def read_run(folder: Path) -> tuple[dict[str, bytes], dict | None]:
    """The files and manifest of a finished run folder, for a run kept in memory."""
    return _read_tree(Path(folder)), rundir.read_manifest(Path(folder))


@dataclass
class RunResult:
    """A finished ``compare``, ``mia``, ``extract`` or ``emm`` run: its JSON document (also readable
    as ``result["key"]``), and its folder, or, for a run kept in memory, its files as bytes."""

    kind: str  # compare, mia, extract, emm: the document is KIND.json, the page KIND.html
    document: dict = field(repr=False)
    out: Path | None = None
    files: dict[str, bytes] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        where = f"out={str(self.out)!r}" if self.out is not None else "in memory"
        return f"RunResult({self.kind!r}, keys={sorted(self.document)}, {where})"

    def __getitem__(self, key: str):
        return self.document[key]

    def __contains__(self, key: str) -> bool:
        return key in self.document

    @property
    def page(self) -> Path | None:
        """KIND.html in the run folder (None for a run kept in memory: see ``page_html``)."""
        return None if self.out is None else Path(self.out) / f"{self.kind}.html"

    def page_html(self) -> str:
        """The run's HTML page."""
        return self.read_file(f"{self.kind}.html").decode("utf-8")

    def read_file(self, name: str) -> bytes:
        if self.files is not None:
            if name not in self.files:
                raise InputError(f"{name}: not a file of this run; its files are {', '.join(sorted(self.files))}")
            return self.files[name]
        path = Path(self.out) / name
        if not path.is_file():
            raise InputError(f"{name}: not a file of the run in {self.out}")
        return path.read_bytes()

    def save(self, folder: str | Path) -> Path:
        """Write the run's files into ``folder`` (created); returns the folder."""
        from memaudit.storage import write_bytes_atomic

        folder = Path(folder).expanduser()
        if self.out is not None and folder.resolve() == Path(self.out).resolve():
            return folder
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder")
        if (folder / f"{self.kind}.json").exists():
            raise InputError(f"{folder}: already holds a {self.kind} run ({self.kind}.json); save into a new or empty folder")
        files = self.files if self.files is not None else _read_tree(Path(self.out))
        for name in sorted(files, key=lambda n: n == f"{self.kind}.json"):  # the document last
            write_bytes_atomic(folder / name, files[name])
        return folder
