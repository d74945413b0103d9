"""Step 6: step 5's app for the public: a login (auth.py) and limits (limits.py), behind nginx."""

import logging
import os
import sys
from pathlib import Path

import falcon
import falcon.asgi
import falcon.media
from falcon import WebSocketDisconnected, WebSocketPayloadType

from auth import Login, Logout, SessionInfo, Sessions
from backplane import RedisRoom
from limits import HandshakeLimit
from protections import OriginCheck, open_websockets

# Sessions, limits and the chat live in Redis, shared by every process using it.
REDIS_URL = os.environ.get("REDIS_URL") or sys.exit("step06 needs REDIS_URL: see its README")
# The shared client, when this folder sits in the repository beside it.
CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"

PLAIN_GET_TEXT = (
    "This endpoint is for Websockets only.\n"
    "Connect with a WebSocket client, e.g. client/index.html.\n"
)


def refuse_plain_get(resp):
    """Answer a GET without an upgrade: 426 says a WebSocket is what this URL speaks."""
    resp.status = falcon.HTTP_426
    resp.set_header("Upgrade", "websocket")
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = PLAIN_GET_TEXT


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

    def __init__(self, sessions):
        self.sessions = sessions

    async def on_get(self, req, resp):
        """Answer a plain GET (no upgrade) with 426."""
        refuse_plain_get(resp)

    async def on_websocket(self, req, ws):
        """Echo every message until the client leaves: Falcon calls this for the upgrade."""
        await ws.accept()
        with open_websockets.track(ws), self.sessions.track(ws, req):
            try:
                while True:
                    # receive_media() takes text or binary; AsIs keeps it unchanged.
                    message = await ws.receive_media()
                    # Text comes back as text, binary as binary.
                    if isinstance(message, str):
                        await ws.send_text(message)
                    else:
                        await ws.send_data(message)
            except WebSocketDisconnected:
                return  # The client closed or vanished; uvicorn has answered it.


class ChatResource:
    """A room: every text message goes to everyone connected, as JSON (chat.py)."""

    def __init__(self, room, sessions):
        self.room = room
        self.sessions = sessions

    async def on_get(self, req, resp):
        """Answer a plain GET (no upgrade) with 426."""
        refuse_plain_get(resp)

    async def on_websocket(self, req, ws):
        """Chat as the session's user; ?last_id= and ?history= say what to catch up on."""
        await ws.accept()
        with open_websockets.track(ws), self.sessions.track(ws, req):
            await self.room.chat(ws, req.params, req.context.user)


class HealthResource:
    """A route scripts and tests poll; it also reports the chat's size."""

    def __init__(self, room):
        self.room = room

    async def on_get(self, req, resp):
        """Answer ok, with the number of chat clients."""
        resp.media = {"status": "ok", "chat_clients": len(self.room.clients)}


room = RedisRoom(REDIS_URL)
limit = HandshakeLimit(room.redis)
sessions = Sessions(room.redis, limit)
# In this order, each refused before the upgrade: a foreign Origin, an address over its
# handshake rate, a handshake without a live session. Then the room's background tasks.
app = falcon.asgi.App(middleware=[OriginCheck(), limit, sessions, room])
# uvicorn implements ASGI 2.4, so Falcon's own receive buffer only adds latency.
app.ws_options.max_receive_queue = 0
app.ws_options.media_handlers[WebSocketPayloadType.TEXT] = AsIs()
app.ws_options.media_handlers[WebSocketPayloadType.BINARY] = AsIs()
app.add_route("/", WebSocketAPI(sessions))
app.add_route("/chat", ChatResource(room, sessions))
app.add_route("/health", HealthResource(room))
app.add_route("/login", Login(sessions))
app.add_route("/logout", Logout(sessions))
app.add_route("/session", SessionInfo(sessions))
# A copy of this folder alone still serves its WebSockets, without the client.
if CLIENT_DIR.is_dir():
    app.add_static_route("/client", CLIENT_DIR, fallback_filename="index.html")
else:
    logging.getLogger(__name__).warning("no client at %s: /client/ is not served", CLIENT_DIR)
