"""Step 4's chat: step 3's room, made async so that a backplane (backplane.py) can carry it."""

import asyncio
import contextlib
import json
import secrets

from falcon import WebSocketDisconnected
from falcon.errors import PayloadTypeError
from redis.exceptions import RedisError

from protections import CHAT_MAX_MESSAGE_SIZE

CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
TEXT_ERROR = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds to send a client's queue before it is dropped
UNAVAILABLE = "chat backplane unavailable, message not delivered"


class ChatClient:
    """One /chat connection with its own outbox, drained by its own task."""

    def __init__(self, ws):
        # 64 random bits: with 24, a room of 1,000 reused a taken id once in 33 joins.
        self.id = secrets.token_hex(8)
        self.ws = ws
        self.outbox = asyncio.Queue(OUTBOX_SIZE)
        self.closing = None
        self.welcomed = False  # events reach a client only after its welcome

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
    """Everyone connected to /chat: without a backplane, that is this process's clients."""

    def __init__(self):
        self.clients = {}
        self.leaving = set()  # leave announcements under way, kept until done

    async def chat(self, ws):
        """Relay this client's messages to the room until it leaves."""
        client = ChatClient(ws)
        writer = asyncio.create_task(client.deliver())
        # A client that stops reading leaves the room as soon as its writer gives up.
        writer.add_done_callback(lambda _: self.leave_soon(client))
        try:
            await self.join(client)
            while True:
                message = await ws.receive_text()
                # uvicorn reads up to ECHO_MAX_MESSAGE_SIZE; the chat's own limit is smaller.
                if len(message.encode()) > CHAT_MAX_MESSAGE_SIZE:
                    await ws.close(1009, f"message over {CHAT_MAX_MESSAGE_SIZE} bytes")
                    break
                await self.say(client, message)
        except PayloadTypeError:
            await ws.close(1003, "chat accepts text messages only")
        except WebSocketDisconnected:
            pass
        except RedisError:
            # Joining needs the backplane; the client may try again later.
            await ws.close(1011, "chat backplane unavailable")
        finally:
            await self.leave(client)
            await client.stop(writer)

    async def say(self, client, message):
        """Send a message to every client, the sender included; or tell the sender why not."""
        text = message.strip()
        if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
            client.post({"type": "error", "error": TEXT_ERROR})
            return
        try:
            await self.publish({"type": "message", "id": client.id, "text": text})
        except RedisError:
            # Say so: pub/sub would not keep the message for later.
            client.post({"type": "error", "error": UNAVAILABLE})

    async def join(self, client):
        """Add a client; it gets a welcome, everyone else a join."""
        self.clients[client.id] = client
        count = await self.add(client.id)
        client.post({"type": "welcome", "id": client.id, "count": count})
        client.welcomed = True
        await self.publish({"type": "join", "id": client.id, "count": count})

    async def leave(self, client):
        """Remove a client; everyone else gets a leave."""
        if self.clients.pop(client.id, None) is not None:
            await self.remove(client.id)

    def leave_soon(self, client):
        """Remove a client that stopped reading, without waiting for the announcement."""
        if self.clients.pop(client.id, None) is not None:
            task = asyncio.create_task(self.remove(client.id))
            self.leaving.add(task)
            task.add_done_callback(self.leaving.discard)

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
        # Iterate over a copy: leave_soon() below changes the dict.
        for client in list(self.clients.values()):
            # A newcomer hears nothing before its welcome, and not of its own join.
            if not client.welcomed or (event["type"] == "join" and client.id == event["id"]):
                continue
            if not client.post(event):
                client.drop()
                self.leave_soon(client)

    async def process_startup(self, scope, event):
        """Falcon calls this when the server starts (ASGI lifespan)."""

    async def process_shutdown(self, scope, event):
        """Falcon calls this when the server stops, after the clients are closed."""
