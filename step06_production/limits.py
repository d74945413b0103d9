"""Step 6's limits: what keeps one user, or one address, from taking the chat for itself.

- messages per second per user (MessageBudget): an error event, then 1008 if it goes on;
- chat connections per user (counted in Redis by backplane.RedisRoom.add): 1008 over it;
- handshakes and logins per address per minute (HandshakeLimit): refused before the upgrade.

A handshake refused before the upgrade gets HTTP 403 whatever the reason: Falcon closes
it with 3000 + the status it raised (its log says 3429 here, 3401 for no session), and
uvicorn answers every close before the accept with 403. Browsers show none of it: the
client asks /session (auth.py) why.
"""

import os
import time
import weakref

import falcon
from redis.exceptions import RedisError

MESSAGES_PER_SECOND = float(os.environ.get("CHAT_MESSAGES_PER_SECOND", "5"))  # per user
MESSAGE_BURST = int(os.environ.get("CHAT_MESSAGE_BURST", "10"))  # messages at once, after a pause
CONNECTIONS_PER_USER = int(os.environ.get("CONNECTIONS_PER_USER", "5"))  # open /chat sockets
HANDSHAKES_PER_MINUTE = int(os.environ.get("HANDSHAKES_PER_MINUTE", "60"))  # per address
HANDSHAKES = "limit:handshakes:"  # + address + minute: handshakes and logins counted there
RATE_ERROR = (f"too many messages: at most {MESSAGES_PER_SECOND:g} a second "
              f"(bursts of {MESSAGE_BURST}); this one was not sent")


class TooManyConnections(Exception):
    """A user already has CONNECTIONS_PER_USER chat connections open."""


class MessageBudget:
    """A user's messages: MESSAGE_BURST at once, refilled at MESSAGES_PER_SECOND.

    A message over the budget is refused and runs up a debt; a sender MESSAGE_BURST
    messages in debt is closed: a client that ignores the errors is flooding, not chatting.
    """

    def __init__(self):
        self.tokens = MESSAGE_BURST
        self.at = time.monotonic()

    def spend(self):
        """Take one message from the budget; return what is left (below 0: refused)."""
        now = time.monotonic()
        self.tokens = min(MESSAGE_BURST, self.tokens + (now - self.at) * MESSAGES_PER_SECOND)
        self.at = now
        self.tokens -= 1
        return self.tokens

    def flooding(self):
        """True once the debt is a whole burst: the sender must go."""
        return self.tokens < -MESSAGE_BURST


# Shared by a user's connections in this process; gone with the last of them.
budgets = weakref.WeakValueDictionary()


def budget_of(user):
    """The message budget of a user in this process."""
    budget = budgets.get(user)
    if budget is None:
        budget = budgets[user] = MessageBudget()
    return budget


class HandshakeLimit:
    """Middleware: HANDSHAKES_PER_MINUTE WebSocket handshakes per address, across processes.

    The address is the client's as uvicorn saw it: behind nginx, X-Forwarded-For, which
    uvicorn believes only from FORWARDED_ALLOW_IPS (server.py).
    """

    def __init__(self, redis):
        self.redis = redis

    async def allow(self, address):
        """Count one handshake (or login) for address in this minute; False over the limit."""
        key = f"{HANDSHAKES}{address}:{int(time.time() // 60)}"
        try:
            async with self.redis.pipeline() as pipe:
                count, _ = await pipe.incr(key).expire(key, 120).execute()
        except RedisError:
            return True  # without Redis the session check answers 503 anyway
        return count <= HANDSHAKES_PER_MINUTE

    async def process_request_ws(self, req, ws):
        """Refuse the handshake before any other work, let alone the upgrade."""
        if not await self.allow(req.remote_addr):
            raise falcon.HTTPTooManyRequests(
                description=f"At most {HANDSHAKES_PER_MINUTE} connections a minute.",
                retry_after=60 - int(time.time() % 60))
