"""Step 5's chat: step 4's room, where a client may first catch up on what it missed."""

import asyncio
import collections
import contextlib
import json
import secrets
import types

from falcon import WebSocketDisconnected
from falcon.errors import PayloadTypeError
from redis.exceptions import RedisError

from protections import CHAT_MAX_MESSAGE_SIZE

CHAT_MAX_TEXT_LENGTH = 2000  # characters; a longer text gets an error message
TEXT_ERROR = f"a chat message has 1 to {CHAT_MAX_TEXT_LENGTH} characters"
OUTBOX_SIZE = 64  # messages waiting for one chat client before it is dropped
SEND_TIMEOUT = 5  # seconds to send a client's queue before it is dropped
HELD_MAX = 1000  # live events held for a client still catching up before it is dropped
UNAVAILABLE = "chat backplane unavailable, message not delivered"


def stream_order(event_id):
    """The sort key of a Redis stream id, "milliseconds-sequence": compare numbers, not text."""
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence)


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
        # Live events wait here while the client catches up (None once it has), and
        # those its catch-up sent are skipped: up to the seam, where it ended.
        self.held = collections.deque()
        self.seam = None

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

    def post_live(self, text, order):
        """Send a live event, or hold it while the client catches up; False if it lags."""
        if self.held is None:
            return not self.is_new(order) or self.post(text)
        self.held.append((order, text))
        return len(self.held) <= HELD_MAX

    def is_new(self, order):
        """False for an event its catch-up sent already; live events come in stream order."""
        if self.seam is None or order is None:
            return True
        if order <= self.seam:
            return False
        self.seam = None  # past the seam: every event that follows is new
        return True

    async def queue(self, text):
        """Send a message, waiting for room: a catch-up can be longer than the outbox."""
        while self.closing is None:
            if self.post(text):
                return
            await asyncio.wait([self.sending], timeout=SEND_TIMEOUT)
        raise WebSocketDisconnected(1008)  # dropped meanwhile: too slow to receive

    async def release(self, seam):
        """Caught up to the seam: send the held events that came after it, then go live."""
        self.seam = None if seam is None else stream_order(seam)
        # Events delivered meanwhile join the deque, so it ends only once it is empty.
        while self.held:
            order, text = self.held.popleft()
            if self.is_new(order):
                await self.queue(text)
        self.held = None

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
    """Everyone connected to /chat: without a backplane, that is this process's clients."""

    def __init__(self):
        self.clients = {}
        self.leaving = set()  # leave announcements under way, kept until done

    async def chat(self, ws, params):
        """Relay this client's messages to the room until it leaves."""
        # A client that stops reading leaves the room as soon as it is dropped.
        client = ChatClient(ws, on_drop=self.leave_soon)
        try:
            await self.join(client, params)
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
            # Joining, or storing a message with a msg_id, needs the backplane;
            # the client may try again later (and send that message again).
            await ws.close(1011, "chat backplane unavailable")
        finally:
            await self.leave(client)
            client.stop()

    async def say(self, client, message):
        """Send a message to every client, the sender included; or tell the sender why not."""
        text = message.strip()
        if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
            client.post(json.dumps({"type": "error", "error": TEXT_ERROR}))
            return
        try:
            await self.publish({"type": "message", "id": client.id, "text": text})
        except RedisError:
            # Say so: nothing has stored the message.
            client.post(json.dumps({"type": "error", "error": UNAVAILABLE}))

    async def join(self, client, params):
        """Add a client; it gets a welcome and what it missed, everyone else a join."""
        self.clients[client.id] = client  # live events wait in client.held meanwhile
        # Its join's place in the chat is the seam: it catches up to there, then goes live.
        count, seam = await self.add(client.id)
        await self.catch_up(client, {"type": "welcome", "id": client.id, "count": count},
                            params, seam)
        await client.release(seam)

    async def catch_up(self, client, welcome, params, seam):
        """Welcome the client; a room that keeps its events (RedisRoom) replays them too."""
        client.post(json.dumps(welcome))

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
        """Announce a newcomer: the count with it in, and the id of its join event."""
        count = len(self.clients)
        return count, await self.publish({"type": "join", "id": client_id, "count": count})

    async def remove(self, client_id):
        """Tell everyone a client has gone."""
        await self.publish({"type": "leave", "id": client_id, "count": len(self.clients)})

    async def publish(self, event):
        """Send an event to the whole chat, which here is this process; it has no id here."""
        self.deliver(event)

    def deliver(self, event):
        """Send an event to every client here; drop those whose outbox is full."""
        text = json.dumps(event)  # once, not once per client
        order = stream_order(event["event_id"]) if "event_id" in event else None
        # Iterate over a copy: a client dropped here leaves the dict.
        for client in list(self.clients.values()):
            # A newcomer does not hear of its own join.
            if event["type"] == "join" and client.id == event["id"]:
                continue
            if not client.post_live(text, order):
                client.drop()

    async def process_startup(self, scope, event):
        """Falcon calls this when the server starts (ASGI lifespan)."""

    async def process_shutdown(self, scope, event):
        """Falcon calls this when the server stops, after the clients are closed."""
