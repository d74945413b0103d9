"""Step 4: step03's chat across processes, with Redis pub/sub as the backplane."""

import argparse
import asyncio
import contextlib
import fnmatch
import json
import os
import secrets
from pathlib import Path

import falcon
import falcon.asgi
import falcon.media
import uvicorn
from falcon import WebSocketDisconnected, WebSocketPayloadType
from falcon.errors import PayloadTypeError
from redis.exceptions import RedisError

from rooms import UNAVAILABLE, RedisRoom, Room, log

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"

# Explicit limits, the same as step02's.
ECHO_MAX_MESSAGE_SIZE = 16 * 2**20  # bytes, uvicorn's default, enforced by uvicorn
CHAT_MAX_MESSAGE_SIZE = 64 * 2**10  # bytes; a bigger message is closed with 1009
CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds to send a client's queue before it is dropped
CLOSE_TIMEOUT = 1  # seconds shutdown waits for the close frames to go out
PING_INTERVAL = float(os.environ.get("PING_INTERVAL", "20"))  # seconds between pings
PING_TIMEOUT = float(os.environ.get("PING_TIMEOUT", "20"))  # seconds to wait for the pong
# With REDIS_URL set, every process using that Redis shares one chat (rooms.py).
REDIS_URL = os.environ.get("REDIS_URL")

# Browsers send Origin; a page on another site must not use its visitor's browser
# to talk to us. The default suits development: pages on localhost and file:// ("null").
DEFAULT_ALLOWED_ORIGINS = "http://localhost:*,http://127.0.0.1:*,null"
ALLOWED_ORIGINS = os.environ.get("ALLOWED_ORIGINS", DEFAULT_ALLOWED_ORIGINS).split(",")

PLAIN_GET_TEXT = (
    "This endpoint is for Websockets only.\n"
    "Connect with a WebSocket client, e.g. client/index.html.\n"
)


def origin_allowed(origin):
    """Tell whether a handshake's Origin header may open a WebSocket."""
    # Clients that are not browsers send no Origin and cannot be abused this way.
    if origin is None:
        return True
    return any(fnmatch.fnmatchcase(origin, pattern.strip()) for pattern in ALLOWED_ORIGINS)


def refuse_plain_get(resp):
    """Answer a GET without an upgrade: 426 says a WebSocket is what this URL speaks."""
    resp.status = falcon.HTTP_426
    resp.set_header("Upgrade", "websocket")
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = PLAIN_GET_TEXT


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


class AsIs(falcon.media.TextBaseHandlerWS, falcon.media.BinaryBaseHandlerWS):
    """A media handler that leaves payloads as they are (str for text, bytes for binary)."""

    def serialize(self, media):
        """Send the payload as it is."""
        return media

    def deserialize(self, payload):
        """Return the payload as it arrived."""
        return payload


class WebSocketAPI:
    """The post's endpoint: echoes every text and binary message back."""

    async def on_get(self, req, resp):
        """Answer a plain GET (no upgrade) with 426."""
        refuse_plain_get(resp)

    async def on_websocket(self, req, ws):
        """Echo every message until the client leaves: Falcon calls this for the upgrade."""
        await ws.accept()
        with open_websockets.track(ws):
            try:
                while True:
                    # receive_media() takes text or binary; AsIs keeps it unchanged.
                    message = await ws.receive_media()
                    if isinstance(message, str):
                        await ws.send_text(message)
                    else:
                        await ws.send_data(message)
            except WebSocketDisconnected:
                return  # The client closed or vanished; uvicorn has answered it.


class ChatClient:
    """One /chat connection with its own outbox, so a slow reader stalls nobody else."""

    def __init__(self, ws):
        self.id = secrets.token_hex(3)
        self.ws = ws
        self.outbox = asyncio.Queue(OUTBOX_SIZE)
        self.welcomed = False  # set by Room.join (rooms.py); until then, events pass it by

    def post(self, event):
        """Queue an event for this client; False if it is not keeping up."""
        try:
            self.outbox.put_nowait(json.dumps(event))
            return True
        except asyncio.QueueFull:
            return False

    async def send_queued(self, message):
        """Send message and all queued behind it; False once the end marker comes."""
        while message is not None:
            await self.ws.send_text(message)
            if self.outbox.empty():
                return True
            message = self.outbox.get_nowait()
        return False

    async def deliver(self):
        """Send queued events until the connection ends; drop the client if it stalls."""
        try:
            while True:
                message = await self.outbox.get()
                # One timer per batch, not per message: before Python 3.12 each wait_for()
                # starts a task, too slow when 1,000 clients join at once.
                if not await asyncio.wait_for(self.send_queued(message), SEND_TIMEOUT):
                    return
        except (WebSocketDisconnected, asyncio.TimeoutError):
            self.abort()

    def abort(self):
        """Close a client that stopped reading, without waiting on it."""
        self.closing = asyncio.create_task(self.close_stuck())

    async def close_stuck(self):
        """Send 1008 if the socket drains within SEND_TIMEOUT."""
        # ASGI has no way to cut a connection: uvicorn frees the socket once the peer
        # reads again or goes away. The room has already forgotten this client.
        with contextlib.suppress(asyncio.TimeoutError, WebSocketDisconnected):
            await asyncio.wait_for(self.ws.close(1008, "too slow to receive"), SEND_TIMEOUT)

    async def stop(self, writer):
        """Let the writer flush what is queued, within SEND_TIMEOUT, then end it."""
        try:
            self.outbox.put_nowait(None)  # the end marker: deliver() stops there
            await asyncio.wait_for(writer, SEND_TIMEOUT)
        except (asyncio.QueueFull, asyncio.TimeoutError):
            writer.cancel()


class ChatResource:
    """A room: every text message goes to everyone connected, as JSON."""

    def __init__(self, room):
        self.room = room

    async def on_get(self, req, resp):
        """Answer a plain GET (no upgrade) with 426."""
        refuse_plain_get(resp)

    async def on_websocket(self, req, ws):
        """Accept the client into the chat; Falcon calls this for the upgrade."""
        await ws.accept()
        with open_websockets.track(ws):
            await self.chat(ws)

    async def chat(self, ws):
        """Relay this client's messages to the room until it leaves."""
        client = ChatClient(ws)
        writer = asyncio.create_task(client.deliver())
        # A client that stops reading leaves the room as soon as its writer gives up.
        writer.add_done_callback(lambda _: self.room.drop(client))
        try:
            await self.room.join(client)
            while True:
                message = await ws.receive_text()
                # uvicorn reads up to ws_max_size; the chat's own limit is smaller.
                if len(message.encode()) > CHAT_MAX_MESSAGE_SIZE:
                    await ws.close(1009, f"message over {CHAT_MAX_MESSAGE_SIZE} bytes")
                    break
                text = message.strip()
                if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
                    error = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
                    client.post({"type": "error", "error": error})
                    continue
                # Send the message to every client, the sender included.
                try:
                    await self.room.publish({"type": "message", "id": client.id, "text": text})
                except RedisError:
                    # Say so: pub/sub would not keep the message for later.
                    client.post({"type": "error", "error": UNAVAILABLE})
        except PayloadTypeError:
            await ws.close(1003, "chat accepts text messages only")
        except WebSocketDisconnected:
            pass
        except RedisError:
            # Joining needs Redis; the client may try again later.
            await ws.close(1011, "chat backplane unavailable")
        finally:
            await self.room.leave(client)
            await client.stop(writer)


class HealthResource:
    """A route scripts and tests poll; it also reports the chat's size."""

    def __init__(self, room):
        self.room = room

    async def on_get(self, req, resp):
        resp.media = {"status": "ok", "chat_clients": len(self.room.clients)}


room = RedisRoom(REDIS_URL) if REDIS_URL else Room()
# The room is also middleware: Falcon starts and stops its background tasks.
app = falcon.asgi.App(middleware=[OriginCheck(), room])
# uvicorn implements ASGI 2.4, so Falcon's own receive buffer only adds latency.
app.ws_options.max_receive_queue = 0
app.ws_options.media_handlers[WebSocketPayloadType.TEXT] = AsIs()
app.ws_options.media_handlers[WebSocketPayloadType.BINARY] = AsIs()
app.add_route("/", WebSocketAPI())
app.add_route("/chat", ChatResource(room))
app.add_route("/health", HealthResource(room))
app.add_static_route("/client", CLIENT_DIR, fallback_filename="index.html")


class Server(uvicorn.Server):
    """uvicorn, except that clients hear 1001 (going away) at shutdown, not 1012."""

    async def shutdown(self, sockets=None):
        """Say 1001 to every client, then stop as uvicorn does."""
        await open_websockets.close_all(1001, "server shutting down")
        await super().shutdown(sockets)


def main():
    """Serve the app with uvicorn, every WebSocket setting spelled out."""
    parser = argparse.ArgumentParser(description=__doc__)
    # Loopback by default: the post's 0.0.0.0 exposes the server to the network.
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    log(f"serving ws://{args.host}:{args.port}/ and /chat, "
        f"client at http://{args.host}:{args.port}/client/")
    if REDIS_URL:
        log("the chat is shared through Redis (REDIS_URL) with every process using it")
    else:
        log("REDIS_URL is not set: one process, the chat in memory as in step03")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        ws_max_size=ECHO_MAX_MESSAGE_SIZE,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        timeout_graceful_shutdown=3,
    )
    # uvicorn shuts down cleanly on Ctrl+C, then raises it again: no traceback for that.
    with contextlib.suppress(KeyboardInterrupt):
        Server(config).run()


if __name__ == "__main__":
    main()
