"""Screenshots of memaudit's report, compare and emm pages at 1280 px and 390 px, for README.md
and docs/reading-the-report.md, taken in headless Debian Chromium.

    python docs/screenshots.py [--runs DIR] [--n 200] [--out docs]

Makes the pages first unless DIR already holds them: `memaudit demo` (three audits of the digits),
`memaudit compare` of those three (`--allow-mismatch`: one checkpoint was trained on 100 digits),
and a small real `memaudit emm` sweep (tiny U-Nets, |D| 10 to 40, labels none and random:10;
about 15 minutes on a loaded 2-core machine), then renders every page again from its JSON. The
pages are opened from file URLs, as a reviewer opens them; each screenshot is the top of the page,
stored as a 64-colour PNG so the six stay a few hundred kilobytes.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WIDTHS = {"1280": 1280, "390": 390}
# page name -> (path under --runs, screenshot height at 1280 px, at 390 px)
PAGES = {
    "report": ("ddim-digits-100/report.html", 1500, 2400),
    "compare": ("compare/compare.html", 1450, 2000),
    "emm": ("emm/emm.html", 1250, 2000),
}
# emm's default recipe (EDM preconditioning) on a narrower tiny U-Net (width 8) trained 6000 epochs,
# |D| from 10 to 40, fewer samples and snapshots, no convergence extension: a page to show, not a
# measurement (docs/replication.md has those)
EMM_RECIPE = ["--width", "8", "--epochs", "6000", "--start", "10", "--max-size", "40", "--tolerance", "10",
              "--n", "100", "--snapshots", "2", "--extend", "0", "--sweep", "labels=none,random:10"]


def memaudit(*args: str) -> None:
    """Run the memaudit command installed beside this Python."""
    command = [str(Path(sys.executable).with_name("memaudit")), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def make_pages(runs: Path, n: int) -> None:
    """Run what is missing, then render every page again from its JSON with the current templates."""
    demo = ["ddim-digits-1797", "ddim-digits-100", "optimal-digits-1797"]
    if not all((runs / name / "audit.json").is_file() for name in demo):
        memaudit("demo", "--out", str(runs), "--n", str(n), "--quiet")
    if not (runs / "emm" / "emm.json").is_file():
        memaudit("emm", "--train", "digits", "--out", str(runs / "emm"), *EMM_RECIPE, "--quiet")
    memaudit("report", str(runs / "ddim-digits-100"))
    memaudit("compare", *[str(runs / name) for name in demo], "--out", str(runs / "compare"), "--allow-mismatch")
    from memaudit.reports import write_emm_page

    print(write_emm_page(runs / "emm"))


def small_png(png: bytes, path: Path) -> int:
    """Store a screenshot as a 64-colour PNG (flat page colours survive; text stays sharp)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/screenshots"), help="folder of the runs to show")
    parser.add_argument("--n", type=int, default=200, help="samples per demo audit")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for the PNGs")
    args = parser.parse_args()
    os.environ.setdefault("MEMAUDIT_CACHE", str(args.runs / "cache"))
    make_pages(args.runs, args.n)
    from playwright.sync_api import sync_playwright

    total = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for name, (page_path, *heights) in PAGES.items():
            for (suffix, width), height in zip(WIDTHS.items(), heights):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto((args.runs / page_path).resolve().as_uri())
                full = page.evaluate("document.documentElement.scrollHeight")
                png = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": width, "height": min(height, full)})
                path = args.out / f"{name}-{suffix}.png"
                size = small_png(png, path)
                total += size
                print(f"{path} {width}x{min(height, full)} {size // 1024} KB")
                page.close()
        browser.close()
    print(f"total {total // 1024} KB")


if __name__ == "__main__":
    main()
