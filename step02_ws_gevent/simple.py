"""Step 2 on the maintained path: simple-websocket serves the same app.py and chat.py on gevent.

gevent-websocket has had no release since 2017. simple-websocket, built on wsproto, is
maintained, and Flask-Sock and python-engineio run on it. `AcceptWebSockets` is WSGI
middleware: it upgrades a WebSocket request and puts a `WebSocket` in
environ["wsgi.websocket"], where app.py looks for one. `WebSocket` is simple-websocket's
server with the interface app.py and chat.py use. simple-websocket 1.1.0 still needs:

- whole frames: it writes with socket.send(), which may write part of a frame (`LockedSocket`);
- a size limit read from the frame header, not after the payload arrived (`SizeLimit`);
- one file descriptor per connection, not a duplicate of the socket (`WebSocket.__init__`);
- receive() and close() that do not raise once the connection is over;
- nothing written after the close: gevent's pywsgi would read the next "request" from the
  socket and answer it, and closing on unread bytes resets the connection (`WebSocket.end`).

Serve it with wsgi_simple.py; it needs gevent's monkey-patching, as simple-websocket runs
one reader thread per connection (a greenlet, once patched).
"""

import contextlib
import logging
import socket
import weakref

import gevent
from gevent.lock import Semaphore
from geventwebsocket import WebSocketError
from simple_websocket import ConnectionClosed, Server
from simple_websocket import ConnectionError as HandshakeError
from simple_websocket.ws import Base
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, ParseFailed, RsvBits
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

import protections
from protections import (
    CLOSE_TIMEOUT,
    ECHO_MAX_MESSAGE_SIZE,
    PING_INTERVAL,
    PING_TIMEOUT,
    open_websockets,
    origin_allowed,
)

# simple-websocket accepts permessage-deflate from every client that offers it, then inflates
# each read whole, up to about 1,000 times its size, and wsproto copies the result several
# times before any size check sees it. Off here; README.md says what turning it on costs.
COMPRESSION = False
# Bytes per read: with simple-websocket's 4 KiB, echoing 1 MiB took three times the CPU.
RECEIVE_BYTES = 64 * 2**10
log = logging.getLogger("step02")


class LockedSocket:
    """The socket as simple-websocket writes to it: whole frames, one writer at a time."""

    def __init__(self, sock):
        self.sock = sock
        # Frames written from two greenlets (a reply and a broadcast) must not interleave.
        self.lock = Semaphore()

    def send(self, data):
        """Write a whole frame; cut a peer that takes none of it in PING_TIMEOUT."""
        try:
            with gevent.Timeout(PING_TIMEOUT), self.lock:
                self.sock.sendall(data)
        except gevent.Timeout:
            # A peer that does not read our pong or close is as gone as one that does not pong.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            raise OSError("the peer stopped reading") from None
        return len(data)

    def close(self):
        """Leave the socket open when simple-websocket is done: pywsgi closes it."""

    def __getattr__(self, name):
        # recv(), fileno(), shutdown(): the socket's own.
        return getattr(self.sock, name)


class SizeLimit(Extension):
    """Close with 1009 as soon as frame headers announce more than max_message_size."""

    # Never offered or negotiated: wsproto calls the hooks of every accepted extension,
    # and frame_inbound_header sees each frame's length before its payload.
    name = "step02-size-limit"

    def __init__(self, websocket):
        self.websocket = websocket
        self.message_size = 0

    def enabled(self):
        """Always on, for every frame."""
        return True

    def offer(self):
        """Nothing to offer: this runs on our side only."""
        return False

    def frame_inbound_header(self, proto, opcode, rsv, payload_length):
        """Add up the lengths of a message's frames; refuse it once they pass the limit."""
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            self.message_size = 0
        if not opcode.iscontrol():
            # With COMPRESSION, frames count as sent; simple-websocket counts what they inflate to.
            self.message_size += payload_length
            limit = self.websocket.max_message_size
            if self.message_size > limit:
                raise ParseFailed(f"message over {limit} bytes", CloseReason.MESSAGE_TOO_BIG)
        return RsvBits(False, False, False)


class LimitedConnection(WSConnection):
    """wsproto's server connection, accepting the upgrade with `SizeLimit` among its extensions."""

    def __init__(self, size_limit):
        super().__init__(ConnectionType.SERVER)
        self.size_limit = size_limit

    def send(self, event):
        """Send an event; the 101 also switches the size limit on, and compression off."""
        if isinstance(event, AcceptConnection):
            if not COMPRESSION:
                event.extensions.clear()
            event.extensions.append(self.size_limit)
        return super().send(event)


class WebSocket(Server):
    """simple-websocket's server with step02's interface, its repairs and its pings."""

    def __init__(self, environ):
        # Server.__init__ would read a duplicate of pywsgi's socket: two file descriptors per
        # connection, so 10,000 clients would need 20,000. Start Base on the socket itself,
        # found where Server finds it: for an upgrade, wsgi.input is pywsgi's socket reader.
        self.environ, self.subprotocols, self.mode = environ, [], "gevent"
        sock = environ["wsgi.input"].raw._sock
        Base.__init__(self, sock, connection_type=ConnectionType.SERVER,
                      receive_bytes=RECEIVE_BYTES, ping_interval=PING_INTERVAL,
                      max_message_size=ECHO_MAX_MESSAGE_SIZE)
        open_websockets.add(self)

    def handshake(self):
        """Answer the upgrade (101) through our socket wrapper and size limit."""
        self.sock = LockedSocket(self.sock)
        # A proxy: a cycle would keep each closed connection's buffers until the next
        # full garbage collection.
        self.ws = LimitedConnection(SizeLimit(weakref.proxy(self)))
        super().handshake()

    def receive(self, timeout=None):
        """Return the next message, or None once the connection is over."""
        try:
            return super().receive(timeout)
        except ConnectionClosed:
            return None

    def send(self, message, binary=None):
        """Send str as text, bytes as binary; WebSocketError once the connection is over."""
        if binary and isinstance(message, str):
            message = message.encode()
        if not self.connected:
            raise WebSocketError("the connection is closed")
        try:
            # Framing inside the lock: with compression, frames must go out in framing order.
            with self.sock.lock:
                self.sock.sendall(self.ws.send(Message(data=message)))
        except (OSError, LocalProtocolError) as error:
            raise WebSocketError(str(error)) from error

    def close(self, reason=1000, message=None):
        """Send a close frame once: `reason` is its code, `message` its text (library names)."""
        if not self.connected:
            return  # simple-websocket raises here; closing twice is no error for us
        self.connected = False
        try:
            self.sock.send(self.ws.send(CloseConnection(reason, message)))
        except (OSError, LocalProtocolError):
            pass  # The peer is gone or closed first: there is nobody to tell.
        finally:
            self.event.set()  # receive() returns None now

    def fail(self, code, reason):
        """Close on a client's error; `end` then drains what it still sends."""
        self.close(code, reason)

    def abort(self):
        """Drop the TCP connection at once, for a peer that stopped reading."""
        # The reader thread then sees the connection end, and receive() returns None.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def end(self, rfile):
        """Finish the connection: a close frame if none went out, then nothing more on the wire."""
        self.close()
        try:
            # Our FIN after the close frame. The reader thread reads the peer's answer and
            # stops; then we read until the peer hangs up, because closing on unread bytes
            # sends a reset, which can destroy the close frame before the peer reads it.
            self.sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(CLOSE_TIMEOUT, False):
                self.thread.join()
                while self.sock.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            self.abort()
            self.thread.join(CLOSE_TIMEOUT)
            # pywsgi reads the next request until its rfile is closed: it would answer what
            # follows the WebSocket (HTTP/1.1 400) on a connection that is over.
            rfile.close()


def ignore_response(status, headers, exc_info=None):
    """Swallow the app's HTTP response to an upgraded request: the 101 has been sent."""
    return lambda data: None


class AcceptWebSockets:
    """WSGI middleware: upgrade a WebSocket request, put the socket in environ["wsgi.websocket"]."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        """Pass plain HTTP on; refuse a foreign Origin; otherwise serve the WebSocket."""
        upgrade = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if environ["REQUEST_METHOD"] != "GET" or not upgrade:
            return self.app(environ, start_response)
        if not origin_allowed(environ.get("HTTP_ORIGIN")):
            log.warning("refused WebSocket from Origin %s", environ["HTTP_ORIGIN"])
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"Origin not allowed.\n"]
        try:
            # simple-websocket reads the socket, not pywsgi's read buffer: a client must wait
            # for the 101 before it sends a frame, as RFC 6455 (4.1) says it does.
            ws = environ["wsgi.websocket"] = WebSocket(environ)
        except (RemoteProtocolError, HandshakeError) as error:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [f"Bad WebSocket handshake: {error}\n".encode()]
        try:
            result = self.app(environ, ignore_response)
            getattr(result, "close", lambda: None)()
        except Exception:
            # pywsgi would answer an exception with a 500 after our 101: close with 1011.
            log.exception("the app failed on a WebSocket")
            ws.close(1011, "internal error")
        finally:
            # For an upgrade, gevent's pywsgi hands over its socket reader as wsgi.input.
            ws.end(environ["wsgi.input"])
            del environ["wsgi.websocket"]  # ws.environ is environ: no cycle left behind
        return []


# repaired() gives this WebSocket its per-route limit, as it does to protections.WebSocket.
protections.REPAIRED.append(WebSocket)
