"""Step 2's chat: one room, one outbox per client, so a slow reader stalls nobody else."""

import json
import secrets

import gevent
from gevent.queue import Full, Queue
from geventwebsocket import WebSocketError

CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
TEXT_ERROR = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds one send may block before the client is dropped


class ChatClient:
    """One /chat connection with its own outbox, drained by its own greenlet."""

    def __init__(self, ws):
        # 64 random bits: with 24, a room of 1,000 reused a taken id once in 33 joins.
        self.id = secrets.token_hex(8)
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
            self.drop()

    def drop(self):
        """Cut a client that stopped reading: it sees its connection end."""
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

    def chat(self, ws):
        """Relay this client's messages to the room until it leaves."""
        client = ChatClient(ws)
        writer = gevent.spawn(client.deliver)
        self.join(client)
        try:
            while (message := ws.receive()) is not None:
                if not isinstance(message, str):
                    ws.fail(1003, "chat accepts text messages only")
                    break
                self.say(client, message)
        finally:
            self.leave(client)
            client.stop(writer)

    def say(self, client, message):
        """Send a message to every client, the sender included; or tell the sender why not."""
        text = message.strip()
        if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
            client.post({"type": "error", "error": TEXT_ERROR})
        else:
            self.broadcast({"type": "message", "id": client.id, "text": text})

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
                client.drop()
                self.leave(client)
