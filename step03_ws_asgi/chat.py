"""Step 3's chat: one room, one outbox per client, so a slow reader stalls nobody else."""

import asyncio
import contextlib
import json
import secrets

from falcon import WebSocketDisconnected
from falcon.errors import PayloadTypeError

from protections import CHAT_MAX_MESSAGE_SIZE

CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
TEXT_ERROR = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds to send a client's queue before it is dropped


class ChatClient:
    """One /chat connection with its own outbox, drained by its own task."""

    def __init__(self, ws):
        # 64 random bits: with 24, a room of 1,000 reused a taken id once in 33 joins.
        self.id = secrets.token_hex(8)
        self.ws = ws
        self.outbox = asyncio.Queue(OUTBOX_SIZE)
        self.closing = None

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
        except (WebSocketDisconnected, RuntimeError, asyncio.TimeoutError):
            # uvicorn raises RuntimeError, not a disconnect, for a send after its own
            # close (its ping timeout): the client is gone either way.
            self.drop()

    def drop(self):
        """Close a client that stopped reading, without waiting on it."""
        if self.closing is None:
            self.closing = asyncio.create_task(self.close_dropped())

    async def close_dropped(self):
        """Send 1008, however long the peer takes to read again."""
        # ASGI gives an app no way to cut a connection, and uvicorn writes nothing
        # while the peer is not reading: this close waits, unbounded, for the peer
        # to read (it then gets what was queued, and 1008) or to go away.
        with contextlib.suppress(WebSocketDisconnected):
            await self.ws.close(1008, "too slow to receive")

    async def stop(self, writer):
        """Let the writer flush what is queued, within SEND_TIMEOUT, then end it."""
        try:
            self.outbox.put_nowait(None)  # the end marker: deliver() stops there
            await asyncio.wait_for(writer, SEND_TIMEOUT)
        except (asyncio.QueueFull, asyncio.TimeoutError):
            writer.cancel()


class Room:
    """Everyone connected to /chat."""

    def __init__(self):
        self.clients = {}

    async def chat(self, ws):
        """Relay this client's messages to the room until it leaves."""
        client = ChatClient(ws)
        writer = asyncio.create_task(client.deliver())
        # A client that stops reading leaves the room as soon as its writer gives up.
        writer.add_done_callback(lambda _: self.leave(client))
        self.join(client)
        try:
            while True:
                message = await ws.receive_text()
                # uvicorn reads up to ECHO_MAX_MESSAGE_SIZE; the chat's own limit is smaller.
                if len(message.encode()) > CHAT_MAX_MESSAGE_SIZE:
                    await ws.close(1009, f"message over {CHAT_MAX_MESSAGE_SIZE} bytes")
                    break
                self.say(client, message)
        except PayloadTypeError:
            await ws.close(1003, "chat accepts text messages only")
        except WebSocketDisconnected:
            pass
        finally:
            self.leave(client)
            await client.stop(writer)

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
