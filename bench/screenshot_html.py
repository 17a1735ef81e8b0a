"""Open a `verify matrix --html` page in headless Chromium with every network request refused, check
that the heatmap rendered, and save a screenshot (for the README).

    apt-get install -y chromium        # Debian/Ubuntu; the script finds chromium, chromium-browser or chrome
    python bench/screenshot_html.py matrix.html docs/matrix.png [--width 1400] [--height 900]

Exits 1 if no browser is found or the page did not render its heatmap, 0 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--disable-background-networking"]
"""Name resolution fails and any proxied request goes to a closed port: a page that needed the
network would render without it."""


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def chromium(executable: str, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *OFFLINE, *flags], capture_output=True, text=True,
                          timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    executable = browser()
    if executable is None:
        print(f"no headless browser found ({', '.join(BROWSERS)}); install chromium (apt-get install -y chromium)")
        return 1
    url = args.page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        dom = chromium(executable, Path(profile), "--dump-dom", url).stdout
        if 'class="heat"' not in dom or "<td" not in dom:
            print(f"{args.page}: the heatmap did not render in {executable}")
            return 1
        args.png.parent.mkdir(parents=True, exist_ok=True)
        chromium(executable, Path(profile), f"--window-size={args.width},{args.height}",
                 f"--screenshot={args.png.resolve()}", url)
    if not args.png.is_file():
        print(f"{executable} wrote no screenshot")
        return 1
    version = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"rendered {args.page} offline in {version}: {dom.count('<tr')} table rows; screenshot {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
