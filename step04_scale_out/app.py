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
import redis.asyncio as redis
import uvicorn
from falcon import WebSocketDisconnected, WebSocketPayloadType
from falcon.errors import PayloadTypeError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"

# Explicit limits, the same as step02's.
ECHO_MAX_MESSAGE_SIZE = 16 * 2**20  # bytes, uvicorn's default, enforced by uvicorn
CHAT_MAX_MESSAGE_SIZE = 64 * 2**10  # bytes; a bigger message is closed with 1009
CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds to send a client's queue before it is dropped
PING_INTERVAL = float(os.environ.get("PING_INTERVAL", "20"))  # seconds between pings
PING_TIMEOUT = float(os.environ.get("PING_TIMEOUT", "20"))  # seconds to wait for the pong

# The backplane: with REDIS_URL set, every process shares one chat through Redis.
REDIS_URL = os.environ.get("REDIS_URL")
CHANNEL = "chat:events"  # pub/sub channel carrying every chat event as JSON
MEMBERS = "chat:members"  # hash: client id -> id of the process it is connected to
ALIVE = "chat:alive:"  # + process id: a key that expires unless the process renews it
HEARTBEAT_INTERVAL = 2  # seconds between renewals (and sweeps for dead processes)
PROCESS_TTL = 6  # seconds without renewal before a process and its clients are gone
RETRY_DELAY = 1  # seconds between attempts to subscribe again while Redis is down
SUBSCRIBE_WAIT = 5  # seconds the server waits at start for its subscription
UNAVAILABLE = "chat backplane unavailable, message not delivered"

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
        """Close every open WebSocket with the same code."""
        closing = [ws.close(code, reason) for ws in list(self.sockets) if not ws.closed]
        await asyncio.gather(*closing, return_exceptions=True)


open_websockets = OpenWebSockets()


class AsIs(falcon.media.TextBaseHandlerWS, falcon.media.BinaryBaseHandlerWS):
    """A media handler that leaves payloads as they are (str for text, bytes for binary)."""

    def serialize(self, media):
        return media

    def deserialize(self, payload):
        return payload


class WebSocketAPI:
    """The post's endpoint: echoes every text and binary message back."""

    async def on_get(self, req, resp):
        refuse_plain_get(resp)

    async def on_websocket(self, req, ws):
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
        self.welcomed = False  # until then, the chat's events pass it by

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
                # One timeout for the whole queue, not one per message: before Python 3.12
                # each wait_for() runs a task, and 1,000 clients joining at once then
                # overflow every outbox.
                if not await asyncio.wait_for(self.send_queued(message), SEND_TIMEOUT):
                    return
        except (WebSocketDisconnected, asyncio.TimeoutError):
            self.abort()

    def abort(self):
        """Close a client that stopped reading, without waiting on it."""
        asyncio.ensure_future(self.ws.close(1008, "too slow to receive"))

    async def stop(self, writer):
        """Let the writer flush what is queued, within SEND_TIMEOUT, then end it."""
        try:
            self.outbox.put_nowait(None)
            await asyncio.wait_for(writer, SEND_TIMEOUT)
        except (asyncio.QueueFull, asyncio.TimeoutError):
            writer.cancel()


def log(text):
    """Print a line about the backplane, at once."""
    print(f"step04: {text}", flush=True)


class Room:
    """Everyone connected to /chat: without Redis, that is this process's clients."""

    def __init__(self):
        self.clients = {}

    async def join(self, client):
        self.clients[client.id] = client
        count = await self.add(client.id)
        client.post({"type": "welcome", "id": client.id, "count": count})
        client.welcomed = True
        await self.publish({"type": "join", "id": client.id, "count": count})

    async def leave(self, client):
        if self.clients.pop(client.id, None) is not None:
            await self.remove(client.id)

    async def add(self, client_id):
        """Count the chat with a newcomer in it."""
        return len(self.clients)

    async def remove(self, client_id):
        """Tell everyone a client has gone."""
        await self.publish({"type": "leave", "id": client_id, "count": len(self.clients)})

    async def publish(self, event):
        """Send an event to the whole chat, which here is this process."""
        self.deliver(event)

    def deliver(self, event):
        """Queue an event for every client here; drop those whose outbox is full."""
        # Iterate over a copy: dropping a client changes the dict.
        for client in list(self.clients.values()):
            # A newcomer hears nothing before its welcome, and not of its own join.
            if not client.welcomed or (event["type"] == "join" and client.id == event["id"]):
                continue
            if not client.post(event):
                client.abort()
                del self.clients[client.id]
                asyncio.ensure_future(self.remove(client.id))

    async def process_startup(self, scope, event):
        """Falcon calls this when the server starts (ASGI lifespan)."""

    async def process_shutdown(self, scope, event):
        """Falcon calls this when the server stops, after the clients are closed."""


class RedisRoom(Room):
    """Everyone connected to any process sharing one Redis.

    Events go through a pub/sub channel that every process subscribes to; the
    members are a hash that each process renews, so the dead ones can be swept.
    """

    def __init__(self, url):
        super().__init__()
        self.process = secrets.token_hex(4)
        # One immediate retry on a new connection: enough once Redis has restarted.
        self.redis = redis.from_url(url, decode_responses=True, socket_connect_timeout=2,
                                    socket_timeout=5, retry=Retry(NoBackoff(), 1))
        # Renewing the members and removing one must not interleave (see heartbeat()).
        self.lock = asyncio.Lock()
        self.subscribed = asyncio.Event()
        self.tasks = []

    async def add(self, client_id):
        # MULTI/EXEC: the count is the hash right after this client joined.
        async with self.redis.pipeline() as pipe:
            _, count = await pipe.hset(MEMBERS, client_id, self.process).hlen(MEMBERS).execute()
        return count

    async def remove(self, client_id):
        # Several processes may sweep the same client: only the one whose HDEL
        # removed it announces the leave.
        try:
            async with self.lock, self.redis.pipeline() as pipe:
                removed, count = await pipe.hdel(MEMBERS, client_id).hlen(MEMBERS).execute()
            if removed:
                await self.publish({"type": "leave", "id": client_id, "count": count})
        except RedisError as error:
            log(f"leave of {client_id} not announced yet ({error}); the sweep will retry")

    async def publish(self, event):
        # PUBLISH answers how many subscribers got the event: none means that not
        # even this process is subscribed (yet), so nobody will see it.
        if not await self.redis.publish(CHANNEL, json.dumps(event)):
            raise RedisConnectionError("no process is subscribed to the chat")

    async def listen(self):
        """Deliver every process's events to the clients here; subscribe again after errors."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    log("subscribed to the Redis channel")
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        self.deliver(json.loads(message["data"]))
            except RedisError as error:
                log(f"Redis unavailable ({error}); subscribing again in {RETRY_DELAY} s")
                await asyncio.sleep(RETRY_DELAY)

    async def heartbeat(self):
        """Renew this process and its members, then sweep the dead, every few seconds."""
        while True:
            try:
                # Registering the members again restores them after Redis restarts.
                async with self.lock, self.redis.pipeline() as pipe:
                    pipe.set(ALIVE + self.process, 1, ex=PROCESS_TTL)
                    if self.clients:
                        pipe.hset(MEMBERS, mapping=dict.fromkeys(self.clients, self.process))
                    await pipe.execute()
                await self.sweep()
            except RedisError as error:
                log(f"heartbeat failed ({error})")
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def sweep(self):
        """Remove the members of dead processes, and ours whose leave did not reach Redis."""
        members = await self.redis.hgetall(MEMBERS)
        others = set(members.values()) - {self.process}
        alive = {owner for owner in others if await self.redis.exists(ALIVE + owner)}
        for client_id, owner in members.items():
            # Ours but gone: its leave missed Redis. Another's: its process died.
            mine = owner == self.process
            if (client_id not in self.clients) if mine else (owner not in alive):
                await self.remove(client_id)

    async def process_startup(self, scope, event):
        self.tasks = [asyncio.create_task(self.listen()), asyncio.create_task(self.heartbeat())]
        # Serve once subscribed, so the first clients hear the chat; but if Redis is
        # down, serve anyway: the chat starts when Redis does.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), SUBSCRIBE_WAIT)

    async def process_shutdown(self, scope, event):
        for task in self.tasks:
            task.cancel()
        await self.redis.aclose()


class ChatResource:
    """A room: every text message goes to everyone connected, as JSON."""

    def __init__(self, room):
        self.room = room

    async def on_get(self, req, resp):
        refuse_plain_get(resp)

    async def on_websocket(self, req, ws):
        await ws.accept()
        with open_websockets.track(ws):
            await self.chat(ws)

    async def chat(self, ws):
        """Relay this client's messages to the room until it leaves."""
        client = ChatClient(ws)
        writer = asyncio.create_task(client.deliver())
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
    Server(config).run()


if __name__ == "__main__":
    main()
