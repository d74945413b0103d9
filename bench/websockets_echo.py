"""Reference: the `websockets` library's own asyncio server, with step03's settings.

"/" echoes, "/chat" is a minimal room speaking the chat protocol through
websockets.broadcast (no outbox of its own). Run: python websockets_echo.py [--port P]
"""

import argparse
import asyncio
import json
import secrets

from websockets.asyncio.server import broadcast, serve

# The same limits step03 gives uvicorn.
MAX_MESSAGE_SIZE = 16 * 2**20
PING_INTERVAL = 20
PING_TIMEOUT = 20

clients = {}  # chat client id -> its connection


async def echo(ws):
    """Send every text and binary message back."""
    async for message in ws:
        await ws.send(message)


async def chat(ws):
    """The chat protocol at its simplest: welcome, join, message, leave."""
    client_id = secrets.token_hex(3)
    others = list(clients.values())
    clients[client_id] = ws
    await ws.send(json.dumps({"type": "welcome", "id": client_id, "count": len(clients)}))
    broadcast(others, json.dumps({"type": "join", "id": client_id, "count": len(clients)}))
    try:
        async for text in ws:
            if isinstance(text, str) and text.strip():
                event = {"type": "message", "id": client_id, "text": text.strip()}
                broadcast(clients.values(), json.dumps(event))
    finally:
        del clients[client_id]
        broadcast(clients.values(), json.dumps({"type": "leave", "id": client_id,
                                                "count": len(clients)}))


async def handler(ws):
    """Route by path."""
    await (chat if ws.request.path == "/chat" else echo)(ws)


async def main():
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    async with serve(handler, args.host, args.port, max_size=MAX_MESSAGE_SIZE,
                     ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
                     backlog=2048) as server:  # uvicorn's backlog; asyncio's is 100
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
