"""Find the Chromium that the browser tests and `make screenshot` drive through Playwright.

    python tools/browser.py    # prints the Chromium's path, or how to get one (exit status 1)

The order, first found wins:
1. $CHROMIUM, when set: an explicit choice beats any guess. If it names nothing that
   runs, there is no Chromium: falling back would test a browser nobody asked for.
2. Playwright's own, where `python -m playwright install chromium` has put one.
3. The system's: Debian's /usr/bin/chromium, Ubuntu's chromium-browser, or chromium on PATH.
"""

import os
import shutil
import sys
from pathlib import Path

MISSING_CHROMIUM = (
    "no Chromium found: install one with `apt-get install chromium`, or with "
    "`.venv/bin/python -m playwright install chromium` where downloads are allowed; "
    "$CHROMIUM, when set, must name one that runs"
)
# Always without the sandbox: Chromium will not start with it as root (CI, containers),
# and it only ever opens this project's own pages.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
# Paths or commands on PATH, tried in turn.
SYSTEM_CHROMIUMS = ["/usr/bin/chromium", "chromium-browser", "chromium"]


def playwright_chromium(playwright=None):
    """The Chromium that `playwright install chromium` downloaded, if it is there.

    Pass a running Playwright to ask it; otherwise one is started just for the question.
    """
    if playwright is not None:
        path = playwright.chromium.executable_path
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:  # only requirements.txt installed
            return None
        with sync_playwright() as started:
            path = started.chromium.executable_path
    # Playwright names the path it would download to, whether or not it did.
    return path if path and Path(path).is_file() else None


def find_chromium(playwright=None):
    """The path of the Chromium to launch, or None when there is none (see the order above)."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    found = playwright_chromium(playwright)
    if found:
        return found
    for name in SYSTEM_CHROMIUMS:
        found = shutil.which(name)
        if found:
            return found
    return None


if __name__ == "__main__":
    chromium = find_chromium()
    print(chromium or MISSING_CHROMIUM)
    sys.exit(0 if chromium else 1)
