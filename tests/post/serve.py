"""The post's wsgi.py, changed only as far as it must be to start and to be tested.

Three changes, each marked below: the WebSocketHandler import the post forgets,
the port from $PORT instead of 8000, and the app module from the command line.
The server, its handler and its 0.0.0.0 address are the post's.
"""

from gevent import monkey

monkey.patch_all()

import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402

# Added: the post uses WebSocketHandler here without importing it.
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

# Changed: `python serve.py MODULE` serves MODULE.app (default: the post's app.py).
app = importlib.import_module(sys.argv[1] if len(sys.argv) > 1 else "app").app

if __name__ == '__main__':
    # Changed: $PORT instead of 8000, so each test gets a free port.
    port = int(os.environ["PORT"])
    http_server = WSGIServer(('0.0.0.0', port), app, handler_class=WebSocketHandler)
    http_server.serve_forever()
