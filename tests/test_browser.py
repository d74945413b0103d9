"""The client (client/index.html) driven in a real browser: Chromium, through Playwright.

Each test runs the page against a real server process (step02's wsgi.py and step03)
and checks what a user sees: the status line, the message log and the count.
Which Chromium: tools/browser.py ($CHROMIUM, else Playwright's own, else the system's).
Without one every test here is skipped, with the reason and how to get one.
"""

import re
import socket
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CLIENT_FILE_URL = (ROOT / "client" / "index.html").as_uri()
# One Chromium lookup for the tests, `make screenshot` and `make test`'s notice.
sys.path.insert(0, str(ROOT / "tools"))
from browser import CHROMIUM_ARGS, MISSING_CHROMIUM, find_chromium  # noqa: E402

TIMEOUT = 10_000  # milliseconds for the page to show what we expect
RECONNECT_TIMEOUT = 20_000  # the client's backoff caps at 10 s between attempts
# Markup that would run if the page ever used a message as HTML.
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'

pytestmark = pytest.mark.browser


# Module scope, not session: while Playwright's sync API runs, asyncio.run() fails,
# so it must be stopped before any other test module runs.
@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for this module's tests."""
    with sync_playwright() as playwright:
        chromium = find_chromium(playwright)
        if chromium is None:
            pytest.skip(MISSING_CHROMIUM)
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    """A fresh browser profile per test, so no state leaks between tests."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT)
    yield context
    context.close()


@pytest.fixture(params=["step02", "step03"])
def ws_server(request, make_server):
    """step02 (gevent, wsgi.py) and step03 (uvicorn) in turn, each a real process."""
    server = make_server(request.param)
    yield server
    print(server.output())  # pytest shows it when the test failed


def open_client(context, server, endpoint="echo", served=False):
    """Open the client from file:// (pointed at the server) or as served by the server."""
    if served:
        url = f"{server.http_url}/client/?endpoint={endpoint}"
    else:
        url = f"{CLIENT_FILE_URL}?url={server.ws_url}/&endpoint={endpoint}"
    page = context.new_page()
    page.goto(url)
    return page


def connect(page):
    """Press Connect and wait until the status says the socket is open."""
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("#status")).to_contain_text("Connected to", timeout=TIMEOUT)


def join_chat(page):
    """Connect to /chat and return the id the server gave us."""
    connect(page)
    welcome = page.locator("#log li", has_text="You joined as")
    expect(welcome).to_have_count(1, timeout=TIMEOUT)
    return re.match(r"You joined as (\w+)", welcome.text_content()).group(1)


def send(page, text):
    """Type a message and press Send."""
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


def chat_lines(page):
    """The log's chat messages (ours and others'), in order."""
    return page.locator("#log li.sent, #log li.received")


@pytest.mark.parametrize("served", [False, True], ids=["file", "served"])
def test_page_connects(context, ws_server, served):
    page = open_client(context, ws_server, served=served)
    connect(page)
    expect(page.locator("#status")).to_have_text(
        f"Connected to {ws_server.ws_url}/ (echo)", timeout=TIMEOUT)


def test_echo_round_trip_appears_in_the_log(context, ws_server):
    page = open_client(context, ws_server)
    connect(page)
    send(page, "Hello, Falcon! ✓")
    expect(page.locator("#log li.sent")).to_have_text(["→ Hello, Falcon! ✓"], timeout=TIMEOUT)
    expect(page.locator("#log li.received")).to_have_text(["← Hello, Falcon! ✓"], timeout=TIMEOUT)


def test_two_pages_chat(context, ws_server):
    alice = open_client(context, ws_server, endpoint="chat")
    bob = open_client(context, ws_server, endpoint="chat", served=True)
    alice_id = join_chat(alice)
    expect(alice.locator("#count")).to_have_text("1", timeout=TIMEOUT)
    bob_id = join_chat(bob)
    expect(alice.locator("#log li.system").last).to_have_text(
        f"{bob_id} joined (2 connected)", timeout=TIMEOUT)
    for page in (alice, bob):
        expect(page.locator("#count")).to_have_text("2", timeout=TIMEOUT)

    # Bob answers only once Alice's message has reached him: the order is then known.
    send(alice, "Hi Bob")
    expect(chat_lines(bob)).to_have_text([f"{alice_id}: Hi Bob"], timeout=TIMEOUT)
    send(bob, "Hi Alice")
    expect(chat_lines(alice)).to_have_text(
        [f"{alice_id} (you): Hi Bob", f"{bob_id}: Hi Alice"], timeout=TIMEOUT)
    expect(chat_lines(bob)).to_have_text(
        [f"{alice_id}: Hi Bob", f"{bob_id} (you): Hi Alice"], timeout=TIMEOUT)

    bob.get_by_role("button", name="Disconnect", exact=True).click()
    expect(alice.locator("#log li.system").last).to_have_text(
        f"{bob_id} left (1 connected)", timeout=TIMEOUT)
    expect(alice.locator("#count")).to_have_text("1", timeout=TIMEOUT)


def test_markup_in_a_message_is_shown_as_text(context, ws_server):
    sender = open_client(context, ws_server, endpoint="chat")
    reader = open_client(context, ws_server, endpoint="chat")
    join_chat(sender)
    join_chat(reader)
    send(sender, HOSTILE)
    for page in (sender, reader):
        expect(chat_lines(page)).to_have_count(1, timeout=TIMEOUT)
        assert page.locator("#log img, #log script").count() == 0
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert HOSTILE in page.locator("#log").text_content()


@pytest.mark.timeout(90)
def test_reconnects_after_the_server_restarts(context, ws_server):
    page = open_client(context, ws_server, endpoint="chat")
    join_chat(page)
    # The status changes quickly while the server is down: keep every value it shows.
    page.evaluate("""() => {
        window.statuses = [];
        const status = document.getElementById('status');
        new MutationObserver(() => window.statuses.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
    }""")

    ws_server.stop()  # both servers say goodbye with 1001 "going away"
    closed = "Closed (code 1001, reason: server shutting down). Reconnecting in "
    page.wait_for_function(
        "closed => window.statuses.some(s => s.startsWith(closed))", arg=closed, timeout=TIMEOUT)
    expect(page.locator("#log li.system").last).to_have_text(
        "Connection closed (code 1001, reason: server shutting down)", timeout=TIMEOUT)

    ws_server.start()  # the same port: the page must find it again by itself
    expect(page.locator("#status")).to_contain_text("Connected to", timeout=RECONNECT_TIMEOUT)
    expect(page.locator("#log li", has_text="You joined as")).to_have_count(
        2, timeout=TIMEOUT)
    send(page, "back again")
    expect(chat_lines(page)).to_have_text(
        [re.compile(r"\(you\): back again$")], timeout=TIMEOUT)


def test_step01_says_it_has_no_websocket(context, make_server):
    page = open_client(context, make_server("step01"))
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("#status")).to_contain_text(
        "answers HTTP but does not accept WebSocket connections", timeout=TIMEOUT)
    # The words step01's README quotes.
    expect(page.locator("#status")).to_contain_text(
        "step01 has no websocket (run step02 or step03)", timeout=TIMEOUT)
    expect(page.locator("#status")).to_contain_text("Reconnecting in", timeout=TIMEOUT)


def test_no_server_says_nothing_answers(context):
    with socket.socket() as sock:  # a port nobody listens on, held so nobody takes it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        page = context.new_page()
        page.goto(f"{CLIENT_FILE_URL}?url=ws://127.0.0.1:{port}/")
        page.get_by_role("button", name="Connect", exact=True).click()
        expect(page.locator("#status")).to_contain_text(
            f"No server is answering at http://127.0.0.1:{port}/", timeout=TIMEOUT)


def test_enter_in_the_message_box_sends(context, ws_server):
    page = open_client(context, ws_server)
    connect(page)
    page.get_by_label("Message", exact=True).fill("sent with Enter")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator("#log li.received")).to_have_text(["← sent with Enter"], timeout=TIMEOUT)
    expect(page.get_by_label("Message", exact=True)).to_have_value("")


def test_every_input_has_a_label(context):
    page = context.new_page()
    page.goto(CLIENT_FILE_URL)
    labels = {"url": "Server", "endpoint-echo": "Echo (/)", "endpoint-chat": "Chat (/chat)",
              "message": "Message"}
    # A new input without a label in this list fails the test too.
    inputs = page.locator("input").evaluate_all("inputs => inputs.map(i => i.id)")
    assert sorted(inputs) == sorted(labels)
    for input_id, label in labels.items():
        expect(page.get_by_label(label, exact=True)).to_have_attribute("id", input_id)


def tab_through(page, count):
    """Press Tab count times from the top of the page; return the ids focused."""
    page.locator("h1").click()  # start the focus order at the top
    focused = []
    for _ in range(count):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    return focused


def test_tab_order_follows_the_page(context, ws_server):
    page = open_client(context, ws_server)
    # Only one of Connect and Disconnect is enabled at a time; disabled buttons take no focus.
    assert tab_through(page, 5) == ["url", "endpoint-echo", "connect", "message", "send"]
    connect(page)
    assert tab_through(page, 5) == ["url", "endpoint-echo", "disconnect", "message", "send"]


def test_narrow_window_has_no_horizontal_scrollbar(browser, ws_server):
    context = browser.new_context(viewport={"width": 320, "height": 640})
    try:
        page = open_client(context, ws_server)
        connect(page)
        send(page, "a-long-word-that-must-wrap-" * 10)  # the log must wrap it, not widen
        expect(page.locator("#log li.received")).to_have_count(1, timeout=TIMEOUT)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 320
        message_box = page.get_by_label("Message", exact=True)
        for control in (message_box, page.get_by_role("button", name="Send")):
            expect(control).to_be_in_viewport(timeout=TIMEOUT)
            box = control.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 320
    finally:
        context.close()


@pytest.mark.timeout(120)
def test_step05_two_tabs_show_every_message_once_across_a_server_restart(
        context, make_server, redis_server):
    # step05 says "resume" in its welcome: the page resumes from the last event it saw
    # and keeps what is typed while the server is away, until the server acknowledges it.
    server = make_server("step05", env={"REDIS_URL": redis_server.url})
    typer = open_client(context, server, endpoint="chat")
    reader = open_client(context, server, endpoint="chat", served=True)
    join_chat(typer)
    join_chat(reader)
    send(typer, "before the restart")
    expect(chat_lines(reader)).to_have_text([re.compile(r": before the restart$")])

    server.stop()  # 1001: both pages reconnect by themselves
    expect(typer.locator("#status")).to_contain_text("Reconnecting in", timeout=TIMEOUT)
    for text in ("typed while it is down", "and again"):
        send(typer, text)
        expect(typer.locator("#log li.system").last).to_have_text(
            f'Not connected: "{text}" will be sent on reconnecting.', timeout=TIMEOUT)
    server.start()  # the same port; Redis kept the chat
    send(typer, "after the restart")  # sent at once, or queued until the page is back

    texts = ["before the restart", "typed while it is down", "and again", "after the restart"]
    for page, line in ((typer, r"^\w+ \(you\): {}$"), (reader, r"^\w+: {}$")):
        expect(page.locator("#log li", has_text="You joined as")).to_have_count(
            2, timeout=RECONNECT_TIMEOUT)
        expected = [re.compile(line.format(re.escape(text))) for text in texts]
        expect(chat_lines(page)).to_have_text(expected, timeout=TIMEOUT)
    # Nothing comes twice later either.
    typer.wait_for_timeout(1000)
    for page in (typer, reader):
        expect(chat_lines(page)).to_have_count(len(texts))


def test_step04_with_redis_still_chats_in_plain_text(context, make_server, redis_server):
    # No "resume" in step04's welcome: the page sends plain text, as it always did.
    server = make_server("step04-redis", env={"REDIS_URL": redis_server.url})
    alice = open_client(context, server, endpoint="chat")
    bob = open_client(context, server, endpoint="chat", served=True)
    alice_id = join_chat(alice)
    join_chat(bob)
    send(alice, "Hi Bob")
    expect(chat_lines(bob)).to_have_text([f"{alice_id}: Hi Bob"], timeout=TIMEOUT)
    expect(chat_lines(alice)).to_have_text([f"{alice_id} (you): Hi Bob"], timeout=TIMEOUT)
    bob.get_by_role("button", name="Disconnect", exact=True).click()
    send(bob, "not sent")  # no outbox without resume: the text stays in the box
    expect(bob.locator("#log li.system").last).to_have_text("Not connected: message not sent.")
    expect(bob.get_by_label("Message", exact=True)).to_have_value("not sent")
