"""Research checkpoints: EDM pickles (refused unless trusted), TorchScript, safetensors with a factory,
user code, and snapshot sweeps."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from batch_invariance import max_grey_level_difference
from typer.testing import CliRunner

from memaudit.cli import app

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"


def audit(model, out, *extra, train="digits:50", n=8):
    return runner.invoke(app, ["audit", str(model), "--train", train, "--out", str(out), "--n", str(n),
                               "--steps", "4", "--quiet", *map(str, extra)])


def one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "\n" not in result.stderr.strip() and fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def edm_code(tmp_path_factory) -> Path:
    """EDM's repository layout: training/networks.py defines the pickled class."""
    root = tmp_path_factory.mktemp("edm-code")
    (root / "training").mkdir()
    (root / "training" / "__init__.py").write_text("")
    shutil.copyfile(FIXTURES / "edm_code_networks.py", root / "training" / "networks.py")
    return root


def make_edm_snapshot(edm_code: Path, path: Path, seed: int, label_dim: int = 0) -> Path:
    """Pickle {'ema': net} in a separate process, as EDM's training loop does, so this process
    has never imported the network's module."""
    script = textwrap.dedent(f"""
        import pickle, sys, torch
        sys.path.insert(0, {str(edm_code)!r})
        from training.networks import TinyPrecond
        torch.manual_seed({seed})
        net = TinyPrecond(label_dim={label_dim})
        with open({str(path)!r}, "wb") as f:
            pickle.dump({{"ema": net, "augment_pipe": None}}, f)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    return path


def test_edm_pickle_is_refused_without_trust(tmp_path, edm_code):
    snapshot = make_edm_snapshot(edm_code, tmp_path / "network-snapshot-000100.pkl", 0)
    one_line_error(audit(snapshot, tmp_path / "o"), "a pickle runs code when it is loaded, so memaudit refuses it")


def test_edm_pickle_needs_its_code(tmp_path, edm_code):
    snapshot = make_edm_snapshot(edm_code, tmp_path / "network-snapshot-000100.pkl", 0)
    one_line_error(audit(snapshot, tmp_path / "o", "--trust-checkpoint"), "the pickle needs module 'training'")


def test_trusted_edm_pickle_samples_deterministically(tmp_path, edm_code):
    snapshot = make_edm_snapshot(edm_code, tmp_path / "network-snapshot-000100.pkl", 0, label_dim=10)
    args = ["--trust-checkpoint", "--code-path", edm_code, "--labels", "train"]
    first = audit(snapshot, tmp_path / "a", *args)
    assert first.exit_code == 0, first.output
    second = audit(snapshot, tmp_path / "b", *args, "--batch-size", "3")
    assert second.exit_code == 0
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    np.testing.assert_array_equal(a["labels"], b["labels"])  # exact: drawn from the seed
    assert max_grey_level_difference(a["images"], b["images"]) <= 1  # another batch shape: one grey level
    assert a["labels"].shape == (8,)
    settings = json.loads((tmp_path / "a" / "audit.json").read_text())["model"]["settings"]
    assert settings["adapter"] == "edm-snapshot" and settings["model_evaluations"] == 7


def test_torchscript_denoiser(tmp_path):
    sys.path.insert(0, str(FIXTURES))
    try:
        from edm_code_networks import TinyPrecond
    finally:
        sys.path.remove(str(FIXTURES))
    torch.manual_seed(0)
    traced = torch.jit.trace(TinyPrecond(), (torch.randn(2, 1, 8, 8), torch.ones(2)))
    traced.save(str(tmp_path / "denoiser.pt"))
    result = audit(tmp_path / "denoiser.pt", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "audit.json").read_text())["model"]["settings"]["adapter"] == "torchscript"


def test_whole_model_torch_save_is_refused(tmp_path):
    torch.save(torch.nn.Conv2d(1, 1, 3, padding=1), tmp_path / "model.pt")
    one_line_error(audit(tmp_path / "model.pt", tmp_path / "o"), "a torch.save file of a whole model is a pickle")


def test_safetensors_state_dict_with_factory(tmp_path):
    from safetensors.torch import save_file

    factory = tmp_path / "build_net.py"
    factory.write_text((FIXTURES / "edm_code_networks.py").read_text() + "\n\ndef build():\n    return TinyPrecond()\n")
    torch.manual_seed(3)
    sys.path.insert(0, str(FIXTURES))
    try:
        from edm_code_networks import TinyPrecond
    finally:
        sys.path.remove(str(FIXTURES))
    save_file(TinyPrecond().state_dict(), str(tmp_path / "weights.safetensors"))
    result = audit(tmp_path / "weights.safetensors", tmp_path / "run", "--factory", f"{factory}:build")
    assert result.exit_code == 0, result.output
    one_line_error(audit(tmp_path / "weights.safetensors", tmp_path / "o"), "needs --factory")
    (tmp_path / "bad.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    one_line_error(audit(tmp_path / "weights.safetensors", tmp_path / "o2", "--factory", f"{tmp_path / 'bad.py'}:build"),
                   "loading the weights into")


def test_user_code_example_is_a_negative_control(tmp_path):
    example = Path(__file__).parents[1] / "adapters" / "example_user_model.py"
    result = audit(f"{example}:build", tmp_path / "run", n=64)
    assert result.exit_code == 0, result.output
    audit_json = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit_json["memorization_ratio"] == 0.0 and audit_json["model"]["settings"]["adapter"] == "user-code"
    again = audit(f"{example}:build", tmp_path / "again", "--batch-size", "5", n=64)
    assert again.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "samples.npz")["images"],
                                  np.load(tmp_path / "again" / "samples.npz")["images"])


@pytest.mark.parametrize("body, fragment", [
    ("def build():\n    return 42\n", "which has no sample(seeds, batch_size, conditioning=None) method"),
    ("import numpy as np\nclass M:\n    def sample(self, seeds, batch_size, conditioning=None):\n"
     "        return np.zeros((len(seeds), 4, 4, 1), np.uint8)\ndef build():\n    return M()\n",
     "expected a uint8 numpy array of shape (8, 8, 8, 1)"),
    ("import numpy as np\nclass M:\n    def sample(self, seeds, batch_size, conditioning=None):\n"
     "        return np.zeros((len(seeds), 8, 8, 1), np.float32)\ndef build():\n    return M()\n",
     "returned ndarray float32"),
    ("raise RuntimeError('boom')\n", "importing"),
])
def test_bad_user_factories(tmp_path, body, fragment):
    (tmp_path / "user.py").write_text(body)
    one_line_error(audit(f"{tmp_path / 'user.py'}:build", tmp_path / "o"), fragment)


# --- snapshot sweeps --------------------------------------------------------------------------


def test_sweep_over_edm_snapshots_reports_the_maximum(tmp_path, edm_code):
    folder = tmp_path / "training-run"
    folder.mkdir()
    for kimg, seed in ((200, 1), (100, 2), (300, 3)):
        make_edm_snapshot(edm_code, folder / f"network-snapshot-{kimg:06d}.pkl", seed)
    result = audit(folder, tmp_path / "sweep", "--trust-checkpoint", "--code-path", edm_code, n=16)
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "sweep" / "audit.json").read_text())
    trajectory = sweep["snapshots"]["trajectory"]
    assert [p["step"] for p in trajectory] == [100, 200, 300]
    ratios = [json.loads((tmp_path / "sweep" / p["run_dir"] / "audit.json").read_text())["memorization_ratio"]
              for p in trajectory]
    assert [p["memorization_ratio"] for p in trajectory] == ratios
    assert sweep["memorization_ratio"] == max(ratios)
    # every snapshot saw the same seeds
    seeds = [np.load(tmp_path / "sweep" / p["run_dir"] / "samples.npz")["seeds"].tolist() for p in trajectory]
    assert seeds[0] == seeds[1] == seeds[2] == list(range(16))
    assert "Memorization over training" in (tmp_path / "sweep" / "report.html").read_text()


def test_sweep_over_diffusers_checkpoints(tmp_path, tiny_pipeline_dir):
    from conftest import diffusers_checkpoint_folder

    folder = diffusers_checkpoint_folder(tiny_pipeline_dir, tmp_path / "output")
    (folder / "checkpoint-1000" / "optimizer.bin").write_bytes(b"never unpickled")
    result = audit(folder, tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "sweep" / "audit.json").read_text())
    assert [p["snapshot"] for p in sweep["snapshots"]["trajectory"]] == ["checkpoint-500", "checkpoint-1000"]
    fingerprints = {p["model_fingerprint"] for p in sweep["snapshots"]["trajectory"]}
    assert len(fingerprints) == 2
