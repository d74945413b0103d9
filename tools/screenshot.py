"""Write docs/client.png: two chat tabs side by side, talking through step03.

Run with `make screenshot`. Needs a Chromium: tools/browser.py says which, or how to get one.
"""

import base64
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from browser import CHROMIUM_ARGS, MISSING_CHROMIUM, find_chromium  # noqa: E402  (tools/browser.py)

from conftest import SERVERS, Server  # noqa: E402  (the tests' way to run a step)

OUTPUT = ROOT / "docs" / "client.png"
TIMEOUT = 10_000  # milliseconds
CONVERSATION = [  # (tab, text), in order
    (0, "Hello from the page opened as a file!"),
    (1, "Hi! This tab is the copy the server serves at /client/."),
    (0, "Markup stays text: <b>not bold</b>"),
    (1, "Both tabs see every message, in order."),
]
SIDE_BY_SIDE = """<!doctype html><meta charset="utf-8">
<style>
  body {{ margin: 0; padding: 16px; display: flex; gap: 16px; background: #d8d8d4;
         font: 14px system-ui, sans-serif; }}
  figure {{ margin: 0; }}
  img {{ display: block; border: 1px solid #999; }}
  figcaption {{ padding: 0 0 6px; color: #333; }}
</style>
<figure><figcaption>{caption0}</figcaption><img src="data:image/png;base64,{image0}"></figure>
<figure><figcaption>{caption1}</figcaption><img src="data:image/png;base64,{image1}"></figure>
"""


def chat_tabs(context, server):
    """Open the client twice: from file:// and as served by step03; join the chat in both."""
    file_url = (ROOT / "client" / "index.html").as_uri()
    urls = [f"{file_url}?url={server.ws_url}/&endpoint=chat",
            f"{server.http_url}/client/?endpoint=chat"]
    tabs = []
    for url in urls:
        tab = context.new_page()
        tab.goto(url)
        tab.get_by_role("button", name="Connect", exact=True).click()
        expect(tab.locator("#status")).to_contain_text("Connected to", timeout=TIMEOUT)
        tabs.append(tab)
    for tab in tabs:
        expect(tab.locator("#count")).to_have_text("2", timeout=TIMEOUT)
    return tabs


def converse(tabs):
    """Send the conversation, waiting for each message to reach both tabs."""
    for number, (sender, text) in enumerate(CONVERSATION, start=1):
        tabs[sender].get_by_label("Message", exact=True).fill(text)
        tabs[sender].get_by_label("Message", exact=True).press("Enter")
        for tab in tabs:
            lines = tab.locator("#log li.sent, #log li.received")
            expect(lines).to_have_count(number, timeout=TIMEOUT)
    tabs[0].get_by_label("Message", exact=True).fill("Typing a reply…")
    tabs[1].get_by_label("Message", exact=True).blur()  # only one tab can have the focus


def main():
    """Start step03, chat in two tabs, and save both tabs as one PNG."""
    with sync_playwright() as playwright:
        chromium = find_chromium(playwright)
        if chromium is None:
            sys.exit(MISSING_CHROMIUM)
        server = Server("step03", *SERVERS["step03"]).start()
        try:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(viewport={"width": 520, "height": 800})
            tabs = chat_tabs(context, server)
            converse(tabs)
            images = [base64.b64encode(tab.screenshot()).decode() for tab in tabs]
            sheet = context.new_page()
            sheet.set_viewport_size({"width": 1092, "height": 860})
            sheet.set_content(SIDE_BY_SIDE.format(
                caption0="Tab 1: client/index.html opened from file://",
                caption1=f"Tab 2: served by step03 at {server.http_url}/client/",
                image0=images[0], image1=images[1]))
            OUTPUT.parent.mkdir(exist_ok=True)
            sheet.screenshot(path=OUTPUT, full_page=True)
            browser.close()
        finally:
            server.stop()
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
