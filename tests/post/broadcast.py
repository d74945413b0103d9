"""The naive chat broadcast: one loop that awaits each client's send in turn.

Run with `uvicorn broadcast:app --ws websockets-sansio`. The post stops before any
broadcast; this is the obvious first version, filled in as minimal code.
"""

import falcon.asgi
from falcon import WebSocketDisconnected

clients = []


class Chat:
    """Every text message goes to every client, one after the other."""

    async def on_websocket(self, req, ws):
        await ws.accept()
        clients.append(ws)
        try:
            while True:
                text = await ws.receive_text()
                # One client that stops reading blocks this loop, and so everyone.
                for client in list(clients):
                    await client.send_text(text)
        except WebSocketDisconnected:
            pass
        finally:
            clients.remove(ws)


class Health:
    """Let the tests know the server is up."""

    async def on_get(self, req, resp):
        resp.media = {"status": "ok"}


app = falcon.asgi.App()
app.add_route("/chat", Chat())
app.add_route("/health", Health())
