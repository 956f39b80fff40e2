"""Screenshots of memaudit pages for README.md, taken in headless Debian Chromium.

    python docs/screenshots.py PAGE.html:NAME.png [...] [--height 1600]

Run `make demo` and `memaudit compare` first; the pages are loaded from file URLs, like a reviewer opens them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+", help="PAGE.html:OUTPUT.png")
    parser.add_argument("--height", type=int, default=1600, help="clip each screenshot to this many pixels")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": args.height})
        for spec in args.pages:
            html, _, png = spec.rpartition(":")
            page.goto(Path(html).resolve().as_uri())
            page.screenshot(path=png, clip={"x": 0, "y": 0, "width": 1100, "height": args.height})
            print(png)
        browser.close()


if __name__ == "__main__":
    main()
