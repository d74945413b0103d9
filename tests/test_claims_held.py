"""Claims of the READMEs and docs that no other test held: each test names its sentence.

docs/claims.md points here. Every server is a real process, started by conftest's fixtures.
"""

import re
import signal
import struct
import urllib.request
import warnings
from pathlib import Path

import pytest
from test_errata import listening_addresses
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    PYTHON,
    ROOT,
    TIMEOUT,
    frame,
    free_port,
    load_module,
    open_ws,
    raw_handshake,
    read_exactly,
    receive_event,
)

FIRST_RUNGS = ["step02-minimal", "step03-minimal", "step04-minimal", "step05-minimal"]
HARDENED_STEPS = ["step02", "step02-gunicorn", "step02-simple", "step03", "step04"]


def read_close(sock):
    """Read server frames until a close frame; return (code, reason), code None if it has none."""
    for _ in range(100):
        first, second = read_exactly(sock, 2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", read_exactly(sock, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", read_exactly(sock, 8))[0]
        payload = read_exactly(sock, length)
        if first & 0x0F == OPCODE_CLOSE:
            if not payload:
                return None, ""
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    pytest.fail("no close frame in 100 frames")


def closed_with(ws):
    """Read until the connection ends; return the server's close frame (None if it was cut)."""
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=TIMEOUT)
    return ws.protocol.close_rcvd


# README.md and tests/errata.md: falcon.App() or falcon.asgi.App(): no warning.
@pytest.mark.parametrize("path", ["step02_ws_gevent/app.py", "step03_ws_asgi/app.py",
                                  "step04_scale_out/app.py"])
def test_our_apps_import_without_a_warning(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_module(path.replace("/", "_") + "_strict", path)


# docs/settings.md's limits, and the numbers the READMEs give: the constants each step uses.
@pytest.mark.parametrize("step", ["step02_ws_gevent", "step03_ws_asgi", "step04_scale_out"])
def test_the_limits_are_the_documented_numbers(step, monkeypatch):
    monkeypatch.delenv("PING_INTERVAL", raising=False)
    monkeypatch.delenv("PING_TIMEOUT", raising=False)
    protections = load_module(f"{step}_protections_limits", f"{step}/protections.py")
    chat = load_module(f"{step}_chat_limits", f"{step}/chat.py")
    assert protections.ECHO_MAX_MESSAGE_SIZE == 16 * 2**20
    assert protections.CHAT_MAX_MESSAGE_SIZE == 64 * 2**10
    assert (protections.PING_INTERVAL, protections.PING_TIMEOUT) == (20, 20)
    assert chat.CHAT_MAX_TEXT_LENGTH == 2000
    assert chat.OUTBOX_SIZE == 64
    assert chat.SEND_TIMEOUT == 5


# tests/errata.md: requirements.txt pins every package.
def test_requirements_pin_every_package():
    lines = [line.split(";")[0].strip() for line in
             (ROOT / "requirements.txt").read_text().splitlines()]
    packages = [line for line in lines if line and not line.startswith("#")]
    assert packages and all("==" in line for line in packages), packages


# README.md: 127.0.0.1 unless --host or HOST says otherwise.
def test_host_says_otherwise(make_server):
    command = [PYTHON, "server.py", "--port", "{port}"]
    server = make_server("step03", cwd="step03_ws_asgi", command=command,
                         env={"HOST": "0.0.0.0"})
    assert listening_addresses(server.port) == {"0.0.0.0"}


# docs/settings.md: the first rungs have no Origin check.
@pytest.mark.parametrize("step", FIRST_RUNGS)
def test_first_rungs_accept_a_foreign_origin(start, step):
    with open_ws(start(step), origin="http://evil.example") as ws:
        assert ws.response.status_code == 101


# step02's and step03's READMEs: a first rung's plain GET gets the post's 200 OK.
@pytest.mark.parametrize("step", ["step02-minimal", "step03-minimal"])
def test_first_rungs_answer_a_plain_get_with_200(start, step):

    server = start(step)
    with urllib.request.urlopen(server.http_url + "/", timeout=TIMEOUT) as response:
        assert response.status == 200


# step02's README: Ctrl+D closes with 1000, and the server answers without a code.
def test_step02_minimal_answers_a_close_without_a_code(start):
    with open_ws(start("step02-minimal")) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
    assert ws.protocol.close_sent.code == 1000
    assert ws.protocol.close_rcvd.code == 1005


# step02's README: a frame header announcing 1 GiB is believed, and the server waits.
def test_step02_minimal_waits_for_a_1_gib_payload(start):
    with raw_handshake(start("step02-minimal")) as sock:
        sock.sendall(frame(OPCODE_BINARY, length=2**30) + b"x" * 8)
        sock.settimeout(3)
        with pytest.raises(TimeoutError):
            sock.recv(16)


# step02's README: stopping the server sends no close frame. SIGTERM only: on Ctrl+C the
# KeyboardInterrupt may land in the handler's greenlet, which then closes the socket itself.
def test_step02_minimal_stops_without_a_close_frame(start):
    server = start("step02-minimal")
    with open_ws(server) as ws:
        server.stop(signal.SIGTERM)
        assert closed_with(ws) is None


# step03's README and docs/troubleshooting.md: a binary message gets 1011, PayloadTypeError.
@pytest.mark.parametrize("step", ["step03-minimal", "step04-minimal"])
def test_first_rung_ends_a_binary_message_with_1011(start, step):
    server = start(step)
    with open_ws(server) as ws:
        ws.send(b"binary")
        close = closed_with(ws)
    assert close.code == 1011
    if step == "step03-minimal":
        assert "PayloadTypeError" in server.output()


# step03's README and docs/troubleshooting.md: at shutdown uvicorn says 1012.
def test_step03_minimal_says_1012_at_shutdown(start):
    server = start("step03-minimal")
    with open_ws(server) as ws:
        server.stop(signal.SIGINT)
        assert closed_with(ws).code == 1012


# step02's and step03's READMEs, docs/settings.md: 1001 "server shutting down".
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl+C", "SIGTERM"])
@pytest.mark.parametrize("step", ["step02", "step02-gunicorn", "step03", "step04"])
def test_shutdown_says_server_shutting_down(start, step, sig):
    server = start(step)
    with open_ws(server, "/chat") as ws:
        receive_event(ws)
        server.stop(sig)
        close = closed_with(ws)
    assert (close.code, close.reason) == (1001, "server shutting down")


# docs/settings.md: a request without an Origin header is allowed.
@pytest.mark.parametrize("step", HARDENED_STEPS)
def test_a_request_without_origin_is_allowed(start, step):
    # raw_handshake sends no Origin header, and asserts the 101.
    raw_handshake(start(step)).close()


# docs/settings.md and step02's README: simple-websocket closes a peer with no pong with 1008.
def test_step02_simple_closes_a_peer_that_never_answers_a_ping_with_1008(start):
    server = start("step02-simple", PING_INTERVAL="1", PING_TIMEOUT="1")
    with raw_handshake(server) as sock:
        assert read_close(sock)[0] == 1008


# docs/settings.md and docs/troubleshooting.md: step04's minimal.py cannot start without it.
def test_step04_minimal_cannot_start_without_redis_url(make_server):
    command = ["env", "-u", "REDIS_URL", PYTHON, "minimal.py"]
    server = make_server("step04-minimal", cwd="step04_scale_out", command=command, wait=False)
    assert server.process.wait(timeout=15) != 0
    assert "KeyError: 'REDIS_URL'" in server.output()


# docs/troubleshooting.md: no Redis at REDIS_URL: the first rung's start-up fails.
def test_step04_minimal_fails_at_startup_without_a_redis(make_server):
    url = f"redis://127.0.0.1:{free_port()}/0"
    server = make_server("step04-minimal", env={"REDIS_URL": url}, wait=False)
    assert server.process.wait(timeout=15) != 0
    output = server.output()
    assert "Error 111 connecting to" in output
    assert "Application startup failed. Exiting." in output


# step04's README: the first rung is one chat: the message reaches both processes.
def test_step04_minimal_relays_between_two_processes(start):
    first, second = start("step04-minimal"), start("step04-minimal")
    with open_ws(first, "/chat") as a, open_ws(second, "/chat") as b:
        a.send("hello from a")
        for ws in (a, b):
            event = receive_event(ws)
            assert (event["type"], event["text"]) == ("message", "hello from a")


# step05's README: while Redis is away, joining gets 1011.
def test_step05_refuses_a_join_with_1011_while_redis_is_down(start, redis_server):
    server = start("step05")
    redis_server.stop()
    with open_ws(server, "/chat") as ws:
        close = closed_with(ws)
    assert (close.code, close.reason) == (1011, "chat backplane unavailable")


# step03's README: its uvicorn command line, run as written (port aside): the same
# settings as server.py, without its Server, so clients hear 1012 at shutdown.
def test_step03_readmes_uvicorn_command_serves_and_says_1012_at_shutdown(make_server):
    readme = (ROOT / "step03_ws_asgi/README.md").read_text()
    written = re.search(r"cd step03_ws_asgi && (\.\./\.venv/bin/uvicorn [^`]*?--port 8000)", readme)
    assert written, "step03's README no longer gives the uvicorn command"
    command = written.group(1).replace("\\\n", " ").split()
    command[0] = str(Path(PYTHON).parent / "uvicorn")
    command[-1] = "{port}"
    server = make_server("step03-uvicorn-cli", cwd="step03_ws_asgi", command=command)
    with open_ws(server) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
    with pytest.raises(InvalidStatus):
        open_ws(server, origin="http://evil.example")  # app.py's Origin check still holds
    with open_ws(server) as ws:
        server.stop(signal.SIGINT)
        assert closed_with(ws).code == 1012


# step02's README: each WebSocket holds one of --worker-connections, 1,000 by default.
def test_gunicorns_worker_connections_default_is_1000():
    from gunicorn.config import Config

    assert Config().worker_connections == 1000


# tests/errata.md: "Observed with falcon 4.4.0, gevent 26.9.0, ...": the versions the
# errata tests run on are the ones it names, so a version bump updates the page too.
def test_errata_names_the_versions_the_tests_run_on():
    from importlib.metadata import version

    header = (ROOT / "tests/errata.md").read_text().split("The post's files")[0]
    named = dict(re.findall(r"([a-z][a-z-]+) (\d+\.\d+\.\d+)", header))
    assert set(named) == {"falcon", "gevent", "gevent-websocket", "gunicorn", "uvicorn",
                          "websockets"}
    assert {package: version(package) for package in named} == named
