"""Reference: a bare ASGI echo app on uvicorn, with step03's WebSocket settings.

It is what step03 would cost without Falcon: "/" echoes, "/chat" is a minimal
room speaking the chat protocol with one plain send per client (no outbox, no
protection against a slow reader). Run: python bare_asgi.py [--host H] [--port P]
"""

import argparse
import json
import secrets

import uvicorn

# The same values step03_ws_asgi/server.py gives uvicorn.Config().
MAX_MESSAGE_SIZE = 16 * 2**20
PER_MESSAGE_DEFLATE = False
PING_INTERVAL = 20
PING_TIMEOUT = 20

clients = {}  # chat client id -> its ASGI send


async def lifespan(receive, send):
    """Answer uvicorn's startup and shutdown events."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def http(receive, send):
    """Answer any plain HTTP request with 426: only WebSockets are served."""
    await send({"type": "http.response.start", "status": 426,
                "headers": [(b"upgrade", b"websocket")]})
    await send({"type": "http.response.body", "body": b""})


async def echo(receive, send):
    """Send every text and binary message back."""
    await send({"type": "websocket.accept"})
    while (event := await receive())["type"] == "websocket.receive":
        if event.get("text") is not None:
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            await send({"type": "websocket.send", "bytes": event["bytes"]})


async def broadcast(event, skip=None):
    """Send an event to every chat client, one after the other."""
    text = json.dumps(event)
    for client_id, send in list(clients.items()):
        if client_id != skip:
            try:
                await send({"type": "websocket.send", "text": text})
            except OSError:
                pass  # That client is gone; its own task removes it.


async def chat(receive, send):
    """The chat protocol at its simplest: welcome, join, message, leave."""
    await send({"type": "websocket.accept"})
    client_id = secrets.token_hex(3)
    clients[client_id] = send
    welcome = {"type": "welcome", "id": client_id, "count": len(clients)}
    await send({"type": "websocket.send", "text": json.dumps(welcome)})
    await broadcast({"type": "join", "id": client_id, "count": len(clients)}, skip=client_id)
    try:
        while (event := await receive())["type"] == "websocket.receive":
            text = (event.get("text") or "").strip()
            if text:
                await broadcast({"type": "message", "id": client_id, "text": text})
    finally:
        del clients[client_id]
        await broadcast({"type": "leave", "id": client_id, "count": len(clients)})


async def app(scope, receive, send):
    """Route by scope type and path."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await http(receive, send)
    else:
        await receive()  # websocket.connect
        await (chat if scope["path"] == "/chat" else echo)(receive, send)


def serve(asgi_app, description=__doc__):
    """Serve an ASGI app with the uvicorn settings step03 uses (falcon_asgi.py's too)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(
        asgi_app,
        host=args.host,
        port=args.port,
        loop="auto",  # uvloop where installed, as step03 runs
        http="auto",
        ws="websockets-sansio",
        ws_per_message_deflate=PER_MESSAGE_DEFLATE,
        ws_max_size=MAX_MESSAGE_SIZE,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    serve(app)
