"""Headless Chromium for tests of pages as a person sees them: the page's own script writes what it measured
after load (widths, images decoded, order of rows) as data-* attributes on <body>; `body_state` reads them
from the DOM Chromium dumps, `screenshot` renders a PNG."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (install.sh installs it with apt-get)"
)


def _flags(profile: Path, width: int, height: int) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=10000",
    ]


def dump_dom(url: str, profile: Path, width: int = 1400, height: int = 900) -> str:
    """The page's DOM after its scripts ran (a fresh window of `width` x `height` px)."""
    browser = chromium()
    assert browser is not None
    proc = subprocess.run(
        [browser, *_flags(profile, width, height), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout


def body_state(dom: str) -> dict[str, str]:
    """The data-* attributes the page's script set on <body> (`data-page-width` -> `page-width`)."""
    match = re.search(r"<body([^>]*)>", dom)
    assert match, dom[:2000]
    return {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', match.group(1))}


def screenshot(url: str, path: Path, profile: Path, width: int = 1400, height: int = 1000) -> Path:
    """A PNG of the page as a `width` px window shows it; also copied to $VISA_SCREENSHOTS when that is set
    (a folder CI can keep), so the picture is seen, not only checked."""
    browser = chromium()
    assert browser is not None
    subprocess.run(
        [browser, *_flags(profile, width, height), f"--screenshot={path}", url],
        capture_output=True,
        timeout=120,
    )
    keep = os.environ.get("VISA_SCREENSHOTS")
    if keep and path.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path
