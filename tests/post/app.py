# ruff: noqa  (the post's code as published, lint errors included)
# The post's app.py, verbatim: its code blocks from steps 2 to 5, in order.
# Nothing is filled in: the post's "..." lines are valid Python (the Ellipsis).
import falcon
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket import WebSocketError

class WebSocketAPI:
    def on_get(self, req, resp):
        resp.status = falcon.HTTP_200
        resp.text = "This endpoint is for Websockets only."

def on_websocket(self, req, ws):
    try:
        while True:
            message = ws.receive()
            # Process the received message
            ...
    except WebSocketError as e:
        # Handle websocket errors
        ...

app = falcon.API()
app.add_route('/', WebSocketAPI())
