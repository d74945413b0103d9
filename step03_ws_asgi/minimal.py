"""Step 3, first rung: the post's resource on falcon.asgi, where on_websocket is real.

Run it with `python minimal.py` (PORT=8000 by default). The post's shape, on ASGI,
and nothing else; app.py is the hardened version, and README.md shows what this
one still gets wrong.
"""

import os

import falcon
import falcon.asgi
import uvicorn
from falcon import WebSocketDisconnected


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


app = falcon.asgi.App()
app.add_route("/", WebSocketAPI())

if __name__ == "__main__":
    # Loopback, not the post's 0.0.0.0. uvicorn needs a WebSocket library: websockets.
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    uvicorn.run(app, host=host, port=port)
