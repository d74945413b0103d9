"""Small resources that show what stock gevent-websocket (the post's server) does.

Run with `python serve.py stock_app`. A WSGI falcon.App never calls on_websocket,
so each resource takes the socket gevent-websocket leaves in the WSGI environ.
"""

import falcon
from geventwebsocket import WebSocketError

LOOP_LIMIT = 5  # turns of the post's `while True`, which would spin forever on None


class Loop:
    """The post's loop shape, printing what each ws.receive() returns."""

    def on_get(self, req, resp):
        ws = req.env["wsgi.websocket"]
        try:
            for _ in range(LOOP_LIMIT):
                message = ws.receive()
                print("received", repr(message), flush=True)
        except WebSocketError as e:
            print("WebSocketError", repr(str(e)), flush=True)


class Echo:
    """Send every message back until receive() says the connection is over."""

    def on_get(self, req, resp):
        ws = req.env["wsgi.websocket"]
        while (message := ws.receive()) is not None:
            ws.send(message)


class Bye:
    """Close each connection at once with code 1001 and reason "bye"."""

    def on_get(self, req, resp):
        req.env["wsgi.websocket"].close(1001, "bye")


class Health:
    """Let the tests know the server is up."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


app = falcon.App()
app.add_route("/", Echo())
app.add_route("/loop", Loop())
app.add_route("/bye", Bye())
app.add_route("/health", Health())
