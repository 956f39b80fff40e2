"""The files of an EMM run folder, for writers and readers (reports) alike."""

from __future__ import annotations

from pathlib import Path

from memaudit.outputs import read_run_json

EMM_JSON = "emm.json"
EMM_HTML = "emm.html"


def read_emm(run_dir: Path) -> dict:
    return read_run_json(run_dir, EMM_JSON, "memaudit emm", "emm.json")
