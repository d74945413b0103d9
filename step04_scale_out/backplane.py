"""Step 4's backplane: the chat of every process sharing one Redis, through pub/sub."""

import asyncio
import contextlib
import json
import secrets

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from chat import Room

# Redis keys and timings of the backplane.
CHANNEL = "chat:events"  # pub/sub channel carrying every chat event as JSON
MEMBERS = "chat:members"  # hash: client id -> id of the process it is connected to
ALIVE = "chat:alive:"  # + process id: a key that expires unless the process renews it
HEARTBEAT_INTERVAL = 2  # seconds between renewals (and sweeps for dead processes)
PROCESS_TTL = 6  # seconds without renewal before a process and its clients are gone
RETRY_DELAY = 1  # seconds between attempts to subscribe again while Redis is down
SUBSCRIBE_WAIT = 5  # seconds the server waits at start for its subscription


def log(text):
    """Print a line about the backplane, at once."""
    print(f"step04: {text}", flush=True)


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
                        try:
                            self.deliver(json.loads(message["data"]))
                        except (ValueError, KeyError, TypeError) as error:
                            # Anyone with access to Redis can publish here: skip, say so.
                            log(f"ignored a malformed event on {CHANNEL}: {error!r}")
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
            if owner == self.process:
                gone = client_id not in self.clients  # ours, but its leave missed Redis
            else:
                gone = owner not in alive  # another process's, and that process died
            if gone:
                await self.remove(client_id)

    async def process_startup(self, scope, event):
        log("the chat is shared through Redis (REDIS_URL) with every process using it")
        self.tasks = [asyncio.create_task(self.listen()), asyncio.create_task(self.heartbeat())]
        # Serve once subscribed, so the first clients hear the chat; but if Redis is
        # down, serve anyway: the chat starts when Redis does.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), SUBSCRIBE_WAIT)

    async def process_shutdown(self, scope, event):
        for task in self.tasks:
            task.cancel()
        await self.redis.aclose()
