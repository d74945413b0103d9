"""Step 4, first rung: step 3's first rung, plus a chat that Redis pub/sub shares between processes.

Run it twice against one Redis, on two ports, and chat across them:
    REDIS_URL=redis://127.0.0.1:6380/0 PORT=8000 python minimal.py
    REDIS_URL=redis://127.0.0.1:6380/0 PORT=8001 python minimal.py
Nothing else: server.py (app.py, chat.py, backplane.py) is the hardened version.
"""

import asyncio
import contextlib
import json
import os
import secrets

import falcon
import falcon.asgi
import redis.asyncio as redis
import uvicorn
from falcon import WebSocketDisconnected

backplane = redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
clients = set()  # this process's chat clients; the other processes have theirs


class WebSocketAPI:
    async def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT  # this text is not JSON
        resp.text = "This endpoint is for Websockets only."

    # falcon.asgi calls this for the upgrade, as the post expects of falcon.API.
    async def on_websocket(self, req, ws):
        await ws.accept()  # until then the handshake can still be refused
        try:
            while True:
                message = await ws.receive_text()
                await ws.send_text(message)  # the post's "Process the received message"
        except WebSocketDisconnected:
            pass  # the post's "Handle websocket errors": the client is gone


class Chat:
    async def on_websocket(self, req, ws):
        await ws.accept()
        clients.add(ws)
        sender = secrets.token_hex(3)
        try:
            while True:
                event = {"type": "message", "id": sender, "text": await ws.receive_text()}
                # Every process, this one too, hears it from Redis and sends it to its clients.
                await backplane.publish("chat", json.dumps(event))
        except WebSocketDisconnected:
            pass
        finally:
            clients.discard(ws)


class Relay:
    """Middleware: once the server starts, send every event on the channel to our clients."""

    async def process_startup(self, scope, event):
        self.pubsub = backplane.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe("chat")
        self.task = asyncio.create_task(self.relay())

    async def relay(self):
        async for message in self.pubsub.listen():
            for ws in list(clients):
                with contextlib.suppress(WebSocketDisconnected):  # it left meanwhile
                    await ws.send_text(message["data"])


app = falcon.asgi.App(middleware=[Relay()])
app.add_route("/", WebSocketAPI())
app.add_route("/chat", Chat())

if __name__ == "__main__":
    # Loopback, not the post's 0.0.0.0. uvicorn needs a WebSocket library: websockets.
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    uvicorn.run(app, host=host, port=port)
