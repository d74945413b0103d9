"""Step 2: the post's Falcon app with WebSockets, on gevent + gevent-websocket."""

import json
import secrets
from pathlib import Path

import falcon
import gevent
from gevent.queue import Full, Queue
from geventwebsocket import WebSocketError

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"

# Explicit limits, the same as step03's.
ECHO_MAX_MESSAGE_SIZE = 16 * 2**20  # bytes, uvicorn's default
CHAT_MAX_MESSAGE_SIZE = 64 * 2**10  # bytes; a bigger frame is closed with 1009
CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds one send may block before the client is dropped

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
            return
        # Whatever we set on resp from here on is thrown away: the 101 is sent.
        self.on_websocket(req, ws)

    def on_websocket(self, req, ws):
        """Echo every message until the client leaves (the post's loop, made to end)."""
        ws.max_message_size = ECHO_MAX_MESSAGE_SIZE
        try:
            while True:
                message = ws.receive()
                # None: the client closed, vanished or broke the protocol.
                if message is None:
                    return
                # Text comes back as text, binary as binary.
                ws.send(message, binary=not isinstance(message, str))
        except WebSocketError:
            return  # The socket died while sending; nobody is left to answer.


class ChatClient:
    """One /chat connection with its own outbox, so a slow reader stalls nobody else."""

    def __init__(self, ws):
        self.id = secrets.token_hex(3)
        self.ws = ws
        self.outbox = Queue(OUTBOX_SIZE)

    def post(self, event):
        """Queue an event for this client; False if it is not keeping up."""
        try:
            self.outbox.put_nowait(json.dumps(event))
            return True
        except Full:
            return False

    def deliver(self):
        """Send queued events until the connection ends; drop the client if it stalls."""
        try:
            for message in self.outbox:
                with gevent.Timeout(SEND_TIMEOUT):
                    self.ws.send(message)
        except (WebSocketError, gevent.Timeout):
            self.ws.abort()

    def stop(self, writer):
        """Let the writer flush what is queued, within SEND_TIMEOUT, then end it."""
        try:
            # Iterating over a gevent Queue ends at StopIteration: deliver() stops there.
            self.outbox.put_nowait(StopIteration)
            writer.join(timeout=SEND_TIMEOUT)
        except Full:
            pass
        writer.kill()


class Room:
    """Everyone connected to /chat."""

    def __init__(self):
        self.clients = {}

    def join(self, client):
        """Add a client; it gets a welcome, everyone else a join."""
        self.clients[client.id] = client
        client.post({"type": "welcome", "id": client.id, "count": len(self.clients)})
        self.broadcast({"type": "join", "id": client.id, "count": len(self.clients)}, client)

    def leave(self, client):
        """Remove a client; everyone else gets a leave."""
        if self.clients.pop(client.id, None) is not None:
            self.broadcast({"type": "leave", "id": client.id, "count": len(self.clients)})

    def broadcast(self, event, skip=None):
        """Queue an event for every client; drop those whose outbox is full."""
        # Iterate over a copy: leave() below changes the dict.
        for client in list(self.clients.values()):
            if client is not skip and not client.post(event):
                client.ws.abort()
                self.leave(client)


class ChatResource:
    """A room: every text message goes to everyone connected, as JSON."""

    def __init__(self, room):
        self.room = room

    def on_get(self, req, resp):
        """Serve the upgraded WebSocket, or answer a plain GET with 426."""
        ws = req.env.get("wsgi.websocket")
        if ws is None:
            refuse_plain_get(resp)
            return
        self.on_websocket(req, ws)

    def on_websocket(self, req, ws):
        """Relay this client's messages to the room until it leaves."""
        ws.max_message_size = CHAT_MAX_MESSAGE_SIZE
        client = ChatClient(ws)
        writer = gevent.spawn(client.deliver)
        self.room.join(client)
        try:
            while (message := ws.receive()) is not None:
                if not isinstance(message, str):
                    ws.fail(1003, "chat accepts text messages only")
                    break
                text = message.strip()
                if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
                    error = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
                    client.post({"type": "error", "error": error})
                    continue
                # Send the message to every client, the sender included.
                self.room.broadcast({"type": "message", "id": client.id, "text": text})
        finally:
            self.room.leave(client)
            client.stop(writer)


class HealthResource:
    """A route scripts and tests poll; it also reports the chat's size."""

    def __init__(self, room):
        self.room = room

    def on_get(self, req, resp):
        resp.media = {"status": "ok", "chat_clients": len(self.room.clients)}


room = Room()
app = falcon.App()
app.add_route("/", WebSocketAPI())
app.add_route("/chat", ChatResource(room))
app.add_route("/health", HealthResource(room))
app.add_static_route("/client", CLIENT_DIR, fallback_filename="index.html")
