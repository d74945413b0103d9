"""Run step 2 on gevent's WSGIServer: python wsgi.py [--host H] [--port P]."""

# Patch the standard library before anything else imports it.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from app import CLIENT_DIR, app  # noqa: E402
from protections import UNMASKED_IN, Handler, close_all  # noqa: E402

SHUTDOWN_TIMEOUT = 3  # seconds given to clients to answer our close frame


def main():
    """Serve the app until SIGTERM or Ctrl+C, then close every WebSocket with 1001."""
    parser = argparse.ArgumentParser(description=__doc__)
    # Loopback by default: the post's 0.0.0.0 exposes the server to the network.
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()

    server = WSGIServer((args.host, args.port), app, handler_class=Handler)

    def shut_down():
        """Tell every WebSocket client we are going away, then stop."""
        close_all(1001, "server shutting down")
        server.stop(timeout=SHUTDOWN_TIMEOUT)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, shut_down)

    # app.py serves the client only when ../client is there: offer it only then.
    client = f", client at http://{args.host}:{args.port}/client/" if CLIENT_DIR.is_dir() else ""
    print(f"step02: serving ws://{args.host}:{args.port}/ and /chat{client}", flush=True)
    print(f"step02: client frames unmasked in {UNMASKED_IN}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
