"""The import layers of docs/architecture.md hold, and memaudit has no import cycle at all.

import-linter (pyproject.toml's contracts, run by `make test`) checks the layers and cycles between
sibling modules; this test also checks cycles between a package and its own modules, which those
contracts do not see, and runs the contracts so that a bare `pytest` checks them too. Both read a
view of the installed layout: memaudit/ with adapters/ and reports/ where `pip install .` puts them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def view(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("import-view")
    package = folder / "memaudit"
    package.mkdir()
    for entry in (ROOT / "memaudit").iterdir():
        (package / entry.name).symlink_to(entry)
    for name in ("adapters", "reports"):
        (package / name).symlink_to(ROOT / name)
    return folder


def _cycles(view: Path) -> tuple[set[str], list[list[str]]]:
    """The modules grimp finds in the view, and its import cycles (strongly connected components),
    computed in a fresh process whose ``memaudit`` is the view's (this one has imported the repository's)."""
    pytest.importorskip("grimp")
    code = ("import json, grimp, networkx as nx\n"
            "graph = grimp.build_graph('memaudit', cache_dir=None)\n"
            "edges = nx.DiGraph([(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)])\n"
            "cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]\n"
            "print(json.dumps({'modules': sorted(graph.modules), 'cycles': sorted(cycles)}))\n")
    outcome = subprocess.run([sys.executable, "-c", code], cwd=view, capture_output=True, text=True, check=True)
    found = json.loads(outcome.stdout)
    return set(found["modules"]), found["cycles"]


def test_no_import_cycle_anywhere(view):
    modules, cycles = _cycles(view)
    assert {"memaudit.adapters.base", "memaudit.reports.plots", "memaudit.auditing.run"} <= modules
    assert cycles == []


def test_layer_contracts_hold(view):
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    outcome = subprocess.run([str(lint), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], cwd=view,
                             capture_output=True, text=True)
    assert outcome.returncode == 0, outcome.stdout[-4000:] + outcome.stderr[-2000:]
    assert "2 kept, 0 broken" in outcome.stdout


def test_a_cycle_would_be_found(view, tmp_path):
    """The cycle check sees an import inside a function (a deferred import is still an import)."""
    copy = tmp_path / "memaudit"
    shutil.copytree(view / "memaudit", copy, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    storage = copy / "storage.py"
    storage.write_text(storage.read_text() + "\n\ndef _late():\n    from memaudit import outputs  # noqa: F401\n")
    _, cycles = _cycles(tmp_path)
    assert cycles == [["memaudit.outputs", "memaudit.storage"]]
