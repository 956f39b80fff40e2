"""README's "Python API" example runs as written, and gives the audit.json figures of the CLI
command README names for the same inputs (a numpy array of the digits and the shipped DDIM
checkpoint as a diffusers pipeline object, against --train digits:100 and the checkpoint folder)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from conftest import spaces_without_ids

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    following = text.find("\n## ", start + 1)
    return text[start:following if following != -1 else None]


def _example_and_command() -> tuple[str, list[str]]:
    section = _section(README.read_text(encoding="utf-8"), "Python API")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"The same audit from the shell .*?`(memaudit audit [^`]+)`", section, re.S).group(1)
    return code, shlex.split(command)[1:]


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory, one_torch_thread):
    """The README block exec'd in a fresh folder, and the CLI command README gives beside it."""
    from memaudit.cli import app
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()  # what `import memaudit` does once its import guard lands (issue 15, part B)
    code, arguments = _example_and_command()
    folder = tmp_path_factory.mktemp("readme")
    namespace: dict = {"__name__": "readme_example"}
    printed = io.StringIO()
    at = arguments.index("--out") + 1
    out = folder / arguments[at]
    arguments[at] = str(out)
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("MEMAUDIT_CACHE", str(folder / "feature-cache"))
        patch.chdir(folder)  # the example writes runs/ where it runs
        exec(compile(code, "README.md (Python API)", "exec"), namespace)
        patch.chdir(README.parent)  # the command as README gives it, from the repository root
        outcome = CliRunner().invoke(app, [*arguments, "--quiet"])
    assert outcome.exit_code == 0, outcome.output
    return namespace, printed.getvalue(), folder, out


def _without_ids(findings: list[dict]) -> list[dict]:
    """Findings without the training images' ids and labels: an array has ids train[j] and no
    labels; digits:100 has ids digits/i and the digits' classes."""
    return [{**f, "neighbors": [{k: v for k, v in n.items() if k not in ("id", "label")} for n in f["neighbors"]]}
            for f in findings]


def test_readme_example_gives_the_cli_figures(readme_runs):
    namespace, printed, folder, cli_out = readme_runs
    result = namespace["result"]
    api = result.audit
    cli = json.loads((cli_out / "audit.json").read_text())

    # the same training images (content digest), the same seeds, and the same figures
    assert api["train"]["fingerprint"] == cli["train"]["fingerprint"]
    for key in ("memorization_ratio", "n_samples", "seeds", "headline", "gate", "warnings", "preprocessing"):
        assert api[key] == cli[key], key
    assert spaces_without_ids(api["spaces"]) == spaces_without_ids(cli["spaces"])
    assert {k: v for k, v in api["model"]["settings"].items() if k != "source"} == cli["model"]["settings"]
    assert api["model"]["settings"]["source"] == "python object"
    assert _without_ids(api["findings"]) == _without_ids(cli["findings"])
    # training ids differ only in naming: train[j] is the j-th of the first ten digits of each class
    digits = namespace["digits"]
    first_ten = namespace["first_ten"]
    for finding_api, finding_cli in zip(api["findings"], cli["findings"]):
        for a, c in zip(finding_api["neighbors"], finding_cli["neighbors"]):
            assert a["id"] == f"train[{a['index']}]" and c["id"] == f"digits/{first_ten[a['index']]}"
            assert a["label"] is None and c["label"] == digits.target[first_ten[a["index"]]]
    # the example's printed line quotes those figures
    nn_ratio = cli["spaces"]["pixel"]["criteria"]["nn-ratio"]
    assert f"memorized: {nn_ratio['memorized']} of {cli['n_samples']}, ratio {cli['memorization_ratio']:.1%}" in printed
    # a real audit: the checkpoint trained on these 100 digits reproduces some of them
    assert 0 < nn_ratio["memorized"] <= cli["n_samples"]


def test_readme_example_saved_run_is_the_cli_run_folder(readme_runs):
    from memaudit.rundir import read_manifest, require_complete

    namespace, _, folder, cli_out = readme_runs
    result = namespace["result"]
    saved = folder / "runs" / "api-digits100"
    require_complete(saved)  # memaudit report and compare accept it
    assert read_manifest(saved)["state"] == "complete"
    assert sorted(p.name for p in saved.iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in cli_out.iterdir() if not p.name.startswith("."))
    for name in ("neighbors.csv", "verdicts.csv"):
        assert (saved / name).read_bytes() == (cli_out / name).read_bytes(), name
    with np.load(saved / "samples.npz") as api_samples, np.load(cli_out / "samples.npz") as cli_samples:
        np.testing.assert_array_equal(api_samples["images"], cli_samples["images"])
        np.testing.assert_array_equal(api_samples["seeds"], cli_samples["seeds"])
    assert json.loads((saved / "audit.json").read_text()) == result.audit
    assert namespace["html"] == (saved / "report.html").read_text(encoding="utf-8")
    assert result.out is None and result.report is None  # kept in memory until saved
