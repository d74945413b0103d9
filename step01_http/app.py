"""Step 1: the post's resource as a plain HTTP Falcon app (no WebSocket yet)."""

import os
from wsgiref.simple_server import make_server

import falcon

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8000"))


class WebSocketAPI:
    """The post's resource: for now it only answers plain HTTP GET."""

    def on_get(self, req, resp):
        # Say what the body is; Falcon's default media type would be JSON.
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "This endpoint is for Websockets only."


class HealthResource:
    """A route scripts and tests poll to know the server is up."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


# The post's falcon.API is the deprecated name of falcon.App (removed in Falcon 5).
app = falcon.App()
app.add_route("/", WebSocketAPI())
app.add_route("/health", HealthResource())


if __name__ == "__main__":
    # Serve on loopback only; set HOST=0.0.0.0 to expose it on purpose.
    with make_server(HOST, PORT, app) as server:
        print(f"step01: serving http://{HOST}:{PORT}/ (HTTP only, no WebSocket)", flush=True)
        server.serve_forever()
