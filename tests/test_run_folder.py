"""A run folder is one complete run or visibly incomplete, has one writer at a time, and keeps no
leftovers of interrupted writes."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memaudit import rundir
from memaudit.auditing import run_audit
from memaudit.cli import app
from memaudit.auditing.config import AuditConfig
from memaudit.features.cache import cache_root
from memaudit.storage import writer_tag

runner = CliRunner()


def _config(out, **settings):
    return AuditConfig(**{"model": "optimal", "train": "digits:50", "out": Path(out), "n": 12, "steps": 4, **settings})


def _one_line(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_manifest_records_the_run_and_its_files(tmp_path):
    run_audit(_config(tmp_path / "run", command="memaudit audit optimal ..."))
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["state"] == "complete" and manifest["command"] == "memaudit audit optimal ..."
    assert manifest["inputs"]["train"] == "digits:50" and manifest["inputs"]["n"] == 12
    assert set(manifest["files"]) == {"audit.json", "neighbors.csv", "samples.npz", "report.html"}
    for name, digest in manifest["files"].items():
        assert digest == "sha256:" + hashlib.sha256((tmp_path / "run" / name).read_bytes()).hexdigest()


def test_a_run_that_dies_part_way_leaves_a_folder_marked_incomplete(tmp_path, monkeypatch):
    """A rerun with another --seed that dies after writing samples.npz: the old audit.json and the
    new samples.npz sit side by side, and report and compare refuse the folder."""
    out = tmp_path / "run"
    run_audit(_config(out))
    other = tmp_path / "other"
    run_audit(_config(other))
    old_audit = (out / "audit.json").read_bytes()

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("memaudit.auditing.run.measure_space", die)
    with pytest.raises(KeyboardInterrupt):
        run_audit(_config(out, seed=100))
    monkeypatch.undo()
    assert (out / "audit.json").read_bytes() == old_audit  # the old run's files stay...
    manifest = json.loads((out / "run.json").read_text())  # ...marked as not one run, and why
    assert manifest["state"] == "failed" and manifest["reason"] == "interrupted"
    _one_line(runner.invoke(app, ["report", str(out)]), "an incomplete run (state 'failed': interrupted")
    _one_line(runner.invoke(app, ["compare", str(out), str(other), "--out", str(tmp_path / "cmp")]), "an incomplete run")
    run_audit(_config(out, seed=100))  # the rerun completes the folder
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert runner.invoke(app, ["compare", str(out), str(other), "--out", str(tmp_path / "cmp")]).exit_code == 0


def test_a_second_writer_is_refused_with_one_line(tmp_path):
    out = tmp_path / "run"
    with rundir.claim(out, {}, "memaudit audit first"):
        result = runner.invoke(app, ["audit", "optimal", "--train", "digits:50", "--out", str(out), "--n", "4", "--quiet"])
        _one_line(result, f"--out {out}: another memaudit run (pid {os.getpid()}")
        assert not (out / "audit.json").exists()
    assert runner.invoke(app, ["audit", "optimal", "--train", "digits:50", "--out", str(out), "--n", "4",
                               "--quiet"]).exit_code == 0  # the lock went with its holder


def test_interrupted_writes_leave_nothing_after_a_rerun(tmp_path):
    out = tmp_path / "run"
    run_audit(_config(out))
    tag = f"{os.getpid()}-{writer_tag().split('-')[1]}"  # a live writer's: removed because the run holds the lock
    leftovers = [out / f".audit.json.{tag}-k2j3h4ab.tmp", out / ".cache" / "samples" / "x" / f".seeds-0-12.npz.{tag}-abcdefgh.tmp"]
    mine = out / ".notes.tmp"  # not a name memaudit writes: left alone
    for path in [*leftovers, mine]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    run_audit(_config(out))
    assert not any(p.exists() for p in leftovers) and mine.exists()


def test_stale_temporaries_of_the_shared_cache_are_removed_fresh_ones_kept(tmp_path):
    features = cache_root() / "features"
    features.mkdir(parents=True, exist_ok=True)
    elsewhere = "1-0000beef"  # a writer on another machine: only its age tells
    stale, fresh = features / f".dead.npy.{elsewhere}-aaaaaaaa.tmp", features / f".live.npy.{elsewhere}-bbbbbbbb.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    run_audit(_config(tmp_path / "run", spaces=["pixel-4"], train="digits:60"))  # a new cache entry: cleanup runs
    assert not stale.exists() and fresh.exists()
    fresh.unlink()


# --- every writer claims its folder --------------------------------------------------------------

def _writers(tmp_path: Path, out: Path) -> dict[str, list]:
    """One invocation of every command that writes a folder, into ``out`` (the inputs need not be
    valid: the claim comes first)."""
    (tmp_path / "prompts.txt").write_text("a prompt\n")
    return {
        "audit": ["audit", "optimal", "--train", "digits:50", "--n", "4", "--out", out, "--quiet"],
        "emm": ["emm", "--train", "digits", "--epochs", "1", "--n", "2", "--out", out, "--quiet"],
        "compare": ["compare", tmp_path / "a", tmp_path / "b", "--out", out],
        "dedup": ["dedup", "digits:50", "--out", out, "--quiet"],
        "mia": ["mia", tmp_path / "no-model", "--members", "digits:10", "--nonmembers", "digits:10:rest", "--out", out,
                "--quiet"],
        "extract": ["extract", "optimal", "--train", "digits:50", "--n", "4", "--out", out, "--quiet"],
        "detect": ["detect", tmp_path / "no-pipeline", "--prompts", tmp_path / "prompts.txt", "--out", out, "--quiet"],
        "report": ["report", out],
    }


@pytest.mark.parametrize("command", ["audit", "emm", "compare", "dedup", "mia", "extract", "detect", "report"])
def test_every_writer_is_refused_at_once_by_a_folder_in_use(tmp_path, command):
    out = tmp_path / "run"
    with rundir.claim(out, {}, "memaudit audit first"):
        result = runner.invoke(app, [str(a) for a in _writers(tmp_path, out)[command]])
        _one_line(result, f"{out}: another memaudit run (pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "run.json"]


@pytest.mark.parametrize("command, args, fragment", [
    ("emm", ["emm", "--train", "no-such-set.npz", "--epochs", "1"], "no-such-set.npz: no such file or folder"),
    ("compare", ["compare", "{tmp}/a", "{tmp}/b"], "no audit.json here"),
    ("dedup", ["dedup", "digits:50", "--threshold", "2"], "--threshold 2.0"),
    ("mia", ["mia", "optimal", "--members", "digits:10", "--nonmembers", "digits:10:rest"], "not a trained network"),
    ("extract", ["extract", "optimal", "--n", "1"], "--n 1"),
    ("detect", ["detect", "none", "--prompts", "{tmp}"], "a folder, not a file"),
])
def test_a_run_failing_after_its_claim_says_failed_and_why(tmp_path, command, args, fragment):
    """Issue 28: run.json said ``running`` after an error; it says ``failed`` with the printed line."""
    out = tmp_path / "run"
    result = runner.invoke(app, [str(a).replace("{tmp}", str(tmp_path)) for a in args] + ["--out", str(out)])
    _one_line(result, fragment)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["state"] == "failed" and manifest["command"]
    assert result.stderr.strip() == f"memaudit: error: {manifest['reason']}"
    _one_line(runner.invoke(app, ["report", str(out)]), "state 'failed': ")


def test_a_failed_rerun_that_changed_nothing_keeps_the_earlier_complete_run(tmp_path):
    out = tmp_path / "dedup"
    assert runner.invoke(app, ["dedup", "digits:50", "--out", str(out)]).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("run.json", "dedup.json")}
    _one_line(runner.invoke(app, ["dedup", "digits:50", "--threshold", "nan", "--out", str(out)]), "--threshold nan")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert json.loads(before["run.json"])["files"]["dedup.json"].startswith("sha256:")


def test_report_rewrites_the_page_under_the_lock_and_records_its_digest(tmp_path):
    out = tmp_path / "run"
    run_audit(_config(out))
    assert runner.invoke(app, ["report", str(out), "--redact", "blur"]).exit_code == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["state"] == "complete"
    assert manifest["files"]["report.html"] == "sha256:" + hashlib.sha256((out / "report.html").read_bytes()).hexdigest()


def test_a_claim_ends_the_orphans_an_earlier_run_of_the_folder_left(tmp_path):
    """A child of a killed run still alive (here one that never watches its parent) would hold the
    folders it writes; the next claim of the run folder ends its process group first."""
    import subprocess
    import sys

    from memaudit.children import Children, _start_time

    out = tmp_path / "run"
    out.mkdir()
    orphan = Children(out).start([sys.executable, "-c", "import time; time.sleep(120)"])  # never closed: orphaned
    started = _start_time(orphan.pid)
    assert started is not None and (out / ".children" / str(orphan.pid)).exists()
    with rundir.claim(out, {}, "memaudit emm rerun"):
        assert orphan.wait(timeout=10) == -9
    assert not (out / ".children" / str(orphan.pid)).exists()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # a record whose pid now names another process (another start time): only the record goes
        (out / ".children").mkdir(exist_ok=True)
        (out / ".children" / str(bystander.pid)).write_text("1")
        with rundir.claim(out, {}, "memaudit emm rerun"):
            pass
        assert bystander.poll() is None and not (out / ".children" / str(bystander.pid)).exists()
    finally:
        bystander.kill()
        bystander.wait()
