"""Step 2: the post's Falcon app with WebSockets, on gevent + gevent-websocket (see wsgi.py)."""

import logging
from pathlib import Path

import falcon
from geventwebsocket import WebSocketError

from chat import Room
from protections import CHAT_MAX_MESSAGE_SIZE, ECHO_MAX_MESSAGE_SIZE, repaired

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


class WebSocketAPI:
    """The post's endpoint: echoes every text and binary message back."""

    def on_get(self, req, resp):
        """Serve the upgraded WebSocket, or answer a plain GET with 426."""
        # A WSGI app never gets on_websocket: gevent-websocket upgrades the GET,
        # sends the 101 itself and puts the socket in the WSGI environ.
        ws = req.env.get("wsgi.websocket")
        if ws is None:
            refuse_plain_get(resp)
        elif repaired(ws, ECHO_MAX_MESSAGE_SIZE):
            self.on_websocket(req, ws)

    def on_websocket(self, req, ws):
        """Echo every message until the client leaves (the post's loop, made to end)."""
        try:
            # None: the client closed, vanished or broke the protocol.
            while (message := ws.receive()) is not None:
                # Text comes back as text, binary as binary.
                ws.send(message, binary=not isinstance(message, str))
        except WebSocketError:
            return  # The socket died while sending; nobody is left to answer.


class ChatResource:
    """A room: every text message goes to everyone connected, as JSON (chat.py)."""

    def __init__(self, room):
        self.room = room

    def on_get(self, req, resp):
        """Serve the upgraded WebSocket, or answer a plain GET with 426."""
        ws = req.env.get("wsgi.websocket")
        if ws is None:
            refuse_plain_get(resp)
        elif repaired(ws, CHAT_MAX_MESSAGE_SIZE):
            self.on_websocket(req, ws)

    def on_websocket(self, req, ws):
        """Chat until the client leaves."""
        self.room.chat(ws)


class HealthResource:
    """A route scripts and tests poll; it also reports the chat's size."""

    def __init__(self, room):
        self.room = room

    def on_get(self, req, resp):
        """Answer ok, with the number of chat clients."""
        resp.media = {"status": "ok", "chat_clients": len(self.room.clients)}


room = Room()
app = falcon.App()
app.add_route("/", WebSocketAPI())
app.add_route("/chat", ChatResource(room))
app.add_route("/health", HealthResource(room))
# A copy of this folder alone still serves its WebSockets, without the client.
if CLIENT_DIR.is_dir():
    app.add_static_route("/client", CLIENT_DIR, fallback_filename="index.html")
else:
    logging.getLogger(__name__).warning("no client at %s: /client/ is not served", CLIENT_DIR)
