"""uvicorn as `pip install uvicorn` leaves it: neither websockets nor wsproto importable."""

import os
import sys

# A None entry makes `import websockets` raise ImportError, as if it were not installed.
sys.modules["websockets"] = None
sys.modules["wsproto"] = None

import uvicorn  # noqa: E402


async def app(scope, receive, send):
    """A bare ASGI app: accepts every WebSocket, answers every HTTP request with 200."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
    elif scope["type"] == "http":
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"status": "ok"}'})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), lifespan="off")
