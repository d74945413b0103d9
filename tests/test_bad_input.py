"""Bad input: oversized, malformed or hostile frames close that client only, with the right code.

Frames the `websockets` library refuses to send are written by hand on a raw socket.
"""

import socket
import struct
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_TEXT,
    TIMEOUT,
    WEBSOCKET_SERVERS,
    frame,
    open_ws,
    raw_handshake,
    read_exactly,
    receive_event,
)

ECHO_LIMIT = 16 * 2**20  # bytes, on "/"
CHAT_LIMIT = 64 * 2**10  # bytes, on /chat


def assert_echo_works(server):
    """A new client on "/" still gets its message back."""
    with open_ws(server) as ws:
        ws.send("still serving")
        assert ws.recv(timeout=TIMEOUT) == "still serving"


def read_close_code(sock):
    """Read server frames until a close frame; return its code (None if it has none)."""
    for _ in range(100):
        first, second = read_exactly(sock, 2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", read_exactly(sock, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", read_exactly(sock, 8))[0]
        # Server frames are never masked.
        payload = read_exactly(sock, length)
        if first & 0x0F == OPCODE_CLOSE:
            return struct.unpack("!H", payload[:2])[0] if payload else None
    pytest.fail("no close frame in 100 frames")


def server_rss_kib(server):
    """Resident memory of the process serving WebSockets: gunicorn's worker, not its master."""
    pid = server.process.pid
    if server.name == "step02-gunicorn":
        # /proc/<pid>/stat: "pid (name) state ppid ..."; the name may hold spaces.
        children = [
            int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent_pid(entry) == pid
        ]
        assert len(children) == 1, f"expected one gunicorn worker, found {children}"
        pid = children[0]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.fail(f"no VmRSS for process {pid}")


def parent_pid(proc_entry):
    """The parent pid of a /proc/<pid> entry, or None if the process is gone."""
    try:
        stat = (proc_entry / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_echo_closes_a_message_over_16_mib_with_1009(server):
    with open_ws(server, max_size=None) as ws:
        try:
            ws.send(bytes(ECHO_LIMIT + 1))
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed:
            pass  # The server may hang up before we have sent it all.
    assert ws.protocol.close_rcvd is not None, "the server sent no close frame"
    assert ws.protocol.close_rcvd.code == 1009
    assert_echo_works(server)


def test_chat_closing_a_client_that_is_already_gone_is_quiet(server):
    # The server reads an oversized message (or a binary one) and closes the connection,
    # but the client has already reset it: nothing to say, no traceback, still serving.
    for message in (frame(OPCODE_TEXT, b"x" * (CHAT_LIMIT + 1)), frame(OPCODE_BINARY, b"\x00")):
        for _ in range(5):
            sock = raw_handshake(server, "/chat")
            sock.sendall(message)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, right behind the message
    with open_ws(server, "/chat") as ws:
        # A welcome first: a relay without one (the first rungs) could pass off a late
        # message from a client that reset as the answer below.
        assert receive_event(ws)["type"] == "welcome"
        ws.send("still serving")
        while (event := receive_event(ws))["type"] != "message":
            pass  # the leaves of the clients that reset their connections
        assert event["text"] == "still serving"


def test_chat_closes_a_message_over_64_kib_with_1009(server):
    with open_ws(server, "/chat") as ws:
        receive_event(ws)
        try:
            ws.send("x" * (CHAT_LIMIT + 1))
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed:
            pass
    assert ws.protocol.close_rcvd is not None, "the server sent no close frame"
    assert ws.protocol.close_rcvd.code == 1009
    # The room still works for the next client.
    with open_ws(server, "/chat") as ws:
        assert receive_event(ws)["count"] == 1
        ws.send("still serving")
        assert receive_event(ws)["text"] == "still serving"


def test_closes_a_1_gib_frame_header_with_1009_without_growing(server):
    sock = raw_handshake(server)
    with sock:
        before = server_rss_kib(server)
        # The header promises 1 GiB; only 8 bytes follow.
        sock.sendall(frame(OPCODE_BINARY, length=2**30) + b"x" * 8)
        # The socket's timeout bounds the wait: the close must come without the payload.
        assert read_close_code(sock) == 1009
        after = server_rss_kib(server)
    assert after - before < 32 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    assert_echo_works(server)


def test_echo_accepts_a_message_of_exactly_16_mib(server):
    payload = "x" * ECHO_LIMIT
    with open_ws(server, max_size=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=3 * TIMEOUT) == payload  # 16 MiB each way on a busy machine


def test_chat_accepts_a_text_of_exactly_2000_characters(server):
    text = "é" * 2000  # characters, not bytes: 4,000 bytes in UTF-8
    with open_ws(server, "/chat") as ws:
        receive_event(ws)
        ws.send(text)
        assert receive_event(ws)["text"] == text


def test_chat_answers_a_message_of_exactly_64_kib_with_an_error_not_a_close(server):
    with open_ws(server, "/chat") as ws:
        receive_event(ws)
        ws.send("x" * CHAT_LIMIT)  # within the size limit, over 2,000 characters
        assert receive_event(ws)["type"] == "error"
        ws.send("still here")
        assert receive_event(ws)["text"] == "still here"


@pytest.mark.parametrize("step", ["step02", "step02-gunicorn"])
def test_step02_closes_a_chat_message_over_64_kib_from_its_header_alone(start, step):
    server = start(step)
    with raw_handshake(server, "/chat") as sock:
        # The header announces one byte over the limit; only 8 bytes follow.
        sock.sendall(frame(OPCODE_TEXT, length=CHAT_LIMIT + 1) + b"x" * 8)
        assert read_close_code(sock) == 1009


def test_closes_invalid_utf8_text_with_1007(server):
    with raw_handshake(server) as sock:
        sock.sendall(frame(OPCODE_TEXT, b"caf\xc3("))
        assert read_close_code(sock) == 1007


def test_chat_answers_a_text_over_2000_characters_with_an_error(server):
    with open_ws(server, "/chat") as ws:
        receive_event(ws)
        ws.send("x" * 2001)
        assert receive_event(ws)["type"] == "error"
        # The connection stays usable.
        ws.send("still here")
        assert receive_event(ws)["text"] == "still here"


PROTOCOL_ERRORS = {
    "reserved-opcode": frame(0x3, b"hello"),
    "rsv1-without-extension": frame(OPCODE_TEXT, b"hello", rsv=0x40),
    "unmasked-client-frame": frame(OPCODE_TEXT, b"hello", masked=False),
    "fragmented-ping": frame(OPCODE_PING, b"hello", fin=False),
}


@pytest.mark.parametrize("garbage", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_closes_a_protocol_error_with_1002(server, garbage):
    with open_ws(server) as bystander, raw_handshake(server) as sock:
        sock.sendall(garbage)
        assert read_close_code(sock) == 1002
        # A client already connected is still served.
        bystander.send("still here")
        assert bystander.recv(timeout=TIMEOUT) == "still here"


@pytest.mark.parametrize("step", WEBSOCKET_SERVERS)
def test_allowed_origins_replaces_the_default_origins(start, step):
    server = start(step, ALLOWED_ORIGINS="https://app.example.com")
    with open_ws(server, origin="https://app.example.com") as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
    with pytest.raises(InvalidStatus) as raised:
        open_ws(server, origin="http://localhost:8000")
    assert raised.value.response.status_code == 403


@pytest.mark.parametrize("step", WEBSOCKET_SERVERS)
def test_allowed_origins_takes_several_patterns_and_globs(start, step):
    server = start(step, ALLOWED_ORIGINS="https://app.example.com, https://*.example.org")
    for origin in ("https://app.example.com", "https://chat.example.org"):
        with open_ws(server, "/chat", origin=origin) as ws:
            assert receive_event(ws)["type"] == "welcome"
    # null (a file:// page) is no longer listed, nor is any other site.
    for origin in ("null", "http://localhost:8000", "https://example.org.evil.example"):
        with pytest.raises(InvalidStatus) as raised:
            open_ws(server, "/chat", origin=origin)
        assert raised.value.response.status_code == 403, origin
