"""The post's app.py with on_websocket as a method of WebSocketAPI, filled in to echo.

The post shows on_websocket at module level; here it sits in the class, where the
post means it, and its "..." is filled with the obvious code: send the message back.
"""

import falcon
from geventwebsocket import WebSocketError


class WebSocketAPI:
    def on_get(self, req, resp):
        resp.status = falcon.HTTP_200
        resp.text = "This endpoint is for Websockets only."

    def on_websocket(self, req, ws):
        try:
            while True:
                message = ws.receive()
                # Filled in: echo the message back.
                ws.send(message)
        except WebSocketError:
            # Filled in: the connection is over.
            return


app = falcon.API()
app.add_route('/', WebSocketAPI())
