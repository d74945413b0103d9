"""Step 2, first rung: the post's app.py and wsgi.py in one file, fixed just enough to run.

Run it with `python minimal.py` (PORT=8000 by default). Each FIX is one place where
the post's code fails as published; nothing else is added. app.py is the hardened
version, and README.md shows what this one still gets wrong.
"""

# FIX 1: patch the standard library before anything imports it (the post's wsgi.py does).
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

import falcon  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402  FIX 2: never imported


class WebSocketAPI:
    def on_get(self, req, resp):
        # FIX 3: a WSGI app never calls on_websocket; the upgraded socket is in the environ.
        ws = req.env.get("wsgi.websocket")
        if ws is not None:
            return self.on_websocket(req, ws)
        resp.content_type = falcon.MEDIA_TEXT  # FIX 4: this text is not JSON
        resp.text = "This endpoint is for Websockets only."

    def on_websocket(self, req, ws):
        try:
            while True:
                message = ws.receive()
                if message is None:  # FIX 5: the client has gone; the post's loop would spin
                    break
                ws.send(message)  # the post's "Process the received message": echo it
        except WebSocketError:
            pass  # the post's "Handle websocket errors": the client is gone


app = falcon.App()  # FIX 6: falcon.API() is deprecated, and gone in Falcon 5
app.add_route("/", WebSocketAPI())

if __name__ == "__main__":
    # FIX 7: listen on loopback, not the post's 0.0.0.0 (every network the machine is on).
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000")))
    WSGIServer(address, app, handler_class=WebSocketHandler).serve_forever()
