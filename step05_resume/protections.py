"""Step 3's protections: Origin, size limits, keepalive and a 1001 goodbye, around uvicorn.

uvicorn speaks the protocol right (close codes, size limit, UTF-8, pings); what it
cannot know is which pages may connect, how big a chat message may be, and that a
server going away should say 1001.
"""

import asyncio
import contextlib
import fnmatch
import logging
import os

import falcon
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# The largest message a client may send: uvicorn enforces the first on every route,
# the chat checks the second.
ECHO_MAX_MESSAGE_SIZE = 16 * 2**20  # bytes on "/", uvicorn's default
CHAT_MAX_MESSAGE_SIZE = 64 * 2**10  # bytes on /chat; a bigger message is closed with 1009
CLOSE_TIMEOUT = 1  # seconds a close frame gets to go out, at shutdown or after an error
# Compression (permessage-deflate): browsers always offer it, and uvicorn accepts it
# by default, on every route at once. Off here: see README.md, "Compression".
PER_MESSAGE_DEFLATE = False
PING_INTERVAL = float(os.environ.get("PING_INTERVAL", "20"))  # seconds between pings
PING_TIMEOUT = float(os.environ.get("PING_TIMEOUT", "20"))  # seconds to wait for the pong

# Browsers send Origin; a page on another site must not use its visitor's browser
# to talk to us. The default suits development: pages on localhost and file:// ("null").
DEFAULT_ALLOWED_ORIGINS = "http://localhost:*,http://127.0.0.1:*,null"
ALLOWED_ORIGINS = os.environ.get("ALLOWED_ORIGINS", DEFAULT_ALLOWED_ORIGINS).split(",")


def origin_allowed(origin):
    """Tell whether a handshake's Origin header may open a WebSocket."""
    # Clients that are not browsers send no Origin and cannot be abused this way.
    if origin is None:
        return True
    return any(fnmatch.fnmatchcase(origin, pattern.strip()) for pattern in ALLOWED_ORIGINS)


class ClientErrorsOnOneLine(logging.Filter):
    """Log a client's invalid UTF-8 on one line: uvicorn adds a traceback of its own code."""

    def filter(self, record):
        """Drop the traceback; keep the line (uvicorn has closed the connection with 1007)."""
        if record.getMessage().startswith("Invalid UTF-8"):
            record.exc_info = record.exc_text = None
        return True


# Any client can send bad bytes: a traceback each time would flood the log and hide real errors.
logging.getLogger("uvicorn.error").addFilter(ClientErrorsOnOneLine())


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's "websockets-sansio", except that a client's error is closed without a reset."""

    def handle_parser_exception(self):
        """Send the close (1002, 1007, 1009), then drop what the client still sends."""
        if self.close_sent:  # websockets discards the rest; nothing more to say
            return
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code,
                               "reason": close.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        # uvicorn hangs up here, on the rest of an oversized message still coming in:
        # the kernel then sends a reset, which can destroy our close frame before the
        # client reads it. Say we are done writing, read on, and hang up when it does.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.close)

    async def send(self, message):
        """As uvicorn's, except that closing a connection the client has already ended is done."""
        # uvicorn raises ClientDisconnected for it; Falcon's close() lets that through (its
        # sends translate it) and then closes again: two tracebacks per client that reset.
        if message["type"] == "websocket.close" and self.disconnected:
            return
        await super().send(message)


class OriginCheck:
    """Middleware refusing a foreign Origin before the handshake: the client gets 403."""

    async def process_request_ws(self, req, ws):
        """Refuse the handshake (HTTP 403) before on_websocket runs."""
        if not origin_allowed(req.get_header("Origin")):
            raise falcon.HTTPForbidden(description="Origin not allowed.")


class OpenWebSockets:
    """Every accepted WebSocket, so that shutdown can say goodbye (1001) to each."""

    def __init__(self):
        self.sockets = set()

    @contextlib.contextmanager
    def track(self, ws):
        """Remember ws while the block runs."""
        self.sockets.add(ws)
        try:
            yield
        finally:
            self.sockets.discard(ws)

    async def close_all(self, code, reason):
        """Close every open WebSocket with the same code, within CLOSE_TIMEOUT."""
        closing = [asyncio.create_task(ws.close(code, reason))
                   for ws in list(self.sockets) if not ws.closed]
        if not closing:
            return
        # A client that stopped reading would hold its close (and us) forever.
        _, stuck = await asyncio.wait(closing, timeout=CLOSE_TIMEOUT)
        for task in stuck:
            task.cancel()


open_websockets = OpenWebSockets()


class Server(uvicorn.Server):
    """uvicorn, except that clients hear 1001 (going away) at shutdown, not 1012."""

    async def shutdown(self, sockets=None):
        """Say 1001 to every client, cut those that stopped reading, then stop as uvicorn does."""
        await open_websockets.close_all(1001, "server shutting down")
        # A peer that stopped reading never takes its close frame, and its handler would
        # wait on a send until uvicorn cancels it (with a traceback): cut it, as step02 does.
        for connection in list(self.server_state.connections):
            is_websocket = getattr(connection, "scope", {}).get("type") == "websocket"
            transport = getattr(connection, "transport", None)
            if is_websocket and transport and transport.get_write_buffer_size():
                transport.abort()
        await super().shutdown(sockets)
