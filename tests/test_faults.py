"""Fault injection: kill -9 at every write point, concurrent audits on one cache, a full disk, a
read-only --out, hostile file names and links. Every case ends in the right numbers or one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.reports import render_report

runner = CliRunner()
RUNNER = Path(__file__).parent / "fault_runner.py"
AUDIT = ["audit", "optimal", "--train", "digits:100", "--n", "300", "--steps", "4", "--space", "pixel-4", "--quiet"]
OUTPUTS = ("samples.npz", "neighbors.csv", "audit.json", "report.html")


def run_faulty(args, cache: Path, timeout=300, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MEMAUDIT_CACHE": str(cache), **env}
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def run_here(args, cache: Path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(cache))
    return runner.invoke(app, [str(a) for a in args])


def without_timings(audit: dict) -> dict:
    provenance = {k: v for k, v in audit["provenance"].items() if k not in ("created", "timings")}
    return {**audit, "provenance": provenance}


def assert_same_run(run: Path, reference: Path) -> None:
    """Byte for byte, less the run's timings (and the report's provenance, rendered from them)."""
    for name in ("samples.npz", "neighbors.csv"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    audit, expected = (json.loads((d / "audit.json").read_text()) for d in (run, reference))
    assert without_timings(audit) == without_timings(expected)
    expected["provenance"] = audit["provenance"]
    assert (run / "report.html").read_text() == render_report(expected, "none")
    assert json.loads((run / "run.json").read_text())["state"] == "complete"


def leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if p.name.endswith(".tmp") or p.name.endswith(".chunks") or p.name.startswith(".staging-")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and a complete run of other seeds to start each kill from (the
    killed run overwrites it part-way: the mixed folder)."""
    from _pytest.monkeypatch import MonkeyPatch

    base = tmp_path_factory.mktemp("reference")
    with MonkeyPatch.context() as monkeypatch:
        assert run_here([*AUDIT, "--out", base / "run"], base / "cache", monkeypatch).exit_code == 0
        assert run_here([*AUDIT, "--seed", "5000", "--out", base / "old"], base / "cache", monkeypatch).exit_code == 0
    return base


# point: (where the process dies, FAULT_KILL_AT)
KILL_POINTS = {
    "manifest (start)": r"/run\.json$#1",
    "sample shard": r"/seeds-256-44\.npz$",
    "feature chunk": r"\.chunks/rows-",
    "feature cache file": r"/features/[0-9a-f]{64}\.npy$",
    "search": "search",
    "samples.npz": r"/samples\.npz$",
    "neighbors.csv": r"/neighbors\.csv$",
    "audit.json": r"/audit\.json$",
    "report.html": r"/report\.html$",
    "manifest (complete)": r"/run\.json$#2",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, reference, monkeypatch, point):
    out, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(reference / "old", out)
    old_audit = (out / "audit.json").read_bytes()
    killed = run_faulty([*AUDIT, "--out", out], cache, FAULT_KILL_AT=KILL_POINTS[point])
    assert killed.returncode == -9, killed.stderr[-2000:]

    # The folder after the kill: the old complete run, or marked incomplete (report and compare refuse).
    state = json.loads((out / "run.json").read_text())["state"]
    report = runner.invoke(app, ["report", str(out)])
    if point == "manifest (start)":
        assert state == "complete" and (out / "audit.json").read_bytes() == old_audit  # untouched old run
        assert report.exit_code == 0
    else:
        assert state == "running"
        assert report.exit_code == 2 and "an incomplete run" in report.stderr and len(report.stderr.splitlines()) == 1

    rerun = run_here([*AUDIT, "--out", out], cache, monkeypatch)
    assert rerun.exit_code == 0, rerun.output
    assert_same_run(out, reference / "run")
    assert leftovers(out, cache) == []


def test_two_audits_filling_one_feature_cache(tmp_path, reference, monkeypatch):
    """The second audit reaches the cache after the first published it and removed the chunks it
    was about to read (it used to die with FileNotFoundError on rows-*.npy)."""
    np.savez(tmp_path / "samples.npz", images=np.load(reference / "run" / "samples.npz")["images"])
    args = ["audit", "--samples", tmp_path / "samples.npz", "--train", "digits:100", "--space", "pixel-4", "--quiet"]
    sync, cache = tmp_path / "sync", tmp_path / "sync" / "cache"
    sync.mkdir()
    env = {"FAULT_SYNC": str(sync), "FAULT_CHUNK_ROWS": "32"}
    environment = {**os.environ, "MEMAUDIT_CACHE": str(cache), **env}
    processes = [subprocess.Popen([sys.executable, str(RUNNER), *map(str, [*args, "--out", tmp_path / role])],
                                  env={**environment, "FAULT_HOLD": role}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for role in ("first", "second")]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in results]
    assert run_here([*args, "--out", tmp_path / "alone"], tmp_path / "fresh-cache", monkeypatch).exit_code == 0
    alone = json.loads((tmp_path / "alone" / "audit.json").read_text())
    alone.pop("provenance")  # the command line differs: each run names its own --out
    for role in ("first", "second"):
        audit = json.loads((tmp_path / role / "audit.json").read_text())
        audit.pop("provenance")
        assert audit == alone
        assert (tmp_path / role / "neighbors.csv").read_bytes() == (tmp_path / "alone" / "neighbors.csv").read_bytes()
    assert leftovers(cache) == []


# --- full disk, read-only --out -----------------------------------------------------------------


def test_full_disk_is_one_line_and_keeps_the_earlier_run(tmp_path, reference, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor writes")
    out, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(reference / "old", out)
    old = {name: (out / name).read_bytes() for name in ("audit.json", "report.html")}
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while audit.json is written
        if ".audit.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = run_here([*AUDIT, "--out", out], cache, monkeypatch)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out / 'audit.json'}: No space left on device (ENOSPC)" in lines[0]
    assert {name: (out / name).read_bytes() for name in old} == old  # nothing lost
    assert json.loads((out / "run.json").read_text())["state"] == "running" and leftovers(out) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run_here([*AUDIT, "--out", out], cache, monkeypatch).exit_code == 0
    assert_same_run(out, reference / "run")


def _read_only_runner(tmp_path):
    """A command prefix and a --out on a read-only filesystem (a read-only tmpfs in a private mount
    namespace when root; a folder without write permission otherwise)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return None, folder / "run"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("root without mount namespaces: no read-only filesystem to try")
    mount = tmp_path / "ro"
    mount.mkdir()
    return mount, mount / "run"


def test_read_only_out_is_one_line(tmp_path):
    mount, out = _read_only_runner(tmp_path)
    args = " ".join([sys.executable, str(RUNNER), *AUDIT[:4], "--n", "8", "--out", str(out), "--quiet"])
    if mount is not None:
        command = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {mount} && exec {args}"]
    else:
        command = ["sh", "-c", f"exec {args}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MEMAUDIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0], result.stderr
    assert "Read-only file system (EROFS)" in lines[0] or "Permission denied (EACCES)" in lines[0]


# --- file names and links -------------------------------------------------------------------


def _write_png(path, image):
    from PIL import Image

    Image.fromarray(image[..., 0]).save(path, format="PNG")


def test_a_training_file_name_that_is_not_utf8_loads(tmp_path, monkeypatch):
    from memaudit.data import load_image_set

    digits = load_image_set("digits:20").images
    folder = tmp_path / "train"
    folder.mkdir()
    for i, image in enumerate(digits):
        name = (b"caf\xe9-%02d.png" % i) if i < 5 else (b"ok-%02d.png" % i)  # Latin-1, not UTF-8
        _write_png(os.fsdecode(os.fsencode(folder) + b"/" + name), image)
    samples = os.fsdecode(os.fsencode(tmp_path) + b"/\xff-samples.npz")
    np.savez(samples, images=digits[:6])
    result = run_here(["audit", "--samples", samples, "--train", folder, "--out", tmp_path / "run", "--quiet"],
                      tmp_path / "cache", monkeypatch)
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["memorization_ratio"] == 1.0  # the samples are training images
    ids = {n["id"] for f in audit["findings"] for n in f["neighbors"]}
    assert os.fsdecode(b"caf\xe9-00.png") in ids  # the exact name, kept as JSON escapes
    (tmp_path / "run" / "report.html").read_bytes().decode("utf-8")  # the page stays valid UTF-8


def test_links_and_metadata_outside_the_folder_share_one_policy(tmp_path, monkeypatch):
    digits = load_digits_images()
    outside = tmp_path / "private.png"
    _write_png(outside, digits[0])
    folder = tmp_path / "train"
    folder.mkdir()
    for i, image in enumerate(digits[1:6]):
        _write_png(folder / f"{i}.png", image)
    (folder / "inside-link.png").symlink_to(folder / "0.png")  # within the folder: followed
    args = ["audit", "--samples", f"npz:{tmp_path / 's.npz'}", "--train", folder, "--out", tmp_path / "run", "--quiet"]
    np.savez(tmp_path / "s.npz", images=digits[1:3])
    assert run_here(args, tmp_path / "cache", monkeypatch).exit_code == 0
    (folder / "z-link.png").symlink_to(outside)
    result = run_here(args, tmp_path / "cache", monkeypatch)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{folder / 'z-link.png'}: a link to {outside}, outside {folder}" in result.stderr
    (folder / "z-link.png").unlink()
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "../private.png", "text": "x"}) + "\n")
    result = run_here(args, tmp_path / "cache", monkeypatch)
    assert result.exit_code == 2 and "points outside" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def load_digits_images():
    from memaudit.data import load_image_set

    return load_image_set("digits:20").images
