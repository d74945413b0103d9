"""A few Autobahn TestSuite cases per server; `make conformance` runs the full set."""

import asyncio
import contextlib
import socket
import threading

from kosoku import FailureError, run_fuzzingclient

# Framing, fragmentation and close codes: where gevent-websocket needed repairs.
CASES = ["1.1.*", "5.*", "7.3.*"]
RUN_TIMEOUT = 30  # seconds for all the cases against one server


async def run_cases(url):
    """Run CASES against url; return every case's result, failed or not."""
    try:
        return await asyncio.wait_for(run_fuzzingclient(url, CASES), RUN_TIMEOUT)
    except FailureError as failure:
        return failure.results


def pump(source, target):
    """Copy bytes one way until either side ends, then end both."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def relay_adding_headers(server):
    """A loopback relay to server that adds server.headers to each handshake; yield its URL.

    step06 lets in only a logged-in handshake, and the Autobahn client cannot send a
    cookie: this relay adds it, and passes every byte after the handshake's head as is.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    extra = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items()).encode()

    def serve(client):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            if not (chunk := client.recv(4096)):
                return client.close()
            head += chunk
        end = head.index(b"\r\n\r\n") + 2
        upstream = socket.create_connection(("127.0.0.1", server.port))
        upstream.sendall(head[:end] + extra + head[end:])
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def accept():
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        listener.close()


def test_passes_autobahn_framing_fragmentation_and_close_cases(server):
    if server.headers:
        with relay_adding_headers(server) as url:
            results = asyncio.run(run_cases(url))
    else:
        results = asyncio.run(run_cases(server.ws_url + "/"))
    failed = [
        f"{result.case_id}: {result.behavior.value} / {result.behavior_close.value}"
        for result in results if not result.passed
    ]
    assert len(results) == 34
    assert failed == []
