"""Reference: bare_asgi.py's two endpoints written with Falcon's WebSocket API, and nothing else.

Between bare_asgi.py and step03 it splits what step03 costs in two: this app against
bare_asgi.py is what Falcon costs; step03 against this app is what step03's own code costs
(its protections, outbox and server). Same uvicorn settings as bare_asgi.py.
Run: python falcon_asgi.py [--host H] [--port P]
"""

import json
import secrets

import falcon.asgi
import falcon.media
from falcon import WebSocketDisconnected

from bare_asgi import serve

clients = {}  # chat client id -> its Falcon WebSocket


class Echo:
    """Send every text and binary message back."""

    async def on_websocket(self, req, ws):
        """Echo until the client leaves."""
        await ws.accept()
        try:
            while True:
                # receive_media() takes text or binary (as step03's "/" does).
                message = await ws.receive_media()
                if isinstance(message, str):
                    await ws.send_text(message)
                else:
                    await ws.send_data(message)
        except WebSocketDisconnected:
            pass


async def broadcast(event, skip=None):
    """Send an event to every chat client, one after the other."""
    text = json.dumps(event)
    for client_id, ws in list(clients.items()):
        if client_id != skip:
            try:
                await ws.send_text(text)
            except WebSocketDisconnected:
                pass  # That client is gone; its own responder removes it.


class Chat:
    """The chat protocol at its simplest: welcome, join, message, leave."""

    async def on_websocket(self, req, ws):
        """Chat until the client leaves."""
        await ws.accept()
        client_id = secrets.token_hex(3)
        clients[client_id] = ws
        welcome = {"type": "welcome", "id": client_id, "count": len(clients)}
        await ws.send_text(json.dumps(welcome))
        await broadcast({"type": "join", "id": client_id, "count": len(clients)}, skip=client_id)
        try:
            while True:
                text = (await ws.receive_text()).strip()
                if text:
                    await broadcast({"type": "message", "id": client_id, "text": text})
        except WebSocketDisconnected:
            pass
        finally:
            del clients[client_id]
            await broadcast({"type": "leave", "id": client_id, "count": len(clients)})


class AsIs(falcon.media.TextBaseHandlerWS, falcon.media.BinaryBaseHandlerWS):
    """Payloads as they are, text for text and bytes for binary (as in step03's app.py)."""

    def serialize(self, media):
        """Send the payload as it is."""
        return media

    def deserialize(self, payload):
        """Return the payload as it arrived."""
        return payload


app = falcon.asgi.App()
# As step03: uvicorn implements ASGI 2.4, so Falcon's own receive buffer is off.
app.ws_options.max_receive_queue = 0
app.ws_options.media_handlers[falcon.WebSocketPayloadType.TEXT] = AsIs()
app.ws_options.media_handlers[falcon.WebSocketPayloadType.BINARY] = AsIs()
app.add_route("/", Echo())
app.add_route("/chat", Chat())


if __name__ == "__main__":
    # The same uvicorn settings as bare_asgi.py, by construction.
    serve(app, __doc__)
