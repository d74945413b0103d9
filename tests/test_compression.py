"""Compression (permessage-deflate): declined as decided, and no way to make uvicorn inflate much.

Browsers always offer permessage-deflate; uvicorn accepts it by default, for every route
at once (step03_ws_asgi/README.md, "What it costs", says why step03 and step04 decline it).
A compressed frame is built here by hand with zlib, sent on a raw socket after a
handshake that offered compression, and the server's memory is read in /proc.
"""

import base64
import os
import socket
import struct
import zlib

import pytest

from conftest import OPCODE_CLOSE, OPCODE_TEXT, SERVERS, TIMEOUT, frame, read_exactly

STEPS = ["step03-minimal", "step03", "step04-minimal", "step04", "step05-minimal", "step05",
         "step06"]
# Chromium's offer: compression, and any window size the server likes for our messages.
OFFER = "permessage-deflate; client_max_window_bits"
RSV1 = 0x40  # the "compressed" bit of a frame's first byte (RFC 7692)
ECHO_LIMIT = 16 * 2**20  # bytes: uvicorn's ws_max_size, inflated bytes included
BOMB = 256 * 2**20  # bytes a bomb inflates to: 16 times the echo's limit, from about 250 KiB
# Peak memory a bomb may add: uvicorn inflates at most ECHO_LIMIT bytes, and zlib's
# output may be copied once, so twice that, plus 8 MiB for the allocator.
PEAK_GROWTH_LIMIT = 2 * ECHO_LIMIT + 8 * 2**20
# Declined, a compressed frame is a protocol error, read but never inflated.
DECLINED_GROWTH_LIMIT = 4 * 2**20


def handshake(server, path):
    """Open a raw WebSocket offering compression; return the socket and the response headers."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items())  # step06
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: {OFFER}\r\n{extra}\r\n".encode()
    )
    response = b""
    # Byte by byte: what follows the headers is a frame, not ours to eat.
    while not response.endswith(b"\r\n\r\n") and len(response) < 4096:
        byte = sock.recv(1)
        assert byte, f"connection closed during the handshake: {response!r}"
        response += byte
    status, *lines = response.decode("latin-1").strip().split("\r\n")
    assert status.startswith("HTTP/1.1 101"), response
    headers = {name.lower(): value.strip() for name, _, value in
               (line.partition(":") for line in lines)}
    return sock, headers


def deflated(size, byte=b"a"):
    """A message of size copies of byte, compressed as permessage-deflate sends it."""
    compressor = zlib.compressobj(wbits=-15)
    chunk = byte * 2**20
    data = b"".join(compressor.compress(chunk[:min(2**20, size - sent)])
                    for sent in range(0, size, 2**20))
    data += compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # RFC 7692: the flush's last 4 bytes (00 00 ff ff) are left out


def close_code(sock):
    """Read frames until the server's close frame; return its code (None if it just hung up)."""
    while True:
        head = sock.recv(2)
        if len(head) < 2:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", read_exactly(sock, 2))
        elif length == 127:
            (length,) = struct.unpack("!Q", read_exactly(sock, 8))
        payload = read_exactly(sock, length)
        if opcode == OPCODE_CLOSE:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def memory_kib(pid, field):
    """One memory figure of a process from /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak(pid):
    """Make VmHWM (the peak resident memory) start again from the current VmRSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def start_compressing(make_server, step):
    """Start a hardened step with compression switched on, as server.py allows."""
    folder, command = SERVERS[step]
    env = {"REDIS_URL": ""} if step == "step04" else {}
    return make_server(step, folder, [*command, "--ws-per-message-deflate", "true"], env)


def send_bomb(server, path, size):
    """Send one compressed text message of size bytes; return headers, close code, peak growth."""
    sock, headers = handshake(server, path)
    with sock:
        pid = server.process.pid
        reset_peak(pid)
        before = memory_kib(pid, "VmRSS")
        sock.sendall(frame(OPCODE_TEXT, deflated(size), rsv=RSV1))
        code = close_code(sock)
    return headers, code, (memory_kib(pid, "VmHWM") - before) * 1024


@pytest.mark.parametrize("step", STEPS)
def test_the_handshake_declines_compression(start, step):
    """A browser's offer of compression gets no Sec-WebSocket-Extensions in the answer."""
    sock, headers = handshake(start(step), "/")
    sock.close()
    assert "sec-websocket-extensions" not in headers, headers["sec-websocket-extensions"]


@pytest.mark.parametrize("step", ["step03", "step04"])
def test_server_py_turns_compression_on_when_told(make_server, step):
    """`--ws-per-message-deflate true` accepts the offer, with uvicorn's 4 KiB windows."""
    server = start_compressing(make_server, step)
    sock, headers = handshake(server, "/chat")
    sock.close()
    answer = headers.get("sec-websocket-extensions", "")
    assert answer.startswith("permessage-deflate"), headers
    assert "server_max_window_bits=12" in answer and "client_max_window_bits=12" in answer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/", "/chat"])
@pytest.mark.parametrize("step", ["step03", "step04"])
def test_a_compressed_frame_is_a_protocol_error_when_declined(start, step, path):
    """Compression declined, a compressed frame is closed with 1002: nothing is inflated."""
    headers, code, growth = send_bomb(start(step), path, BOMB)
    assert "sec-websocket-extensions" not in headers
    assert code == 1002
    assert growth < DECLINED_GROWTH_LIMIT, f"peak memory grew by {growth / 2**20:.1f} MiB"


# Where compression is on: the first rungs (uvicorn's default) and the hardened steps
# switched on with server.py's flag, on the echo and on the chat.
BOMBS = [
    ("step03-minimal", "/", BOMB),
    ("step04-minimal", "/", BOMB),
    ("step03-deflate", "/", BOMB),
    ("step04-deflate", "/", BOMB),
    # Past the chat's 64 KiB, within uvicorn's 16 MiB: the chat's own check closes it.
    ("step03-deflate", "/chat", 2**20),
    ("step04-deflate", "/chat", 2**20),
    # Past uvicorn's 16 MiB: uvicorn stops inflating and closes it.
    ("step03-deflate", "/chat", BOMB),
    ("step04-deflate", "/chat", BOMB),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "path", "size"), BOMBS,
                         ids=[f"{name}-{path}-{size // 2**20}MiB" for name, path, size in BOMBS])
def test_a_compressed_message_past_the_limit_is_closed_with_1009(
        start, make_server, name, path, size):
    """A message that inflates past the limit is closed with 1009; memory peaks below a bound."""
    if name.endswith("-deflate"):
        server = start_compressing(make_server, name.removesuffix("-deflate"))
    else:
        server = start(name)
    headers, code, growth = send_bomb(server, path, size)
    assert headers.get("sec-websocket-extensions", "").startswith("permessage-deflate")
    assert code == 1009
    assert growth < PEAK_GROWTH_LIMIT, f"peak memory grew by {growth / 2**20:.1f} MiB"
    # The server is still there for everyone else.
    sock, _ = handshake(server, "/")
    sock.close()
