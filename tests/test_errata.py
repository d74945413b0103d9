"""The post's code, run as written: each test shows one thing it gets wrong.

tests/post/ holds the post's app.py and wsgi.py verbatim, plus small variants
where the post leaves "..." or cannot start (each file says what it changes).
Where cheap, a test also shows the same check passing against our steps.
"""

import ast
import asyncio
import importlib.metadata
import json
import socket
import struct
import time
import warnings
from pathlib import Path

import falcon.asgi
import falcon.testing
import pytest
from falcon.util.deprecation import DeprecatedWarning
from packaging.requirements import Requirement
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from conftest import (
    BIN,
    PYTHON,
    ROOT,
    TIMEOUT,
    load_module,
    open_ws,
    raw_handshake,
    read_exactly,
)

POST = "tests/post"
QUIET = 3  # seconds of silence that show a server is not reacting




def start_post_server(make_server, *args):
    """Run tests/post/serve.py (the post's wsgi.py made to start) serving a module."""
    return make_server("post", cwd=POST, command=[PYTHON, "serve.py", *args], wait=False)


def wait_listening(server):
    """Wait until the server accepts TCP connections (the post's app has no /health)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.output()}")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{server.name} is not listening on port {server.port}")




def listening_addresses(port):
    """The local addresses with a TCP socket listening on port, read from /proc/net."""
    addresses = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(struct.pack("<I", int(address[i:i + 8], 16))
                           for i in range(0, len(address), 8))
            addresses.add(socket.inet_ntop(family, raw))
    return addresses


# 1. falcon.API()

def test_falcon_api_is_deprecated():
    """The post: `app = falcon.API()`. Falcon 4 warns on every start; Falcon 5 removes it."""
    with pytest.warns(DeprecatedWarning, match="use falcon.App instead"):
        load_module("post_app", f"{POST}/app.py")


def test_our_step01_starts_without_a_warning():
    """Our steps use falcon.App(): importing step01 with warnings as errors succeeds."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = load_module("step01_app", "step01_http/app.py")
    assert isinstance(module.app, falcon.App)


# 2. on_websocket under WSGI

@pytest.mark.parametrize("module", ["app", "app_method"])
def test_wsgi_app_never_calls_on_websocket(make_server, module):
    """The post: `def on_websocket(self, req, ws):` on a WSGI falcon.API(), served by wsgi.py.

    app: the post's app.py verbatim. app_method: on_websocket as an echoing method
    of WebSocketAPI. Either way gevent-websocket answers 101, Falcon routes the
    upgraded GET to on_get, and the handler closes the socket once on_get returns.
    """
    server = wait_listening(start_post_server(make_server, module))
    with open_ws(server, "/") as ws:
        assert ws.response.status_code == 101
        # No echo ever comes: the server has closed already (sometimes before send).
        with pytest.raises(ConnectionClosed):
            ws.send("hello")
            ws.recv(timeout=TIMEOUT)
    # A close frame with no code at all: websockets reports 1005.
    assert ws.protocol.close_rcvd.code == 1005


def test_wsgi_py_never_imports_websockethandler(make_server):
    """The post's wsgi.py: `handler_class=WebSocketHandler`, a name it never imports."""
    server = make_server("post-wsgi", cwd=POST, command=[PYTHON, "wsgi.py"], wait=False)
    assert server.process.wait(timeout=15) == 1
    assert "NameError: name 'WebSocketHandler' is not defined" in server.output()


# 3. gunicorn wsgi:app

def test_gunicorn_wsgi_app_answers_the_handshake_with_200(make_server):
    """The post: `Run the server using gunicorn wsgi:app.` gunicorn's sync worker upgrades nothing.

    Ours, `gunicorn --worker-class protections.Worker app:app`, upgrades: the contract
    suite runs every test against it (the step02-gunicorn server).
    """
    command = [str(BIN / "gunicorn"), "--bind", "127.0.0.1:{port}", "wsgi:app"]
    server = wait_listening(make_server("post-gunicorn", cwd=POST, command=command, wait=False))
    with pytest.raises(InvalidStatus) as raised:
        open_ws(server, "/")
    assert raised.value.response.status_code == 200
    assert raised.value.response.body == b"This endpoint is for Websockets only."


# 4. pip install

def installed_closure(names):
    """Every distribution the named ones pull in, following installed metadata."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_pip_line_omits_falcon():
    """The post: `pip install gunicorn gevent-websocket`. Neither pulls in falcon."""
    lines = (ROOT / POST / "requirements.txt").read_text().splitlines()
    post_packages = [line for line in lines if line and not line.startswith("#")]
    assert post_packages == ["gunicorn", "gevent-websocket"]
    # The post's app.py imports falcon first thing.
    tree = ast.parse((ROOT / POST / "app.py").read_text())
    imported = {alias.name for node in tree.body if isinstance(node, ast.Import)
                for alias in node.names}
    assert "falcon" in imported
    assert "falcon" not in installed_closure(post_packages)
    # Ours pins it.
    assert "falcon==4.4.0" in (ROOT / "requirements.txt").read_text().splitlines()


# 5. ws.receive() after the peer leaves

def test_receive_returns_none_then_raises(make_server):
    """The post: `while True: message = ws.receive()`. After a close, None, then an error.

    So the post's loop either spins on None forever or dies on WebSocketError.
    """
    server = start_post_server(make_server, "stock_app")
    server.wait_healthy()
    with open_ws(server, "/loop") as ws:
        ws.send("one")
    deadline = time.monotonic() + TIMEOUT
    while "WebSocketError" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = [line for line in server.output().splitlines()
            if line.startswith(("received", "WebSocketError"))]
    assert seen == [
        "received 'one'",
        "received None",
        "WebSocketError 'Connection is already closed'",
    ]


# 6. 0.0.0.0

def test_posts_server_listens_on_every_interface(make_server):
    """The post's wsgi.py: `WSGIServer(('0.0.0.0', 8000), ...)`: reachable from the network."""
    server = wait_listening(start_post_server(make_server, "app"))
    assert listening_addresses(server.port) == {"0.0.0.0"}


@pytest.mark.parametrize("name, cwd, script", [
    ("step01", "step01_http", "app.py"),
    ("step02", "step02_ws_gevent", "wsgi.py"),
    ("step03", "step03_ws_asgi", "server.py"),
    ("step04", "step04_scale_out", "server.py"),
])
def test_our_servers_listen_on_loopback_by_default(make_server, name, cwd, script):
    """Ours, started with no HOST and no --host, listen on 127.0.0.1 only."""
    # conftest sets HOST=127.0.0.1; `env -u HOST` removes it to see the default.
    command = ["env", "-u", "HOST", PYTHON, script, "--port", "{port}"]
    if name == "step01":
        command = command[:-2]  # step01 takes its port from $PORT only
    server = make_server(name, cwd=cwd, command=command)
    assert listening_addresses(server.port) == {"127.0.0.1"}


# 7. Content-Type of the plain GET

@pytest.mark.filterwarnings("ignore:Call to deprecated")  # falcon.API(): test 1's subject
def test_plain_get_says_json_for_a_text_body():
    """The post: `resp.text = "This endpoint is for Websockets only."` with no content type."""
    app = load_module("post_app", f"{POST}/app.py").app
    result = falcon.testing.TestClient(app).simulate_get("/")
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "application/json"
    assert result.text == "This endpoint is for Websockets only."
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


@pytest.mark.parametrize("path, status", [
    ("step01_http/app.py", 200),
    ("step02_ws_gevent/app.py", 426),
    ("step03_ws_asgi/app.py", 426),
    ("step04_scale_out/app.py", 426),
])
def test_our_plain_get_says_text_plain(path, status):
    """Ours say text/plain: step01 with 200, the WebSocket steps with 426 Upgrade Required."""
    app = load_module(path.replace("/", "_"), path).app
    if isinstance(app, falcon.asgi.App):
        # TestClient would need a current event loop, which Python 3.10 lacks after asyncio.run.
        result = asyncio.run(falcon.testing.ASGIConductor(app).simulate_get("/"))
    else:
        result = falcon.testing.TestClient(app).simulate_get("/")
    assert result.status_code == status
    assert result.headers["Content-Type"].startswith("text/plain")
    assert result.text.startswith("This endpoint is for Websockets only.")


# 8. close codes

def test_stock_server_answers_a_1000_close_without_a_code(make_server):
    """The post's server (stock WebSocketHandler) answers our 1000 with an empty close frame.

    Ours answers 1000: test_contract.py::test_client_close_is_answered_with_1000.
    """
    server = start_post_server(make_server, "stock_app")
    server.wait_healthy()
    with open_ws(server, "/") as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
    assert ws.protocol.close_sent.code == 1000
    assert ws.protocol.close_rcvd.code == 1005  # "no status received"


def test_stock_server_mangles_close_1001(make_server):
    """On the post's server, ws.close(1001, "bye") sends "bye" with no code: "by" reads as 25209."""
    server = start_post_server(make_server, "stock_app")
    server.wait_healthy()
    with open_ws(server, "/bye") as ws:
        with pytest.raises(ConnectionClosedError) as raised:
            ws.recv(timeout=TIMEOUT)
    # The client cannot parse the frame and fails the connection itself.
    assert str(raised.value) == (
        "sent 1002 (protocol error) invalid status code; no close frame received"
    )
    assert ws.protocol.close_rcvd is None


# 9. message size limit

ONE_GIB_FRAME = (
    bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**30)  # binary, masked, 1 GiB
    + b"\x00\x00\x00\x00" + b"only a few bytes"  # mask, then a start of payload
)


def test_stock_server_accepts_a_one_gibibyte_frame(make_server):
    """The post's server has no size limit: it waits for the whole 1 GiB instead of refusing."""
    server = start_post_server(make_server, "stock_app")
    server.wait_healthy()
    with raw_handshake(server) as sock:
        sock.sendall(ONE_GIB_FRAME)
        sock.settimeout(QUIET)
        # Neither a close frame nor a closed socket: the server is still reading.
        with pytest.raises(TimeoutError):
            sock.recv(16)


@pytest.mark.parametrize("name", ["step02", "step03"])
def test_our_servers_refuse_a_one_gibibyte_frame_with_1009(make_server, name):
    """Ours close with 1009 (message too big) as soon as the frame header arrives."""
    server = make_server(name)
    with raw_handshake(server) as sock:
        sock.sendall(ONE_GIB_FRAME)
        head = read_exactly(sock, 4)
    assert head[0] == 0x88  # FIN + close
    assert struct.unpack("!H", head[2:4])[0] == 1009


# 10. Origin

def test_stock_server_accepts_a_foreign_origin(make_server):
    """The post's server opens a WebSocket for any web page: no Origin check.

    Ours refuse with 403: test_contract.py::test_refuses_a_foreign_origin_with_403.
    """
    server = start_post_server(make_server, "stock_app")
    server.wait_healthy()
    with open_ws(server, "/", origin="http://evil.example") as ws:
        assert ws.response.status_code == 101


# 11. uvicorn without a WebSocket library

def test_uvicorn_without_websockets_refuses_the_upgrade(make_server):
    """`pip install uvicorn` alone has no WebSocket library: the handshake is served as HTTP."""
    server = make_server("post-uvicorn", cwd=POST,
                         command=[PYTHON, "uvicorn_without_websockets.py"])
    with pytest.raises(InvalidStatus) as raised:
        open_ws(server, "/")
    assert raised.value.response.status_code == 200
    assert "WARNING:  Unsupported upgrade request." in server.output()
    assert "No supported WebSocket library detected." in server.output()


# 12. a broadcast that awaits each send

MESSAGES = 5000  # 5000 x 1900 bytes, about 10 MB: more than the stuck client's buffers
TEXT = "x" * 1900  # under step03's 2000-character limit


def count_delivered(server, mine):
    """Send MESSAGES one by one next to a client that never reads; count those that come back.

    `mine(raw)` returns the text of a message as the server sends it back, or None.
    Returns the count and the server's /health, read before the clients leave.
    """
    stuck = raw_handshake(server, "/chat", receive_buffer=4096)  # never read from again
    with stuck, open_ws(server, "/chat") as ws:
        for number in range(MESSAGES):
            ws.send(f"{number} {TEXT}")
            try:
                # Skip other events (joins, leaves) until our message comes back.
                while mine(ws.recv(timeout=TIMEOUT)) is None:
                    pass
            except TimeoutError:
                return number, server.health()
        return MESSAGES, server.health()


def test_naive_broadcast_stalls_behind_a_client_that_stops_reading(make_server):
    """`for client in clients: await client.send_text(text)` waits on the slowest client."""
    command = [PYTHON, "-m", "uvicorn", "broadcast:app", "--port", "{port}",
               "--ws", "websockets-sansio"]
    server = make_server("post-broadcast", cwd=POST, command=command)
    delivered, _ = count_delivered(server, mine=lambda raw: raw)
    assert delivered < MESSAGES


def test_our_chat_keeps_delivering_next_to_a_client_that_stops_reading(make_server):
    """Our step03 gives each client an outbox and drops the one that stops reading."""
    server = make_server("step03")

    def mine(raw):
        event = json.loads(raw)
        return event["text"] if event["type"] == "message" else None

    delivered, health = count_delivered(server, mine)
    assert delivered == MESSAGES
    # The stuck client was dropped: only the reading one is left.
    assert health["chat_clients"] == 1
