"""Serve app.py on uvicorn, every WebSocket setting spelled out: python server.py [--port P]."""

import argparse
import contextlib
import os

import uvicorn

from app import CLIENT_DIR, app
from protections import (
    ECHO_MAX_MESSAGE_SIZE,
    PER_MESSAGE_DEFLATE,
    PING_INTERVAL,
    PING_TIMEOUT,
    Server,
    WebSocketProtocol,
)

SHUTDOWN_TIMEOUT = 3  # seconds given to connections to finish once clients heard 1001
# The proxy's address: only a connection from there may say whose request it carries
# (X-Forwarded-For, X-Forwarded-Proto). Never "*": any client could then pick its address.
FORWARDED_ALLOW_IPS = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def main():
    """Serve the app until SIGTERM or Ctrl+C, then close every WebSocket with 1001."""
    parser = argparse.ArgumentParser(description=__doc__)
    # Loopback by default: the post's 0.0.0.0 exposes the server to the network.
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    # "auto" is uvloop where it is installed (requirements.txt pins it), asyncio elsewhere.
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                        help="event loop (default: auto, uvloop when installed)")
    parser.add_argument("--ws-per-message-deflate", choices=["true", "false"],
                        default=str(PER_MESSAGE_DEFLATE).lower(),
                        help="accept compression when a client offers it (default: %(default)s)")
    args = parser.parse_args()

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop=args.loop,
        http="auto",  # httptools where installed: it parses the handshake's HTTP request
        ws=WebSocketProtocol,  # uvicorn's "websockets-sansio", closing errors cleanly
        ws_per_message_deflate=args.ws_per_message_deflate == "true",
        ws_max_size=ECHO_MAX_MESSAGE_SIZE,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
        proxy_headers=True,
        forwarded_allow_ips=FORWARDED_ALLOW_IPS,
    )
    # app.py serves the client only when ../client is there: offer it only then.
    client = f", client at http://{args.host}:{args.port}/client/" if CLIENT_DIR.is_dir() else ""
    print(f"serving ws://{args.host}:{args.port}/ and /chat{client}", flush=True)
    # uvicorn shuts down cleanly on Ctrl+C, then raises it again: no traceback for that.
    with contextlib.suppress(KeyboardInterrupt):
        Server(config).run()


if __name__ == "__main__":
    main()
