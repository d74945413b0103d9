"""Step 5, first rung: step 4's first rung on a Redis stream, so a client can resume.

Run it twice against one Redis, on two ports, and chat across them:
    REDIS_URL=redis://127.0.0.1:6380/0 PORT=8000 python minimal.py
    REDIS_URL=redis://127.0.0.1:6380/0 PORT=8001 python minimal.py
Reconnect to either with /chat?last_id=<the last event_id you got>: what you missed comes first.
Nothing else: server.py (app.py, chat.py, backplane.py) is the hardened version.
"""

import asyncio
import json
import os
import secrets

import falcon
import falcon.asgi
import redis.asyncio as redis
import uvicorn
from falcon import WebSocketDisconnected

backplane = redis.from_url(os.environ["REDIS_URL"], decode_responses=True)


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
        # Start after the last event this client got, or after the newest one: nothing between.
        newest = await backplane.xrevrange("chat", count=1)
        start = req.get_param("last_id") or (newest[0][0] if newest else "0-0")
        relay = asyncio.create_task(relay_to(ws, start))
        sender = secrets.token_hex(3)
        try:
            while True:
                event = {"type": "message", "id": sender, "text": await ws.receive_text()}
                # The stream keeps the newest 1,000 events (about: ~); Redis gives the id.
                await backplane.xadd("chat", {"event": json.dumps(event)}, maxlen=1000)
        except WebSocketDisconnected:
            pass
        finally:
            relay.cancel()


async def relay_to(ws, last_id):
    """Send this client every event after last_id, in order, as the stream grows."""
    while True:  # one blocking XREAD per client: simple, but one Redis connection each
        for _, events in await backplane.xread({"chat": last_id}, block=0):
            for last_id, fields in events:
                await ws.send_text(json.dumps({**json.loads(fields["event"]), "event_id": last_id}))


app = falcon.asgi.App()
app.add_route("/", WebSocketAPI())
app.add_route("/chat", Chat())

if __name__ == "__main__":
    # Loopback, not the post's 0.0.0.0. uvicorn needs a WebSocket library: websockets.
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    uvicorn.run(app, host=host, port=port)
