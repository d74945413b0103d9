"""Step 6's login: who is on the socket. Users with argon2 hashes, sessions in Redis, a cookie.

A browser cannot set headers on a WebSocket, but it sends its cookies with the handshake:
log in over HTTP, get a session cookie, and the handshake is checked like any request.
A cookie alone is not enough: the browser attaches it to a handshake that any page opens,
on any site (cross-site WebSocket hijacking). protections.OriginCheck refuses those first.

    python auth.py add-user NAME    # creates NAME, or gives it a new password, printed once
"""

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import sys

import falcon
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.exceptions import RedisError

from protections import origin_allowed

USERS = "users"  # hash: user name -> argon2 hash of its password
SESSION = "session:"  # + SHA-256 of the cookie's token: the user name, until the TTL ends
COOKIE = "session"
SESSION_TTL = int(os.environ.get("SESSION_TTL", str(8 * 3600)))  # seconds a login lasts
SESSION_CHECK = float(os.environ.get("SESSION_CHECK", "2"))  # seconds between sweeps of sockets
NAME = re.compile(r"[a-z0-9_-]{1,32}", re.ASCII)  # no dot: chat ids are "<name>.<hex>"
ENDED = "session expired or revoked: log in again"

hasher = PasswordHasher()  # argon2id, the library's defaults (RFC 9106's second choice)
# Checked for a name that does not exist, so that it takes as long as a wrong password.
DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Log in to the chat</h1>{error}
<form method="post" action="/login">
<p><label for="name">Name</label> <input id="name" name="name" autocomplete="username"></p>
<p><label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"></p>
<p><button type="submit">Log in</button></p></form></main></body></html>
"""


def session_key(token):
    """Where a token's session lives: its hash, so a copy of Redis holds no usable cookie."""
    return SESSION + hashlib.sha256(token.encode()).hexdigest()


def verify(stored, password):
    """Check a password against an argon2 hash (slow on purpose: run it in a thread)."""
    try:
        return hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def refuse_foreign_post(req):
    """A form on another site must not log our visitors in or out (CSRF): check Origin."""
    if not origin_allowed(req.get_header("Origin")):
        raise falcon.HTTPForbidden(description="Origin not allowed.")


class Sessions:
    """Sessions in Redis, the sockets opened with each, and the check that ends them."""

    def __init__(self, redis, limit):
        self.redis = redis
        self.limit = limit  # limits.HandshakeLimit: logins count against it too
        self.open = {}  # every WebSocket opened with a session -> that session's key
        self.closing = set()
        self.task = None

    async def user(self, req):
        """The user name of the request's session cookie, or None."""
        token = req.cookies.get(COOKIE)
        if not token or len(token) > 100:
            return None
        req.context.session = session_key(token)
        return await self.redis.get(req.context.session)

    async def process_request_ws(self, req, ws):
        """Refuse a handshake without a live session before the upgrade."""
        try:
            req.context.user = await self.user(req)
        except RedisError as error:
            raise falcon.HTTPServiceUnavailable(description="Sessions unavailable.") from error
        if req.context.user is None:
            raise falcon.HTTPUnauthorized(description="Log in first, at /login.")

    @contextlib.contextmanager
    def track(self, ws, req):
        """Remember which session opened ws while the block runs: the session's end closes ws."""
        self.open[ws] = req.context.session
        try:
            yield
        finally:
            self.open.pop(ws, None)

    def end(self, keys, reason):
        """Close (1008) every socket here opened with one of these sessions."""
        for ws, key in list(self.open.items()):
            if key in keys and not ws.closed:
                del self.open[ws]
                # In a task: a peer that stopped reading would hold the close.
                task = asyncio.create_task(ws.close(1008, reason))
                self.closing.add(task)
                task.add_done_callback(self.closing.discard)

    async def check(self):
        """Every SESSION_CHECK seconds, close the sockets whose session has gone."""
        while True:
            await asyncio.sleep(SESSION_CHECK)
            keys = sorted(set(self.open.values()))
            if not keys:
                continue
            try:
                users = await self.redis.mget(keys)
            except RedisError:
                continue  # unknown is not gone: try again next time
            self.end({key for key, user in zip(keys, users, strict=True) if user is None}, ENDED)

    async def process_startup(self, scope, event):
        self.task = asyncio.create_task(self.check())

    async def process_shutdown(self, scope, event):
        self.task.cancel()


class Login:
    """GET: the login form. POST: check the name and password, then set the session cookie."""

    def __init__(self, sessions):
        self.sessions = sessions

    async def on_get(self, req, resp):
        """Send the login form."""
        resp.content_type = falcon.MEDIA_HTML
        resp.text = LOGIN_PAGE.format(error="")

    async def on_post(self, req, resp):
        """Log in: 303 to the chat with a cookie, or 401 with the form again."""
        refuse_foreign_post(req)
        if not await self.sessions.limit.allow(req.remote_addr):
            raise falcon.HTTPTooManyRequests(description="Too many attempts: wait a minute.")
        form = await req.get_media(default_when_empty={})
        form = form if isinstance(form, dict) else {}
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        stored = await self.sessions.redis.hget(USERS, name) if NAME.fullmatch(name) else None
        # argon2 takes tens of milliseconds of CPU: not on the event loop, where the chat runs.
        if not await asyncio.to_thread(verify, stored or DUMMY_HASH, password) or not stored:
            resp.status = falcon.HTTP_401
            resp.content_type = falcon.MEDIA_HTML
            resp.text = LOGIN_PAGE.format(error="<p role=alert>Wrong name or password.</p>")
            return
        token = secrets.token_urlsafe(32)
        await self.sessions.redis.set(session_key(token), name, ex=SESSION_TTL)
        # HttpOnly: no script reads it. Lax: not sent by other sites' forms and frames.
        # Secure under TLS (nginx says https in X-Forwarded-Proto): never sent in clear.
        resp.set_cookie(COOKIE, token, max_age=SESSION_TTL, path="/", http_only=True,
                        secure=req.scheme == "https", same_site="Lax")
        resp.status = falcon.HTTP_303  # to the chat, and a reload does not post again
        resp.location = "/client/?endpoint=chat"


class Logout:
    """POST: end the session; its sockets here close now, elsewhere at the next check."""

    def __init__(self, sessions):
        self.sessions = sessions

    async def on_post(self, req, resp):
        """End the session, close its sockets (1008) and forget the cookie."""
        refuse_foreign_post(req)
        if await self.sessions.user(req) is not None:
            await self.sessions.redis.delete(req.context.session)
            self.sessions.end({req.context.session}, "logged out")
        resp.unset_cookie(COOKIE, path="/")
        resp.status = falcon.HTTP_204


class SessionInfo:
    """GET: who is logged in (200), or 401 and where to log in: what the client asks first."""

    def __init__(self, sessions):
        self.sessions = sessions

    async def on_get(self, req, resp):
        """Answer the session's user name, or 401."""
        user = await self.sessions.user(req)
        if user is None:
            resp.status = falcon.HTTP_401
            resp.media = {"user": None, "login": "/login"}
        else:
            resp.media = {"user": user}


def add_user(name):
    """Create a user (or give it a new password) in REDIS_URL's Redis; print the password."""
    import redis  # the synchronous client: a command, not the server

    if not NAME.fullmatch(name):
        sys.exit(f"a user name is 1 to 32 of a-z 0-9 _ -, not {name!r}")
    password = secrets.token_urlsafe(12)
    redis.Redis.from_url(os.environ["REDIS_URL"]).hset(USERS, name, hasher.hash(password))
    print(f"user {name} password {password}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "add-user":
        sys.exit(__doc__)
    add_user(sys.argv[2])
