"""The settings of one audit, as the CLI and the Python API build them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memaudit.errors import InputError


@dataclass
class AuditConfig:
    """Everything ``memaudit.auditing.run_audit`` needs.

    Exactly one of ``model`` (a MODEL spec to sample) and ``samples`` (a folder or .npz of images
    already generated) is set. From Python (``memaudit.audit``), ``train``, ``samples``,
    ``holdout`` and the MIA sets may also be ``ImageSet``s or uint8 NHWC arrays, and ``model`` a
    diffusers pipeline object or a callable (``adapters.objects``).
    """

    train: Any  # str, or from Python an ImageSet or array
    out: Path
    model: Any = None  # str, or from Python a pipeline object or callable
    samples: Any = None  # str, or from Python an ImageSet or array
    n: int = 1000
    seed: int = 0
    batch_size: int = 64
    steps: int | None = None
    device: str = "auto"
    threshold: float = 1.0 / 3.0  # the paper's nn-ratio threshold
    spaces: list[str] = field(default_factory=list)  # feature spaces besides pixel (always searched)
    holdout: str | None = None  # unseen images from the training distribution, to calibrate thresholds
    criterion_thresholds: dict[str, float] = field(default_factory=dict)  # {"cosine": 0.5, "pixel/tiled-l2": 0.1}
    relative_alpha: float = 0.5  # carlini-relative's alpha (Carlini et al. 2023 §5.1)
    relative_n: int = 50  # carlini-relative's n nearest training images
    index: str = "auto"  # flat (exact), ivf-pq, ivf, hnsw, or auto (exact up to exact_limit rows, then ivf-pq)
    exact_limit: int = 2_000_000
    nlist: int | None = None  # approximate indexes' build parameters (None: from the set's size and dimension)
    m: int | None = None
    nbits: int | None = None
    nprobe: int | None = None  # search settings (None: tuned to target_recall on a held-out query sample)
    ef: int | None = None
    target_recall: float = 0.99
    fail_above: float | None = None
    target_fpr: float = 0.01  # with a holdout, a criterion speaks in the verdict when its FPR is at most this
    on_error: str = "fail"  # unreadable images: fail (name the file) or skip (record it in audit.json)
    resize: str = "none"  # none, center-crop or resize, to image_size
    image_size: str | None = None  # N or HxW
    top: int = 24  # memorized findings shown with thumbnails in the report
    labels: str | None = None  # class-conditional models: train, uniform or a class index
    prompts: str | None = None  # text-to-image models: train or a file of prompts
    guidance: float | None = None
    scheduler: str | None = None
    dtype: str = "fp32"
    trust_checkpoint: bool = False  # allow pickles / checkpoint code to run (never by default)
    code_path: str | None = None  # folder put on the import path for a pickle's classes (EDM's code)
    factory: str | None = None  # file.py:build for a safetensors state dict's network
    seeding: str | None = None  # EDM-sampled models: edm (default: EDM generate.py's) or legacy
    sampler_options: dict[str, float] = field(default_factory=dict)  # EDM sampler: S_churn, sigma_min, ...
    include_initial_snapshot: bool = False  # sweeps: also audit the untrained step-0 snapshot
    variant: str | None = None  # diffusers weight variant (diffusion_pytorch_model.<variant>.safetensors)
    safety_checker: str = "off"  # a pipeline's safety checker: off, or flag (mark flagged samples)
    loras: list[str] = field(default_factory=list)  # LoRA files on a diffusers pipeline, FILE or FILE:SCALE
    embeddings: list[str] = field(default_factory=list)  # textual-inversion embedding files
    base: str | None = None  # the base pipeline: sampled with the same seeds and compared (auditing.base);
    #                          a fine-tuned component folder (MODEL) is loaded into it
    redact: str = "none"  # training images in report.html: none, blur or omit
    mia_members: str | None = None  # with mia_nonmembers: attach a membership-inference section (memaudit.mia)
    mia_nonmembers: str | None = None
    resume: bool = False  # reuse sample shards even of a model whose fingerprint cannot be trusted
    command: str | None = None  # the command line, for provenance

    def load_options(self):
        """How training images, holdout and given samples are decoded (--on-error, --resize)."""
        from memaudit.formats.decode import LoadOptions, parse_size

        return LoadOptions(on_error=self.on_error, resize=self.resize, size=parse_size(self.image_size))

    def space_list(self) -> list[str]:
        """pixel first, then the other spaces once each, in the order given."""
        return list(dict.fromkeys(["pixel", *self.spaces]))

    def thresholds(self, space: str | None = None) -> dict[str, float]:
        """Each criterion's threshold set by the user: for ``space``, its SPACE/NAME settings over the
        NAME ones; nn-ratio's from --threshold. Criteria not listed use the space's defaults."""
        every = {name: value for name, value in self.criterion_thresholds.items() if "/" not in name}
        mine = {} if space is None else {key.rpartition("/")[2]: value for key, value in self.criterion_thresholds.items()
                                          if key.rpartition("/")[0] == space}
        return {"nn-ratio": self.threshold, "nn-ratio-dedup": self.threshold, **every, **mine}

    def criterion_settings(self) -> dict[str, dict]:
        """Settings of criteria besides their thresholds, by criterion."""
        return {"carlini-relative": {"alpha": self.relative_alpha, "n": self.relative_n}}

    def _validate_search(self) -> None:
        for name, value in (("--nlist", self.nlist), ("--m", self.m), ("--nbits", self.nbits),
                            ("--nprobe", self.nprobe), ("--ef", self.ef)):
            if value is not None and value < 1:
                raise InputError(f"{name} {value}: must be a positive integer")
        if self.index == "flat" and any(v is not None for v in (self.nlist, self.m, self.nbits, self.nprobe, self.ef)):
            raise InputError("--index flat: exact search takes no --nlist, --m, --nbits, --nprobe or --ef; "
                             "use --index ivf-pq, ivf or hnsw")
        if self.nprobe is not None and self.index == "hnsw":
            raise InputError("--nprobe: applies to ivf and ivf-pq indexes; hnsw's search setting is --ef")
        if self.ef is not None and self.index != "hnsw":
            raise InputError(f"--ef: applies to --index hnsw, not {self.index}; ivf indexes take --nprobe")
        if not 0.0 < self.target_recall <= 1.0:
            raise InputError(f"--target-recall {self.target_recall}: must be in (0, 1] (default 0.99)")

    def validate(self) -> None:
        """Raise ``InputError`` naming the first invalid setting."""
        if (self.model is None) == (self.samples is None):
            raise InputError("MODEL / --samples: give exactly one: a model to sample, or --samples PATH of generated images")
        if self.model is not None and self.n < 1:
            raise InputError(f"--n {self.n}: the number of samples must be at least 1")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps {self.steps}: must be at least 1")
        if self.base is not None and self.model is None:
            raise InputError("--base: the base is sampled with the fine-tune's seeds and prompts; give MODEL (the "
                             "fine-tune), not --samples")
        if self.base is not None and not isinstance(self.model, (str, Path)):
            raise InputError("base: compares a fine-tune loaded from disk with its base; give model as a path or spec")
        if (self.mia_members is None) != (self.mia_nonmembers is None):
            raise InputError("--members / --nonmembers: the MIA section needs both (known members and known non-members)")
        if self.mia_members is not None and self.model is None:
            raise InputError("--members: membership inference queries the model; give MODEL, not --samples")
        if self.n >= 2**63:  # sample i has seed --seed + i: the count is what is out of range
            raise InputError(f"--n {self.n}: seeds are non-negative 64-bit integers; give --n below 2^63")
        if self.seed < 0 or self.seed + self.n > 2**63:
            raise InputError(f"--seed {self.seed}: seeds must be non-negative 64-bit integers (--seed + --n at most 2^63)")
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"--threshold {self.threshold}: the nn-ratio threshold must be in (0, 1]")
        if self.fail_above is not None and not 0.0 <= self.fail_above <= 1.0:
            raise InputError(f"--fail-above {self.fail_above}: must be a fraction in [0, 1]")
        if not (math.isfinite(self.target_fpr) and 0.0 <= self.target_fpr < 1.0):
            raise InputError(f"--target-fpr {self.target_fpr}: must be a fraction in [0, 1) (default 0.01)")
        from memaudit.reports.redact import REDACTIONS

        if self.redact not in REDACTIONS:
            raise InputError(f"--redact {self.redact}: expected one of {', '.join(REDACTIONS)}")
        from memaudit.criteria import CRITERIA, applies_in
        from memaudit.search import INDEXES

        spaces = self.space_list()
        for key, value in self.criterion_thresholds.items():
            space, _, name = key.rpartition("/")
            if name not in CRITERIA:
                raise InputError(f"--criterion-threshold {key}: unknown criterion; valid criteria are {', '.join(CRITERIA)}")
            if space and space not in spaces:
                raise InputError(f"--criterion-threshold {key}: no space {space} in this audit; its spaces are "
                                 f"{', '.join(spaces)} (SPACE is written as --space gives it)")
            if space and not applies_in(CRITERIA[name], space):
                raise InputError(f"--criterion-threshold {key}: {name} does not apply in {space}; it applies in "
                                 f"{CRITERIA[name].where} spaces")
            CRITERIA[name].check_threshold(value, f"--criterion-threshold {key}={value}")
        if not (math.isfinite(self.relative_alpha) and self.relative_alpha > 0):
            raise InputError(f"--relative-alpha {self.relative_alpha}: must be a finite number above 0 (the paper's is 0.5)")
        if self.relative_n < 1:
            raise InputError(f"--relative-n {self.relative_n}: must be at least 1 (the paper's is 50)")
        if self.index not in INDEXES:
            raise InputError(f"--index {self.index}: expected one of {', '.join(INDEXES)}")
        self._validate_search()
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out}: exists and is not a folder")
