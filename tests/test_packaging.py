"""`pip install .` must carry adapters/ and reports/ (mapped into the package) and the demo assets."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_top_level_folders_into_the_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("memaudit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("memaudit/adapters/optimal.py", "memaudit/adapters/diffusers_pipeline.py",
                     "memaudit/features/pixel.py", "memaudit/formats/decode.py", "memaudit/formats/edm_zip.py",
                     "memaudit/denoisers/preconditioning.py", "memaudit/denoisers/unet.py", "memaudit/retraining/run.py",
                     "memaudit/reports/__init__.py", "memaudit/reports/templates/report.html.j2",
                     "memaudit/assets/digits-ddim/model_index.json",
                     "memaudit/assets/digits-ddim/unet/diffusion_pytorch_model.safetensors"):
        assert required in names, required
    # every module of the source tree, in whichever package of pyproject.toml's list it lives
    sources = [f"memaudit/{path.relative_to(ROOT / 'memaudit').as_posix()}" for path in (ROOT / "memaudit").rglob("*.py")]
    sources += [f"memaudit/{folder}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder in ("adapters", "reports") for path in (ROOT / folder).rglob("*.py")]
    assert sorted(set(sources) - names) == []
    # the licence: Apache-2.0 as an SPDX expression, and its text in the wheel
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "memaudit = memaudit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
