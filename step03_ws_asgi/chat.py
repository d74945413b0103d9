"""Step 3's chat: one room, one outbox per client, so a slow reader stalls nobody else."""

import asyncio
import collections
import contextlib
import json
import secrets
import types

from falcon import WebSocketDisconnected
from falcon.errors import PayloadTypeError

from protections import CHAT_MAX_MESSAGE_SIZE

CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
TEXT_ERROR = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds to send a client's queue before it is dropped


def start_now(coro):
    """Run a coroutine up to its first wait: None if it finished, else a task that finishes it.

    A send to a client that keeps up then completes right here, with no trip through the
    event loop for each of 1,000 clients. Python 3.12's asyncio.Task(coro, loop=loop,
    eager_start=True) does the same; this one path runs, and is tested, on 3.10 to 3.13.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(finish(coro, waiting_on))


async def finish(coro, waiting_on):
    """Go on, in a task, with a coroutine that start_now() ran up to its first wait."""
    return await relay(coro, waiting_on)


@types.coroutine
def relay(coro, waiting_on):
    """Hand the task what coro waits on, and coro what the task sends back or throws in."""
    # Yield the future itself, never `await` it again here: a second await of a future
    # already handed out raises RuntimeError, which deliver() takes for a gone client.
    while True:
        try:
            try:
                result = yield waiting_on
            except BaseException as error:  # a cancellation, say: coro must see it
                waiting_on = coro.throw(error)
            else:
                waiting_on = coro.send(result)
        except StopIteration as done:
            return done.value


class ChatClient:
    """One /chat connection: a message goes out at once, or waits in its outbox."""

    def __init__(self, ws, on_drop):
        # 64 random bits: with 24, a room of 1,000 reused a taken id once in 33 joins.
        self.id = secrets.token_hex(8)
        self.ws = ws
        self.on_drop = on_drop  # the room's way to let a dropped client go
        self.outbox = collections.deque()  # messages behind a send that had to wait
        self.sending = None  # the task finishing that send, while there is one
        self.deadline = None  # the timer that drops the client if that task is too slow
        self.closing = None

    def post(self, text):
        """Send a message now, or queue it behind a send in progress; False if it lags."""
        if self.sending is not None:
            if len(self.outbox) >= OUTBOX_SIZE:
                return False
            self.outbox.append(text)
            return True
        # A send usually completes right here. One that has to wait (the client reads
        # slower than we write) goes on in a task, with SEND_TIMEOUT to empty the outbox.
        self.sending = start_now(self.deliver(text))
        if self.sending is not None:
            self.deadline = asyncio.get_running_loop().call_later(SEND_TIMEOUT, self.too_slow)
        return True

    async def deliver(self, text):
        """Send a message, then everything queued behind it meanwhile."""
        try:
            await self.ws.send_text(text)
            while self.outbox:
                await self.ws.send_text(self.outbox.popleft())
        except (WebSocketDisconnected, RuntimeError):
            # The client has gone: its chat() sees it too, and leaves. uvicorn raises
            # RuntimeError, not a disconnect, for a send after its own close (ping timeout).
            self.outbox.clear()
        finally:
            if self.deadline is not None:
                self.deadline.cancel()
        self.sending = None

    def too_slow(self):
        """The send in progress outlasted SEND_TIMEOUT: give it up and drop the client."""
        self.sending.cancel()
        self.drop()

    def drop(self):
        """Close a client that stopped reading, without waiting on it; the room lets it go."""
        if self.closing is None:
            self.closing = asyncio.create_task(self.close_dropped())
            self.on_drop(self)

    async def close_dropped(self):
        """Send 1008, however long the peer takes to read again."""
        # ASGI gives an app no way to cut a connection, and uvicorn writes nothing
        # while the peer is not reading: this close waits, unbounded, for the peer
        # to read (it then gets what was queued, and 1008) or to go away.
        with contextlib.suppress(WebSocketDisconnected):
            await self.ws.close(1008, "too slow to receive")

    def stop(self):
        """The connection is over: give up any send still waiting."""
        if self.sending is not None:
            self.sending.cancel()


class Room:
    """Everyone connected to /chat."""

    def __init__(self):
        self.clients = {}

    async def chat(self, ws):
        """Relay this client's messages to the room until it leaves."""
        # A client that stops reading leaves the room as soon as it is dropped.
        client = ChatClient(ws, on_drop=self.leave)
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
            client.stop()

    def say(self, client, message):
        """Send a message to every client, the sender included; or tell the sender why not."""
        text = message.strip()
        if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
            client.post(json.dumps({"type": "error", "error": TEXT_ERROR}))
        else:
            self.broadcast({"type": "message", "id": client.id, "text": text})

    def join(self, client):
        """Add a client; it gets a welcome, everyone else a join."""
        self.clients[client.id] = client
        client.post(json.dumps({"type": "welcome", "id": client.id, "count": len(self.clients)}))
        self.broadcast({"type": "join", "id": client.id, "count": len(self.clients)}, client)

    def leave(self, client):
        """Remove a client; everyone else gets a leave."""
        if self.clients.pop(client.id, None) is not None:
            self.broadcast({"type": "leave", "id": client.id, "count": len(self.clients)})

    def broadcast(self, event, skip=None):
        """Send an event to every client; drop those whose outbox is full."""
        text = json.dumps(event)  # once, not once per client
        # Iterate over a copy: a client dropped here leaves the dict.
        for client in list(self.clients.values()):
            if client is not skip and not client.post(text):
                client.drop()
