"""step06: who is on the socket (login, session cookie, Origin), limits, and wss:// through nginx.

Every server is a real process: two app processes, a real redis-server and Debian's nginx
on free loopback ports, with a certificate from a CA made for the test (trustme). The
clients are the `websockets` library over TLS, and urllib for the login.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import (
    ROOT,
    STARTUP_TIMEOUT,
    TIMEOUT,
    add_user,
    free_port,
    load_module,
    log_in,
    receive_event,
    session_cookie,
)

stack = load_module("step06_stack", "step06_production/stack.py")
NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get "
                                 "install nginx)")
SESSION_CHECK = "0.5"  # seconds between the app's checks of its sockets' sessions


class Nginx:
    """Debian's nginx on free ports, in the foreground, its files in a folder of the test's."""

    def __init__(self, run_dir, https_port, app_ports, read_timeout="60s"):
        self.run_dir = run_dir
        self.https_port, self.http_port = https_port, free_port()
        self.ca = stack.make_tls(run_dir)
        stack.nginx_conf(run_dir, self.https_port, self.http_port, app_ports, read_timeout)
        self.origin = f"https://localhost:{self.https_port}"
        self.tls = ssl.create_default_context(cafile=str(self.ca))
        self.log = open(run_dir / "nginx.out", "w+b")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(stack.nginx_command(run_dir), stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert self.process.poll() is None, f"nginx exited:\n{self.output()}"
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen in time"
                time.sleep(0.05)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        """Stop nginx, its workers included; return whether any had to be killed."""
        # SIGTERM: nginx's fast shutdown, which stops the workers too. SIGKILL to the
        # master alone would leave its workers running, holding the ports.
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.log.close()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its process group: anything left
        except ProcessLookupError:
            return False  # nothing was left
        return True


@pytest.fixture
def start_stack(request, make_server, redis_server, tmp_path):
    """Start step06 as `make step06` does: two app processes behind nginx, over TLS.

    With proxy=False, one app process and no nginx (the app reached directly).
    """
    started = []

    def start(processes=2, proxy=True, read_timeout="60s", **env):
        https_port = free_port()
        env = {"REDIS_URL": redis_server.url, "SESSION_CHECK": SESSION_CHECK,
               "ALLOWED_ORIGINS": f"https://localhost:{https_port}", **env}
        apps = [make_server("step06", env=env) for _ in range(processes)]
        if not proxy:
            return apps
        nginx = Nginx(tmp_path, https_port, [app.port for app in apps], read_timeout)
        started.append(nginx)
        return apps, nginx

    yield start
    for nginx in started:
        problems = [line for line in nginx.output().splitlines()
                    if "[emerg]" in line or "[alert]" in line or "[crit]" in line]
        outlived = nginx.stop()
        assert not problems, "\n".join(problems)
        assert not outlived, "an nginx process outlived its master's shutdown"


def user_cookie(app, name, url=None, **kwargs):
    """A new user, logged in (through nginx when url says so); its session cookie."""
    return session_cookie(log_in(url or app.http_url, name, add_user(app, name), **kwargs))


def open_wss(nginx, path, cookie, **kwargs):
    """A WebSocket through nginx over TLS, as a browser on the allowed origin opens it."""
    return connect(f"wss://localhost:{nginx.https_port}{path}", ssl=nginx.tls,
                   origin=nginx.origin, additional_headers={"Cookie": cookie},
                   open_timeout=TIMEOUT, close_timeout=TIMEOUT, **kwargs)


def open_direct(app, path="/chat", cookie=None, **kwargs):
    """A WebSocket to one app process directly, without nginx."""
    headers = {"Cookie": cookie} if cookie else {}
    return connect(app.ws_url + path, additional_headers=headers,
                   open_timeout=TIMEOUT, close_timeout=TIMEOUT, **kwargs)


def refused_status(open_socket, *args, **kwargs):
    """The HTTP status of a refused handshake, open_socket(*args, **kwargs); fail if accepted."""
    with pytest.raises(InvalidStatus) as raised:
        open_socket(*args, **kwargs).close()
    return raised.value.response.status_code


def closed_with(ws):
    """Read until the server closes; return its close frame's (code, reason)."""
    with pytest.raises(ConnectionClosed):
        for _ in range(1000):
            ws.recv(timeout=TIMEOUT)
    assert ws.protocol.close_rcvd is not None, "no close frame: the connection was cut"
    return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason


def until(ws, kind):
    """Receive events until one of this type; return it."""
    for _ in range(100):
        event = receive_event(ws)
        if event["type"] == kind:
            return event
    pytest.fail(f"no {kind} event in 100")


def get(url, cookie=None, context=None):
    """GET a URL; return (status, headers, body), errors included, redirects not followed."""
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    opener = urllib.request.build_opener(
        NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# ---- Who is on the socket ----

@needs_nginx
@pytest.mark.timeout(90)
def test_login_through_nginx_sets_a_secure_httponly_lax_cookie(start_stack):
    (app, _), nginx = start_stack()
    password = add_user(app, "alice")
    response = log_in(nginx.origin, "alice", password, headers={"Origin": nginx.origin},
                      context=nginx.tls)
    assert response.status == 303
    assert response.headers["Location"] == "/client/?endpoint=chat"
    attributes = {part.strip().split("=")[0].lower()
                  for part in response.headers["Set-Cookie"].split(";")[1:]}
    # Secure: nginx said https (X-Forwarded-Proto) and uvicorn believed its proxy.
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= attributes
    assert "SameSite=Lax" in response.headers["Set-Cookie"]
    assert "Max-Age=28800" in response.headers["Set-Cookie"]  # SESSION_TTL, 8 hours
    cookie = session_cookie(response)
    status, _, body = get(nginx.origin + "/session", cookie, nginx.tls)
    assert (status, json.loads(body)) == (200, {"user": "alice"})
    # A wrong password, an unknown user, a foreign page's form: no cookie.
    for name, secret, origin in (("alice", "wrong", nginx.origin), ("mallory", password,
                                 nginx.origin), ("alice", password, "https://evil.example")):
        refused = log_in(nginx.origin, name, secret, headers={"Origin": origin},
                         context=nginx.tls)
        assert refused.status in (401, 403) and "Set-Cookie" not in refused.headers
    status, _, body = get(nginx.origin + "/session", None, nginx.tls)
    assert (status, json.loads(body)) == (401, {"user": None, "login": "/login"})


@pytest.mark.timeout(60)
def test_the_handshake_needs_a_live_session(start_stack):
    [app] = start_stack(processes=1, proxy=False, SESSION_TTL="2")
    response = log_in(app.http_url, "alice", add_user(app, "alice"))
    assert "Secure" not in response.headers["Set-Cookie"]  # plain http://: no TLS to ask for
    cookie = session_cookie(response)
    with open_direct(app, "/chat", cookie) as ws:
        assert receive_event(ws)["id"].startswith("alice.")
    forged = "session=" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    # Falcon refuses before the accept; uvicorn answers every such refusal with 403.
    for bad in (None, forged, "session=", cookie + "x"):
        for path in ("/chat", "/"):
            assert refused_status(open_direct, app, path, bad) == 403, (bad, path)
    time.sleep(2.5)  # past SESSION_TTL: the session has expired
    assert refused_status(open_direct, app, "/chat", cookie) == 403
    assert get(app.http_url + "/session", cookie)[0] == 401


@pytest.mark.timeout(60)
def test_a_valid_cookie_from_a_foreign_origin_is_refused(start_stack):
    # Cross-site WebSocket hijacking: the browser attaches the cookie to a handshake
    # that evil.example's page opens. The Origin header is what gives it away.
    [app] = start_stack(processes=1, proxy=False, ALLOWED_ORIGINS="https://chat.example")
    cookie = user_cookie(app, "alice")
    with open_direct(app, "/chat", cookie, origin="https://chat.example") as ws:
        assert receive_event(ws)["type"] == "welcome"
    for origin in ("https://evil.example", "http://chat.example", "null"):
        assert refused_status(open_direct, app, "/chat", cookie, origin=origin) == 403
    assert "WebSocket /chat\" 403" in app.output()


@pytest.mark.timeout(60)
def test_logout_closes_the_sessions_sockets_in_every_process(start_stack):
    first, second = start_stack(proxy=False)
    cookie, other = user_cookie(first, "alice"), user_cookie(first, "bob")
    with open_direct(first, "/chat", cookie) as here, \
            open_direct(second, "/chat", cookie) as there, \
            open_direct(second, "/chat", other) as bob:
        for ws in (here, there, bob):
            until(ws, "welcome")
        request = urllib.request.Request(first.http_url + "/logout", method="POST",
                                         headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert response.status == 204
            assert response.headers["Set-Cookie"].startswith('session="";')  # forgotten
        # At once where the logout came; at the next session check elsewhere.
        assert closed_with(here) == (1008, "logged out")
        assert closed_with(there) == (1008, "session expired or revoked: log in again")
        bob.send("still here")
        assert until(bob, "message")["text"] == "still here"
    assert refused_status(open_direct, second, "/chat", cookie) == 403


@pytest.mark.timeout(60)
def test_a_session_that_expires_mid_chat_is_closed_with_1008(start_stack):
    [app] = start_stack(processes=1, proxy=False, SESSION_TTL="3")
    with open_direct(app, "/", user_cookie(app, "alice")) as ws:
        ws.send("echo")
        assert ws.recv(timeout=TIMEOUT) == "echo"
        started = time.monotonic()
        assert closed_with(ws) == (1008, "session expired or revoked: log in again")
    assert time.monotonic() - started < 3 + 2  # the TTL, then a check


# ---- Limits ----

@pytest.mark.timeout(60)
def test_a_flood_gets_an_error_then_1008_and_others_chat_on(start_stack):
    [app] = start_stack(processes=1, proxy=False)  # the defaults: 5 a second, bursts of 10
    with open_direct(app, "/chat", user_cookie(app, "flooder")) as flooder, \
            open_direct(app, "/chat", user_cookie(app, "bob")) as bob:
        until(flooder, "welcome"), until(bob, "welcome")
        events = []
        with contextlib.suppress(ConnectionClosed):
            for number in range(200):  # 100 a second
                flooder.send(f"flood {number}")
                time.sleep(0.01)
        with contextlib.suppress(ConnectionClosed):
            while True:
                events.append(receive_event(flooder))
        kinds = [event["type"] for event in events if event["type"] in ("message", "error")]
        assert 10 <= kinds.count("message") <= 15  # the burst, and what a second refilled
        assert kinds.index("error") >= 10 and kinds[-1] == "error"
        assert "at most 5 a second" in next(e for e in events if e["type"] == "error")["error"]
        assert flooder.protocol.close_rcvd.code == 1008
        assert flooder.protocol.close_rcvd.reason == "too many messages"
        bob.send("unaffected")
        assert until(bob, "message")["text"].startswith("flood")  # what got through
        while (event := until(bob, "message"))["text"] != "unaffected":
            assert event["text"].startswith("flood")


@pytest.mark.timeout(60)
def test_connections_per_user_count_across_processes(start_stack):
    first, second = start_stack(proxy=False, CONNECTIONS_PER_USER="2")
    cookie = user_cookie(first, "alice")
    with open_direct(first, "/chat", cookie) as one, open_direct(second, "/chat", cookie) as two:
        until(one, "welcome"), until(two, "welcome")
        with open_direct(second, "/chat", cookie) as three:
            assert closed_with(three) == (1008, "at most 2 chat connections per user")
        with open_direct(first, "/chat", user_cookie(first, "bob")) as bob:
            assert until(bob, "welcome")["count"] == 3  # another user is not counted
    # Closed: they count no more.
    with open_direct(second, "/chat", cookie) as again:
        assert until(again, "welcome")["type"] == "welcome"


def sent(ws, text):
    """Send a chat message; True if it went out, False if the rate limit refused it."""
    ws.send(text)
    for _ in range(100):  # skip the messages of others, this user's other sockets included
        event = receive_event(ws)
        if event["type"] == "error":
            return False
        if event["type"] == "message" and event["text"] == text:
            return True
    pytest.fail(f"neither {text!r} nor an error came back")


@pytest.mark.timeout(60)
def test_the_message_budget_is_per_user_in_each_process(start_stack):
    # A burst of 3 that does not refill within the test: what counts is who spent it.
    first, second = start_stack(proxy=False, CHAT_MESSAGE_BURST="3",
                                CHAT_MESSAGES_PER_SECOND="0.001")
    cookie = user_cookie(first, "alice")
    with open_direct(first, "/chat", cookie) as one, open_direct(first, "/chat", cookie) as two, \
            open_direct(second, "/chat", cookie) as three:
        for ws in (one, two, three):
            until(ws, "welcome")
        assert [sent(one, f"one {n}") for n in range(3)] == [True] * 3
        # The same user's other socket in the same process shares the bucket.
        assert not sent(two, "two 0")
        # In another process, the user has a bucket of its own: twice the burst in all,
        # as step06's README says ("a user connected to both may send twice as much").
        assert [sent(three, f"three {n}") for n in range(3)] == [True] * 3
        assert not sent(three, "three 3")


def handshake_status(port, source, headers):
    """Open a handshake from a given local address; return the HTTP status the server gave."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                  source_address=(source, 0)) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(sock.recv(4096).split()[1])


@pytest.mark.timeout(60)
def test_handshakes_per_address_and_x_forwarded_for_only_from_the_proxy(start_stack):
    [app] = start_stack(processes=1, proxy=False, HANDSHAKES_PER_MINUTE="3",
                        FORWARDED_ALLOW_IPS="127.0.0.1")
    if time.time() % 60 > 45:
        time.sleep(60 - time.time() % 60)  # the counts are per minute: start a fresh one
    cookie = {"Cookie": user_cookie(app, "alice")}  # a login from 127.0.0.1 counts too
    # 127.0.0.2 is not the proxy: its X-Forwarded-For is ignored, each handshake its own.
    statuses = [handshake_status(app.port, "127.0.0.2", {**cookie, "X-Forwarded-For":
                                 f"203.0.113.{n}"}) for n in range(4)]
    assert statuses == [101, 101, 101, 403]
    # From the proxy's address, X-Forwarded-For names the client: each address its own count.
    statuses = [handshake_status(app.port, "127.0.0.1", {**cookie, "X-Forwarded-For":
                                 f"198.51.100.{n}"}) for n in range(4)]
    assert statuses == [101, 101, 101, 101]
    assert "203.0.113." not in app.output()  # uvicorn's log names 127.0.0.2 instead
    assert "198.51.100.3" in app.output()
    # The proxy's own address has had its login and no handshake: two more, then 403.
    statuses = [handshake_status(app.port, "127.0.0.1", cookie) for _ in range(3)]
    assert statuses == [101, 101, 403]
    assert log_in(app.http_url, "alice", "any").status == 429  # logins count the same


# ---- Through nginx ----

@needs_nginx
@pytest.mark.timeout(90)
def test_two_users_chat_over_wss_across_two_processes(start_stack):
    (first, second), nginx = start_stack()
    alice = user_cookie(first, "alice", nginx.origin, headers={"Origin": nginx.origin},
                        context=nginx.tls)
    bob = user_cookie(first, "bob", nginx.origin, headers={"Origin": nginx.origin},
                      context=nginx.tls)
    # A client's own X-Forwarded-For stops at nginx, which sends the address it saw.
    spoof = {"Cookie": bob, "X-Forwarded-For": "203.0.113.7"}
    with open_wss(nginx, "/chat", alice) as a, \
            connect(f"wss://localhost:{nginx.https_port}/chat", ssl=nginx.tls,
                    origin=nginx.origin, additional_headers=spoof, open_timeout=TIMEOUT) as b:
        until(a, "welcome"), until(b, "welcome")
        # least_conn: the second socket went to the process without one.
        assert first.health()["chat_clients"] == second.health()["chat_clients"] == 1
        a.send("hello over wss")
        for ws in (a, b):
            event = until(ws, "message")
            assert event["id"].startswith("alice.") and event["text"] == "hello over wss"
    assert "203.0.113.7" not in first.output() + second.output()
    assert '127.0.0.1:0 - "WebSocket /chat" [accepted]' in first.output() + second.output()
    # Plain http:// (and so ws://) to nginx is sent to https://, never to the app.
    status, headers, _ = get(f"http://127.0.0.1:{nginx.http_port}/chat")
    assert status == 301
    assert headers["Location"] == f"https://127.0.0.1:{nginx.https_port}/chat"
    assert refused_status(connect, f"ws://127.0.0.1:{nginx.http_port}/chat",
                          open_timeout=TIMEOUT) == 301


@needs_nginx
@pytest.mark.timeout(90)
@pytest.mark.parametrize("ping_interval, survives", [("0.5", True), ("30", False)],
                         ids=["pings-within-proxy-read-timeout", "pings-too-rare"])
def test_a_quiet_socket_through_nginx_lives_on_pings(start_stack, ping_interval, survives):
    # proxy_read_timeout 2 s stands for nginx's 60 s: the same cut, thirty times sooner.
    (app,), nginx = start_stack(processes=1, read_timeout="2s", PING_INTERVAL=ping_interval)
    cookie = user_cookie(app, "alice")
    # The client sends no pings of its own: only the server's can keep the socket open.
    with open_wss(nginx, "/", cookie, ping_interval=None) as ws:
        started = time.monotonic()
        time.sleep(4)  # twice proxy_read_timeout without a message either way
        if survives:
            ws.send("still here")
            assert ws.recv(timeout=TIMEOUT) == "still here"
        else:
            with pytest.raises(ConnectionClosed):
                ws.send("still here")
                ws.recv(timeout=TIMEOUT)
            assert ws.protocol.close_rcvd is None  # nginx cut it: no close frame
            assert time.monotonic() - started < 4 + TIMEOUT


# ---- The client, in Chromium, through nginx ----

@pytest.fixture
def chromium_for(request):
    """Chromium trusting one certificate (by its key's hash), as if its CA were installed."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tools"))
    from browser import CHROMIUM_ARGS, MISSING_CHROMIUM, find_chromium

    with sync_playwright() as playwright:
        chromium = find_chromium(playwright)
        if chromium is None:
            pytest.skip(MISSING_CHROMIUM)
        browsers = []

        def launch(cert):
            spki = f"--ignore-certificate-errors-spki-list={stack.spki_hash(cert)}"
            browsers.append(playwright.chromium.launch(
                executable_path=chromium, args=[*CHROMIUM_ARGS, spki], headless=True))
            return browsers[-1]

        yield launch
        for browser in browsers:
            browser.close()


def log_in_page(browser, nginx, name, password):
    """A new browser profile that logs in with the form and lands on the chat page."""
    from playwright.sync_api import expect

    context = browser.new_context()
    context.set_default_timeout(BROWSER_TIMEOUT)
    page = context.new_page()
    page.goto(f"{nginx.origin}/client/?endpoint=chat")
    expect(page.locator("#user")).to_have_text("Not logged in.")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("#status")).to_have_text("Not logged in: log in, then Connect.")
    page.get_by_role("link", name="Log in").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#user")).to_have_text(f"Logged in as {name}.")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("#status")).to_have_text(
        f"Connected to wss://localhost:{nginx.https_port}/chat (chat)")
    return page


BROWSER_TIMEOUT = 10_000  # milliseconds for the page to show what we expect


@needs_nginx
@pytest.mark.browser
@pytest.mark.timeout(120)
def test_two_users_log_in_chat_and_log_out_in_chromium_over_wss(start_stack, chromium_for):
    from playwright.sync_api import expect

    (first, _), nginx = start_stack()
    browser = chromium_for(nginx.run_dir / "cert.pem")
    alice = log_in_page(browser, nginx, "alice", add_user(first, "alice"))
    bob = log_in_page(browser, nginx, "bob", add_user(first, "bob"))
    expect(alice.locator("#log li.system").last).to_have_text(
        re.compile(r"^bob\.\w+ joined \(2 connected\)$"))
    alice.get_by_label("Message", exact=True).fill("Hi Bob, over wss")
    alice.get_by_role("button", name="Send").click()
    expect(bob.locator("#log li.received")).to_have_text(
        [re.compile(r"^alice\.\w+: Hi Bob, over wss$")])
    # The session cookie is HttpOnly: the page's scripts cannot read it.
    assert "session" not in alice.evaluate("document.cookie")

    alice.get_by_role("button", name="Log out").click()
    expect(alice.locator("#status")).to_contain_text("Disconnected")
    expect(alice.locator("#user")).to_have_text("Not logged in.")
    expect(bob.locator("#log li.system").last).to_have_text(
        re.compile(r"^alice\.\w+ left \(1 connected\)$"))
    # Logged out for good: Connect finds out, and says so.
    alice.get_by_role("button", name="Connect", exact=True).click()
    expect(alice.locator("#status")).to_have_text("Not logged in: log in, then Connect.")


# ---- make step06: the whole stack, as a reader starts it ----


def listening(port):
    """Whether anything accepts connections on a loopback port."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@needs_nginx
@pytest.mark.timeout(90)
def test_stack_py_serves_https_with_the_printed_login_and_ctrl_c_stops_all_four():
    # What `make step06` runs (tests/test_commands.py holds the Makefile to it), on free ports.
    ports = {name: free_port() for name in ("https", "http", "app", "app2", "redis")}
    command = [sys.executable, "stack.py", "--port", str(ports["https"]),
               "--http-port", str(ports["http"]), "--app-ports", str(ports["app"]),
               str(ports["app2"]), "--redis-port", str(ports["redis"])]
    process = subprocess.Popen(command, cwd=ROOT / "step06_production", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed = []
        deadline = time.monotonic() + 3 * STARTUP_TIMEOUT
        while "Ctrl+C stops everything." not in "".join(printed[-1:]):
            assert time.monotonic() < deadline and process.poll() is None, "".join(printed)
            printed.append(process.stdout.readline())
        output = "".join(printed)
        password = re.search(r"^user demo password (\S+)$", output, re.MULTILINE).group(1)
        ca = re.search(r"--cacert (\S+) ", output).group(1)
        origin = f"https://localhost:{ports['https']}"
        tls = ssl.create_default_context(cafile=ca)
        assert get(origin + "/health", context=tls)[0] == 200  # nginx, TLS, an app process
        assert get(f"http://localhost:{ports['http']}/chat")[0] == 301  # plain http: redirected
        # The printed password logs demo in.
        login = urllib.request.Request(
            origin + "/login", data=f"name=demo&password={password}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=tls))
        with pytest.raises(urllib.error.HTTPError) as redirected:
            opener.open(login, timeout=TIMEOUT)
        assert redirected.value.code == 303 and "session=" in redirected.value.headers["Set-Cookie"]
    finally:
        # Ctrl+C in a terminal signals the whole foreground group: stack.py and its four.
        os.killpg(process.pid, signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert process.returncode == 0, rest
    assert not any(listening(port) for port in ports.values()), "a process outlived Ctrl+C"
    assert not os.path.exists(os.path.dirname(ca)), "its temporary folder was left behind"
