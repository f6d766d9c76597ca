"""Screenshot of the explorer for the README (docs/images/explorer.png), taken with headless Chromium.

    .venv/bin/python scripts/explorer_screenshot.py demo-out/explorer.html docs/images/explorer.png \
        --search 3 --node features.6:30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser import launch, watched_page  # noqa: E402 - after the checkout root is put on sys.path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page")
    p.add_argument("out")
    p.add_argument("--search", default="3", help="class to select (typed into the search box)")
    p.add_argument("--node", default=None, help="node to click (TAP:INDEX)")
    p.add_argument("--second", default=None, help="class index to compare with")
    p.add_argument("--size", default="1400x860")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    w, h = (int(v) for v in args.size.split("x"))
    with sync_playwright() as pw:
        browser = launch(pw)
        page = watched_page(browser, viewport={"width": w, "height": h}).page
        page.goto(Path(args.page).resolve().as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'")
        page.fill("#search", args.search)
        page.press("#search", "Enter")
        page.fill("#search", "")
        page.wait_for_timeout(300)
        if args.second is not None:
            page.select_option("#second", args.second)
        if args.node:
            x, y = page.evaluate("""(n) => { const s = window.ssaExplorer.sigma;
                const v = s.framedGraphToViewport(s.getNodeDisplayData(n)); const r =
                document.getElementById('graph').getBoundingClientRect(); return [v.x + r.left, v.y + r.top]; }""",
                                 args.node)
            page.mouse.click(x, y)
            page.wait_for_selector("#refs .saliency img")
        page.wait_for_timeout(500)
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
