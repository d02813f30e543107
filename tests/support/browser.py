"""The browser the studio's tests drive: Debian's Chromium through Playwright, and what a page reports."""

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, ViewportSize

from tests.support.infra_files import ROOT

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
"""The system's Chromium (`make browser-tools` installs Debian's): Playwright's own download is not
reachable from here, so it drives this one."""

ARTIFACTS_DIR = ROOT / "test-artifacts" / "studio"
"""Screenshots of the pages of failed tests, and of the studio as the README shows it (ignored by git)."""

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class WatchedPage:
    """A page and what went wrong in it: scripts that threw, and anything its security policy refused."""

    page: Page
    page_errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def watch(self) -> None:
        """Start recording."""
        self.page.on("pageerror", self._on_page_error)
        self.page.on("console", self._on_console)

    def _on_page_error(self, error: Error) -> None:
        self.page_errors.append(str(error))

    def _on_console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.refused.append(message.text)


class PageFactory:
    """Opens watched pages in fresh browser contexts (no cookies or storage shared between tests)."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.pages: list[WatchedPage] = []

    def open(self, url: str, viewport: ViewportSize = DESKTOP, **options: Any) -> Page:
        """A new page at `url`, in a context of its own with downloads allowed."""
        context = self.browser.new_context(viewport=viewport, accept_downloads=True, **options)
        watched = WatchedPage(context.new_page())
        watched.watch()
        self.pages.append(watched)
        watched.page.goto(url)
        return watched.page

    def screenshot_all(self, name: str) -> list[Path]:
        """Full-page screenshots of every open page, named after `name`."""
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, watched in enumerate(self.pages):
            if watched.page.is_closed():
                continue
            path = ARTIFACTS_DIR / f"{artifact_name(name)}-{index}.png"
            watched.page.screenshot(path=path, full_page=True)
            paths.append(path)
        return paths

    def close(self) -> None:
        """Close every context opened."""
        for watched in self.pages:
            watched.page.context.close()


def artifact_name(node_id: str) -> str:
    """A test id as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node_id).strip("_")


AUDIO_LOADED = "() => { const a = document.getElementById('audio'); return a.readyState >= 1 && a.duration > 0; }"
AUDIO_PLAYING = "() => { const a = document.getElementById('audio'); return !a.paused && a.currentTime > 0; }"
WAVEFORM_INK = """() => {
  const canvas = document.getElementById('waveform');
  if (canvas.dataset.state !== 'drawn' || canvas.width === 0) return 0;
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) ink++;
  return ink;
}"""
"""How many pixels of the waveform are painted (0 until it is drawn)."""
