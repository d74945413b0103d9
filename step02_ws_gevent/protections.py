"""Step 2's protections: gevent-websocket, repaired where it lets a client hurt the server.

gevent-websocket 0.10.1 (2017, the last release) never puts the close code on the
wire, has no message size limit, never checks Origin, never pings, and unmasks every
frame byte by byte in Python. `Handler` and `WebSocket` below fix that without
forking it; `Worker` lets gunicorn use them; `close_all` says 1001 at shutdown.
"""

import fnmatch
import logging
import os
import socket
import struct
import time
import weakref

import gevent
from gevent.lock import Semaphore
from geventwebsocket import WebSocketError
from geventwebsocket import websocket as upstream
from geventwebsocket.exceptions import ProtocolError
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

# Browsers send Origin; a page on another site must not use its visitor's browser
# to talk to us. The default suits development: pages on localhost and file:// ("null").
DEFAULT_ALLOWED_ORIGINS = "http://localhost:*,http://127.0.0.1:*,null"
ALLOWED_ORIGINS = os.environ.get("ALLOWED_ORIGINS", DEFAULT_ALLOWED_ORIGINS).split(",")

# The largest message a client may send: app.py sets one of these per route.
ECHO_MAX_MESSAGE_SIZE = 16 * 2**20  # bytes on "/", uvicorn's default
CHAT_MAX_MESSAGE_SIZE = 64 * 2**10  # bytes on /chat; a bigger message is closed with 1009
CLOSE_TIMEOUT = 3  # seconds a client that broke the rules gets to stop sending
SHUTDOWN_CLOSE_TIMEOUT = 1  # seconds shutdown waits for the close frames to go out

# gevent-websocket never pings, so a peer that vanished without a FIN stays forever.
PING_INTERVAL = float(os.environ.get("PING_INTERVAL", "20"))  # seconds between pings
PING_TIMEOUT = float(os.environ.get("PING_TIMEOUT", "20"))  # seconds to wait for the pong

# Every open WebSocket, so that shutdown can say goodbye (1001) to each.
open_websockets = weakref.WeakSet()

STOCK_SERVER = (
    "refused a WebSocket served by stock gevent-websocket (no size limit, close codes, "
    "Origin check or pings): serve app.py with wsgi.py, or gunicorn -k protections.Worker"
)
log = logging.getLogger("step02")


def origin_allowed(origin):
    """Tell whether a handshake's Origin header may open a WebSocket."""
    # Clients that are not browsers send no Origin and cannot be abused this way.
    if origin is None:
        return True
    return any(fnmatch.fnmatchcase(origin, pattern.strip()) for pattern in ALLOWED_ORIGINS)


def repaired(ws, max_message_size):
    """Give ws its size limit; False, having closed it, if it is stock gevent-websocket's."""
    if isinstance(ws, tuple(REPAIRED)):
        ws.max_message_size = max_message_size
        return True
    # Stock gevent-websocket cannot even say why it closes: the reason is in the log.
    log.error(STOCK_SERVER)
    ws.close()
    return False


def close_all(code, reason):
    """Close every open WebSocket with the same code, within SHUTDOWN_CLOSE_TIMEOUT."""
    # One greenlet each: a client that stopped reading holds only its own close.
    closing = [gevent.spawn(ws.close, code, reason) for ws in list(open_websockets)]
    gevent.joinall(closing, timeout=SHUTDOWN_CLOSE_TIMEOUT)
    gevent.killall(closing, block=False)


try:
    # websockets, installed for step03, does this XOR in C: 1 MiB in 0.02 ms, not 5.
    from websockets.speedups import apply_mask as unmask
    UNMASKED_IN = "C"
except ImportError:
    UNMASKED_IN = "Python"
    # XOR_TABLES[k] maps every byte to itself XOR k, for bytes.translate().
    XOR_TABLES = [bytes(byte ^ k for byte in range(256)) for k in range(256)]

    def unmask(payload, mask):
        """XOR a client's payload with its 4-byte mask; every 4th byte shares a mask byte."""
        data = bytearray(payload)
        for i in range(4):
            data[i::4] = data[i::4].translate(XOR_TABLES[mask[i]])
        return bytes(data)


class MessageTooBig(ProtocolError):
    """A client announced a message larger than the limit."""


class WebSocket(upstream.WebSocket):
    """gevent-websocket's WebSocket with close codes, a size limit and fast unmasking."""

    def __init__(self, environ, stream, handler):
        super().__init__(environ, stream, handler)
        self.max_message_size = ECHO_MAX_MESSAGE_SIZE
        self.message_size = 0
        # Frames written from two greenlets (a reply and a broadcast) must not interleave.
        self.write_lock = Semaphore()
        self.last_heard = time.monotonic()
        open_websockets.add(self)

    def read_frame(self):
        """Read one frame, refusing it before its payload if the message grows too big."""
        header = upstream.Header.decode_header(self.stream)
        self.last_heard = time.monotonic()
        if header.flags:
            raise ProtocolError("reserved bits set without an extension")
        if header.opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY):
            self.message_size = 0
        if header.opcode <= self.OPCODE_BINARY:
            self.message_size += header.length
            if self.message_size > self.max_message_size:
                raise MessageTooBig(f"message over {self.max_message_size} bytes")
        if not header.mask:
            raise ProtocolError("client frames must be masked")
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("unexpected EOF reading frame payload")
        return header, unmask(payload, header.mask)

    def validate_utf8(self, payload):
        """Skip the pure-Python validator: decoding the whole message checks it in C."""

    def _decode_bytes(self, payload):
        """Decode a text message; receive() closes with 1007 and a reason if it is not UTF-8."""
        # Upstream closes here itself, with no reason, before receive() can.
        return payload.decode()

    def receive(self):
        """Return the next message, or None once the connection is over."""
        if self.closed:
            raise WebSocketError("connection is already closed")
        try:
            return self.read_message()
        except MessageTooBig as error:
            self.fail(1009, str(error))
        except UnicodeError:
            self.fail(1007, "invalid UTF-8 in a text message")
        except ProtocolError as error:
            self.fail(1002, str(error) or "protocol error")
        except OSError:
            # The peer went away (WebSocketError is an OSError too): nothing to answer.
            self.close(1006)
        return None

    def fail(self, code, reason):
        """Close on a client's error, then discard what it still sends until it hangs up."""
        self.close(code, reason)
        # Hanging up on unread bytes makes the kernel send a reset, which can destroy
        # our close frame before the client reads it: it would never learn the code.
        sock = self.handler.socket
        try:
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(CLOSE_TIMEOUT, False):
                while sock.recv(65536):
                    pass
        except OSError:
            pass

    def send_frame(self, message, opcode):
        """Send one frame, never interleaved with another greenlet's frame."""
        with self.write_lock:
            super().send_frame(message, opcode)

    def close(self, code=1000, message=b""):
        """Send a close frame that carries its code and reason, then stop using the socket."""
        if self.closed:
            return
        reason = message.encode() if isinstance(message, str) else bytes(message or b"")
        try:
            # 1005 and 1006 are never sent: they stand for "no code" and "no close frame".
            if code not in (1005, 1006):
                self.send_frame(struct.pack("!H", code) + reason[:123], self.OPCODE_CLOSE)
        except (OSError, AttributeError):
            pass  # The socket is already gone; there is nobody to tell.
        finally:
            self.closed = True

    def keep_alive(self):
        """Ping the peer every PING_INTERVAL; drop it if nothing came back in PING_TIMEOUT."""
        while not self.closed:
            gevent.sleep(PING_INTERVAL)
            pinged = time.monotonic()
            try:
                # A peer that stopped reading can block the ping: that is no answer either.
                with gevent.Timeout(PING_TIMEOUT, False):
                    self.send_frame(b"", self.OPCODE_PING)
            except OSError:
                return
            gevent.sleep(max(0, pinged + PING_TIMEOUT - time.monotonic()))
            # Any frame since the ping counts as an answer, the pong or a message.
            if self.last_heard < pinged:
                peer = self.handler.client_address
                self.logger.info("no pong in %s s: dropping %s", PING_TIMEOUT, peer)
                self.abort()

    def abort(self):
        """Drop the TCP connection at once, for a peer that stopped reading."""
        # The greenlet reading this socket then sees it end, and cleans up.
        try:
            self.handler.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# The WebSockets repaired() accepts: this one, and simple.py's, which adds itself.
REPAIRED = [WebSocket]


class Handler(WebSocketHandler):
    """gevent-websocket's handler with an Origin check and the repaired WebSocket."""

    def upgrade_websocket(self):
        """Refuse a foreign Origin with 403 before the handshake completes."""
        is_upgrade = self.environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if is_upgrade and not origin_allowed(self.environ.get("HTTP_ORIGIN")):
            self.logger.warning("refused WebSocket from Origin %s", self.environ["HTTP_ORIGIN"])
            self.start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"Origin not allowed.\n"]
        return super().upgrade_websocket()

    def upgrade_connection(self):
        """Complete the handshake, then hand the app our WebSocket instead of upstream's."""
        result = super().upgrade_connection()
        if self.environ.get("wsgi.websocket"):
            # Retire upstream's object first, or its __del__ writes a close frame.
            self.websocket.closed = True
            self.websocket = WebSocket(self.environ, upstream.Stream(self), self)
            self.environ["wsgi.websocket"] = self.websocket
        return result

    def run_websocket(self):
        """Run the app on the WebSocket, pinging the peer meanwhile."""
        pinger = gevent.spawn(self.websocket.keep_alive)
        try:
            super().run_websocket()
        finally:
            pinger.kill()


class Worker(GeventWebSocketWorker):
    """gunicorn's gevent worker serving WebSockets through `Handler`."""

    wsgi_handler = Handler

    def handle_exit(self, sig, frame):
        """On SIGTERM, close every WebSocket with 1001, then let gunicorn stop gracefully."""
        gevent.spawn(close_all, 1001, "server shutting down")
        super().handle_exit(sig, frame)

    # Ctrl+C (SIGINT) and SIGQUIT too: gunicorn's quick shutdown would drop every
    # client without a close frame, and print a traceback from a greenlet.
    handle_quit = handle_exit
