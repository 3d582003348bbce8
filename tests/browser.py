"""Headless Chromium (Debian's `chromium` package; `make browser` installs it) for the UI checks: a page as a person
sees it, after its scripts ran, as text (the rendered DOM) and as a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "ui"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1000", "--virtual-time-budget=20000"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page_text(url: str, screenshot: str) -> str:
    """The page's visible text after rendering; its screenshot is saved as bench/results/ui/<screenshot>.png."""
    browser = chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{screenshot}.png"
    subprocess.run([browser, *FLAGS, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([browser, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom.stdout, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))
