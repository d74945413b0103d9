"""step02 refuses stock gevent-websocket, with one clear log line naming protections.Worker.

Stock gevent-websocket (no size limit, close codes, Origin check or pings) still
completes the handshake; the app then closes the socket at once and logs why.
Both stock servers run as real processes: gunicorn's stock worker, and the post's
gevent WSGIServer with the stock WebSocketHandler.
"""

import sys

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import BIN, TIMEOUT, load_module, open_ws

STOCK_SERVER = load_module("step02_protections", "step02_ws_gevent/protections.py").STOCK_SERVER

# The post's wsgi.py, serving step02's app.py with stock gevent-websocket.
POST_LAUNCHER = (
    "from gevent import monkey; monkey.patch_all()\n"
    "from gevent.pywsgi import WSGIServer\n"
    "from geventwebsocket.handler import WebSocketHandler\n"
    "from app import app\n"
    "WSGIServer(('127.0.0.1', {port}), app, handler_class=WebSocketHandler).serve_forever()\n"
)
STOCK_SERVERS = {
    "stock-gunicorn-worker": [
        str(BIN / "gunicorn"),
        "--worker-class", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
        "--bind", "127.0.0.1:{port}", "app:app",
    ],
    "stock-wsgiserver": [sys.executable, "-c", POST_LAUNCHER],
}


@pytest.fixture(params=list(STOCK_SERVERS))
def stock_server(request, make_server):
    """step02's app.py on each stock gevent-websocket server in turn."""
    return make_server(request.param, cwd="step02_ws_gevent", command=STOCK_SERVERS[request.param])


def assert_closed_at_once(server, path):
    """Open a WebSocket on path; the server closes it before sending anything."""
    with open_ws(server, path) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)


def refusals(server):
    """The server's log lines that name protections.Worker."""
    return [line for line in server.output().splitlines() if "protections.Worker" in line]


def test_echo_is_closed_at_once(stock_server):
    """A WebSocket to "/" is closed without an echo."""
    assert_closed_at_once(stock_server, "/")


def test_chat_is_closed_at_once(stock_server):
    """A WebSocket to /chat is closed without a welcome."""
    assert_closed_at_once(stock_server, "/chat")


def test_each_refusal_logs_one_line(stock_server):
    """Each refused WebSocket leaves exactly one log line, which names protections.Worker."""
    assert_closed_at_once(stock_server, "/")
    assert_closed_at_once(stock_server, "/chat")
    lines = refusals(stock_server)
    assert len(lines) == 2, stock_server.output()
    assert all(STOCK_SERVER in line for line in lines), lines
