"""The built-in demo on its shipped checkpoint, small: the whole main job, end to end."""

import json

from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.demo import ASSETS, DEMO_RUNS


def test_demo_audits_shipped_checkpoint_and_optimal_control(tmp_path):
    for run in DEMO_RUNS:
        if run.checkpoint:
            assert (ASSETS / run.checkpoint / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--n", "24", "--quiet"])
    assert result.exit_code == 0, result.output
    audits = {run.name: json.loads((tmp_path / run.name / "audit.json").read_text()) for run in DEMO_RUNS}
    full, small = audits["ddim-digits-1797"], audits["ddim-digits-100"]
    optimal = audits["optimal-digits-1797"]
    assert full["model"]["settings"]["pipeline"] == "DDIMPipeline" and full["train"]["n"] == 1797
    assert small["train"]["n"] == 100
    assert optimal["memorization_ratio"] >= 0.99  # the positive control memorizes
    assert full["train"]["fingerprint"] == optimal["train"]["fingerprint"]
    assert all((tmp_path / run.name / "report.html").is_file() for run in DEMO_RUNS)
    assert result.stdout.count("report:") == len(DEMO_RUNS)
    # which seeding each run used: printed and recorded
    assert optimal["model"]["seeding"]["name"] == "edm" and full["model"]["seeding"]["name"] == "diffusers"
    assert result.stdout.count("seeding: edm (EDM generate.py") == 1 and result.stdout.count("seeding: diffusers") == 2
