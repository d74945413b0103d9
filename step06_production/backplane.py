"""Step 6's backplane: step 5's Redis stream, which also counts each user's connections.

Redis stores every event under an id it gives. Each process reads the stream from the
last id it delivered, and a client that reconnects says the last id it saw: nothing is
lost across a reconnect, and nothing comes twice.
"""

import asyncio
import contextlib
import json
import os
import re
import secrets

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from chat import CHAT_MAX_TEXT_LENGTH, OUTBOX_SIZE, TEXT_ERROR, Room, stream_order
from limits import CONNECTIONS_PER_USER, TooManyConnections

# Redis keys and timings of the backplane.
STREAM = "chat:events"  # stream of every chat event as JSON, under the id Redis gives it
MEMBERS = "chat:members"  # hash: client id -> id of the process it is connected to
ALIVE = "chat:alive:"  # + process id: a key that expires unless the process renews it
SENT = "chat:sent:"  # + a client's msg_id: the id its message was stored under
USER = "chat:user:"  # + a user name: set of that user's client ids, to count its connections
STREAM_MAXLEN = int(os.environ.get("STREAM_MAXLEN", "10000"))  # events kept, about (~)
HISTORY = int(os.environ.get("CHAT_HISTORY", "10"))  # messages a newcomer gets
HISTORY_MAX = 500  # the most messages a newcomer may ask for (?history=)
SENT_TTL = 24 * 3600  # seconds a msg_id is remembered: a resend after that is new
HEARTBEAT_INTERVAL = 2  # seconds between renewals (and sweeps for dead processes)
PROCESS_TTL = 6  # seconds without renewal before a process and its clients are gone
RETRY_DELAY = 1  # seconds between attempts to read the stream again while Redis is down
READ_WAIT = 5  # seconds the server waits at start to know where the stream ends
READ_BLOCK = 1000  # milliseconds one XREAD waits for new events (under socket_timeout)
PAGE = 500  # events per XRANGE or XREVRANGE, for a catch-up
# Events per XREAD: the reader hands them all out at once, so a burst (after an outage)
# must not fill the outbox of a client whose send is waiting before that send can run.
READ_COUNT = OUTBOX_SIZE // 2

STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}", re.ASCII)
MSG_ID = re.compile(r"[\w:.-]{1,64}", re.ASCII)
MESSAGE_ERROR = ('a message that starts with "{" is JSON: {"msg_id": "1 to 64 of '
                 'A-Z a-z 0-9 _ : . -", "text": "..."}')

# A message is stored once per msg_id. One script, because Redis runs a script whole:
# no other command comes between the check and the XADD, in memory or in the AOF.
STORE_ONCE = """
local stored = redis.call('GET', KEYS[2])
if stored then return {stored, 1} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {id, 0}
"""

# A join or a leave changes the members and adds its event in one script: two clients
# joining at once get counts in the order of their events, which is the stream's order.
# (Counted first and added after, the later count could land first: the other client,
# whose seam comes after it, would never hear of that join.)
MEMBERSHIP = """
local changed = 1
if ARGV[1] == 'join' then
  -- KEYS[3] is the user's set of connections: one over the limit is taken back unannounced.
  redis.call('SADD', KEYS[3], ARGV[2])
  if redis.call('SCARD', KEYS[3]) > tonumber(ARGV[5]) then
    redis.call('SREM', KEYS[3], ARGV[2])
    return false
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('SREM', KEYS[3], ARGV[2])
  changed = redis.call('HDEL', KEYS[1], ARGV[2])
end
if changed == 0 then return false end
local count = redis.call('HLEN', KEYS[1])
local event = cjson.encode({type = ARGV[1], id = ARGV[2], count = count})
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', event)
return {count, id}
"""


def log(text):
    """Print a line about the backplane, at once."""
    print(f"step06: {text}", flush=True)


def decoded(entries):
    """The events of stream entries, each with its id as event_id; malformed ones skipped."""
    for event_id, fields in entries:
        try:
            event = {**json.loads(fields["event"]), "event_id": event_id}
            valid = isinstance(event["type"], str) and isinstance(event["id"], str)
        except (ValueError, KeyError, TypeError):
            valid = False
        if valid:
            yield event
        else:
            # Anyone with access to Redis can add to the stream: skip, and say so.
            log(f"ignored a malformed event {event_id} in {STREAM}")


def user_of(client_id):
    """The user name in a client id, "<name>.<hex>"."""
    return client_id.rpartition(".")[0]


def read_message(message):
    """The msg_id and text of a JSON message, or None if it is not one."""
    try:
        sent = json.loads(message)
        msg_id, text = sent["msg_id"], sent["text"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(msg_id, str) and MSG_ID.fullmatch(msg_id) and isinstance(text, str):
        return msg_id, text
    return None


class RedisRoom(Room):
    """Everyone connected to any process sharing one Redis.

    Events go into a stream that every process reads from the last id it delivered;
    the members are a hash that each process renews, so the dead ones can be swept.
    """

    def __init__(self, url):
        super().__init__()
        self.process = secrets.token_hex(4)
        # One immediate retry on a new connection: enough once Redis has restarted.
        self.redis = redis.from_url(url, decode_responses=True, socket_connect_timeout=2,
                                    socket_timeout=5, retry=Retry(NoBackoff(), 1))
        self.store_once = self.redis.register_script(STORE_ONCE)
        self.membership = self.redis.register_script(MEMBERSHIP)
        # Renewing the members and removing one must not interleave (see heartbeat()).
        self.lock = asyncio.Lock()
        self.last_id = None  # the last event delivered here; None until the reader starts
        self.reading = asyncio.Event()
        self.tasks = []

    async def add(self, client_id):
        # Until the reader knows where it starts, it could miss a newcomer's first events.
        if self.last_id is None:
            raise RedisConnectionError("not reading the chat stream yet")
        joined = await self.change_members("join", client_id)
        if joined is None:
            raise TooManyConnections(client_id)
        return joined

    async def change_members(self, change, client_id):
        """Join or leave, with its event: (count, event id); None if refused or already gone."""
        return await self.membership(
            keys=[MEMBERS, STREAM, USER + user_of(client_id)],
            args=[change, client_id, self.process, STREAM_MAXLEN, CONNECTIONS_PER_USER])

    async def remove(self, client_id):
        # Several processes may sweep the same client: only the one whose HDEL
        # removed it announces the leave.
        try:
            async with self.lock:
                await self.change_members("leave", client_id)
        except RedisError as error:
            log(f"leave of {client_id} not announced yet ({error}); the sweep will retry")

    async def publish(self, event):
        """Add an event to the stream, where every process reads it; return its id."""
        return await self.redis.xadd(STREAM, {"event": json.dumps(event)}, maxlen=STREAM_MAXLEN)

    async def say(self, client, message):
        """Plain text as in step04; a JSON message with a msg_id is stored once, then acked."""
        if not message.startswith("{"):
            return await super().say(client, message)
        sent = read_message(message)
        if sent is None:
            client.post(json.dumps({"type": "error", "error": MESSAGE_ERROR}))
            return
        msg_id, text = sent[0], sent[1].strip()
        if not text or len(text) > CHAT_MAX_TEXT_LENGTH:
            # With its msg_id: the client must not send this one again.
            client.post(json.dumps({"type": "error", "error": TEXT_ERROR, "msg_id": msg_id}))
            return
        # A RedisError ends the connection (1011): the client sends the message again.
        event = {"type": "message", "id": client.id, "text": text}
        event_id, resent = await self.store_once(
            keys=[STREAM, SENT + msg_id], args=[STREAM_MAXLEN, json.dumps(event), SENT_TTL])
        client.post(json.dumps({"type": "ack", "msg_id": msg_id, "event_id": event_id,
                                "duplicate": bool(resent)}))

    async def catch_up(self, client, welcome, params, seam):
        """Welcome the client, then queue what it missed since its last_id, or the history."""
        errors, history = [], HISTORY
        asked = params.get("history")
        if asked is not None:
            if isinstance(asked, str) and asked.isascii() and asked.isdigit() \
                    and int(asked) <= HISTORY_MAX:
                history = int(asked)
            else:
                errors.append(f"history is 0 to {HISTORY_MAX} messages, not {asked!r}: "
                              f"{HISTORY} sent instead")
        start = gap = None
        last_id = params.get("last_id")
        if last_id is not None:
            start, gap, error = await self.resume_point(last_id, seam)
            if error:
                errors.append(f"{error}: no resume, the history instead")
        # The client is up to date at last_id, or as a newcomer at its join: events
        # at or before that (the history) are older than what it has seen.
        client.post(json.dumps({**welcome, "resume": True,
                                "last_id": last_id if start else seam}))
        for error in errors:
            client.post(json.dumps({"type": "error", "error": error}))
        if gap:
            client.post(json.dumps({"type": "gap", "since": gap}))
        if start:
            await self.replay(client, start, seam)
        else:
            await self.history(client, seam, history)

    async def resume_point(self, last_id, seam):
        """Where a client that saw last_id resumes: (start, gap since, error text)."""
        if not isinstance(last_id, str) or not STREAM_ID.fullmatch(last_id):
            return None, None, f"last_id {last_id!r} is not a stream id like 1700000000000-0"
        if stream_order(last_id) >= stream_order(seam):
            return None, None, f"last_id {last_id} is newer than every event of this chat"
        info = await self.redis.xinfo_stream(STREAM)
        first = info["first-entry"][0]  # the oldest event still kept
        if stream_order(last_id) < stream_order(first) and info["entries-added"] > info["length"]:
            # MAXLEN trimmed it, and maybe what came after it: say so, then send the rest.
            return first, first, None
        if not await self.redis.xrange(STREAM, last_id, last_id):
            return None, None, f"last_id {last_id} is not an event of this chat"
        return "(" + last_id, None, None  # "(": after last_id, not including it

    async def replay(self, client, start, seam):
        """Queue every event from start to just before the seam, in order, a page at a time."""
        while True:
            page = await self.redis.xrange(STREAM, start, "(" + seam, count=PAGE)
            for event in decoded(page):
                await client.queue(json.dumps(event))
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0]

    async def history(self, client, seam, count):
        """Queue the last count messages before the seam, oldest first."""
        messages, end, size = [], "(" + seam, count
        while len(messages) < count:
            page = await self.redis.xrevrange(STREAM, end, "-", count=size)
            messages += [event for event in decoded(page) if event["type"] == "message"]
            if len(page) < size:
                break
            end = "(" + page[-1][0]
            size = min(2 * size, PAGE)  # joins and leaves among them: read further back
        for event in reversed(messages[:count]):
            await client.queue(json.dumps(event))

    async def listen(self):
        """Deliver the stream's events to the clients here, in order, from the last delivered."""
        while True:
            try:
                if self.last_id is None:
                    # This process has no clients yet: it starts at the newest event.
                    newest = await self.redis.xrevrange(STREAM, count=1)
                    self.last_id = newest[0][0] if newest else "0-0"
                else:
                    await self.tell_gap()
                log(f"reading the Redis stream after {self.last_id}")
                self.reading.set()
                while True:
                    for _, entries in await self.redis.xread(
                            {STREAM: self.last_id}, count=READ_COUNT, block=READ_BLOCK):
                        for event in decoded(entries):
                            self.deliver(event)
                        self.last_id = entries[-1][0]
            except RedisError as error:
                log(f"Redis unavailable ({error}); reading again in {RETRY_DELAY} s")
                await asyncio.sleep(RETRY_DELAY)

    async def tell_gap(self):
        """After an outage, tell the clients here if the events after our last were trimmed."""
        first = await self.redis.xrange(STREAM, count=1)
        if first and stream_order(first[0][0]) > stream_order(self.last_id):
            self.deliver({"type": "gap", "since": first[0][0]})

    async def heartbeat(self):
        """Renew this process and its members, then sweep the dead, every few seconds."""
        while True:
            try:
                # Registering the members again restores them after Redis restarts.
                async with self.lock, self.redis.pipeline() as pipe:
                    pipe.set(ALIVE + self.process, 1, ex=PROCESS_TTL)
                    if self.clients:
                        pipe.hset(MEMBERS, mapping=dict.fromkeys(self.clients, self.process))
                    for client_id in self.clients:
                        pipe.sadd(USER + user_of(client_id), client_id)
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
            if owner == self.process:
                gone = client_id not in self.clients  # ours, but its leave missed Redis
            else:
                gone = owner not in alive  # another process's, and that process died
            if gone:
                await self.remove(client_id)

    async def process_startup(self, scope, event):
        log("the chat is shared through a Redis stream (REDIS_URL) with every process using it")
        self.tasks = [asyncio.create_task(self.listen()), asyncio.create_task(self.heartbeat())]
        # Serve once the reader knows where it starts, so the first clients hear the
        # chat; but if Redis is down, serve anyway: the chat starts when Redis does.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.reading.wait(), READ_WAIT)

    async def process_shutdown(self, scope, event):
        for task in self.tasks:
            task.cancel()
        await self.redis.aclose()
