"""On gevent's pywsgi, nothing may follow a WebSocket's close frame on the wire.

pywsgi reads the next HTTP request from a connection once the app returns; after an
upgrade that "request" is whatever the client sends after the WebSocket, and an answer
to it (HTTP/1.1 400, or a 500 for an exception) would arrive after the close frame.
Each test reads the raw bytes up to the end of the connection.
"""

import struct
import time

import pytest

from conftest import OPCODE_BINARY, OPCODE_CLOSE, OPCODE_TEXT, frame, raw_handshake

GEVENT_SERVERS = ["step02", "step02-gunicorn", "step02-simple"]
EOF_TIMEOUT = 10  # seconds for the server to end the connection after the close handshake


def read_to_eof(sock):
    """Every byte the server sends until it ends the connection; fail if it never does."""
    data = b""
    deadline = time.monotonic() + EOF_TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"the connection did not end; received so far: {data[:200]!r}")


def split_frames(data):
    """Server frames up to and including the close frame, and the bytes that follow it."""
    frames = []
    while data:
        first, second = data[0], data[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((first & 0x0F, data[offset:offset + length]))
        data = data[offset + length:]
        if first & 0x0F == OPCODE_CLOSE:
            return frames, data
    pytest.fail(f"no close frame in {frames}")


# A complete HTTP request, as a client might send after its close frame.
LATE_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("step", GEVENT_SERVERS)
def test_nothing_follows_the_answer_to_a_clients_close(start, step):
    server = start(step)
    with raw_handshake(server, "/") as sock:
        sock.sendall(frame(OPCODE_TEXT, b"hello"))
        sock.sendall(frame(OPCODE_CLOSE, struct.pack("!H", 1000)) + LATE_REQUEST)
        frames, after = split_frames(read_to_eof(sock))
    assert frames == [(OPCODE_TEXT, b"hello"), (OPCODE_CLOSE, struct.pack("!H", 1000))]
    assert after == b"", f"bytes after the close frame: {after[:200]!r}"


@pytest.mark.parametrize("step", GEVENT_SERVERS)
def test_nothing_follows_the_servers_close(start, step):
    server = start(step)
    with raw_handshake(server, "/chat") as sock:
        # A binary message on /chat: the server closes with 1003, then the client answers.
        sock.sendall(frame(OPCODE_BINARY, b"\x00binary"))
        time.sleep(0.5)
        sock.sendall(frame(OPCODE_CLOSE, struct.pack("!H", 1003)) + LATE_REQUEST)
        frames, after = split_frames(read_to_eof(sock))
    code = struct.unpack("!H", frames[-1][1][:2])[0]
    assert code == 1003
    assert after == b"", f"bytes after the close frame: {after[:200]!r}"
