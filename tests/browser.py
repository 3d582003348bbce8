"""Headless Chromium (Debian's `chromium` package; `make browser` installs it) for the UI checks: a page as a person
sees it, after its scripts ran, as text (the rendered DOM) and as a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "ui"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1000"]
BUDGETS_MS = (20_000, 45_000, 90_000)  # virtual time a page gets to load, longer each try (a busy machine is slow)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page_text(url: str, screenshot: str, expect: tuple[str, ...] = ()) -> str:
    """The page's visible text after rendering, as a person waiting for it would see it: rendered again with more
    time while a string in `expect` is missing. The screenshot of the last render is bench/results/ui/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for budget in BUDGETS_MS:
        flags = [chromium(), *FLAGS, f"--virtual-time-budget={budget}"]
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=300, check=True)
        body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom.stdout, flags=re.S | re.I)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))
        if all(part in text for part in expect):
            break
    shot = SCREENSHOTS / f"{screenshot}.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=300, check=True)
    return text
