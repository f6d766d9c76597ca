"""Headless Chromium for the explorer's tests and benchmark: Playwright for Python driving Debian's
``chromium`` (no browser download). Every request that would leave file:// or 127.0.0.1 is aborted
and recorded, console errors and page errors are recorded, so tests can assert there were none.

Also a pytest plugin, registered by the repository's root ``conftest.py`` (``pytest_plugins``): its ``browser``
fixture (one Chromium per test module) reaches every test and benchmark by name, with no import (importing a
fixture into a test module trips ruff's F811 in every test that takes it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL = ("file://", "data:", "blob:", "http://127.0.0.1:", "about:")

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} is absent: install the Debian package `chromium` "
                                           "(.ci/run does) to run the explorer in a real browser")


def launch(playwright: Any):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the test module (tests that take it are marked :data:`needs_chromium`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@dataclass
class Watched:
    """A page with what it did: requests, blocked requests, console errors and page errors."""

    page: Any
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.blocked, f"requests left the machine: {self.blocked[:5]}"
        assert all(u.startswith(LOCAL) for u in self.requests), [u for u in self.requests if not u.startswith(LOCAL)]
        assert not self.errors, f"console errors: {self.errors[:5]}"


def watched_page(browser: Any, **options: Any) -> Watched:
    context = browser.new_context(accept_downloads=True, viewport=options.pop("viewport", {"width": 1400,
                                                                                           "height": 850}),
                                  **options)
    page = context.new_page()
    w = Watched(page)

    def route(r):
        url = r.request.url
        if url.startswith(LOCAL):
            r.continue_()
        else:
            w.blocked.append(url)
            r.abort()

    context.route("**/*", route)
    page.on("request", lambda req: w.requests.append(req.url))
    page.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: w.errors.append(f"page error: {e}"))
    return w
