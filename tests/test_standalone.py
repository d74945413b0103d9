"""Every step folder stands alone: copied anywhere, it still serves its WebSocket.

Each folder is copied into a temporary directory, without the shared client beside
it, and started there as a real process; the client is the `websockets` library.
"""

import shutil
import sys
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, TIMEOUT, authenticate, open_ws

PYTHON = sys.executable
# name: (folder, command, environment). The first rungs read $PORT, set by conftest;
# their names are conftest's, so that it waits for their port instead of /health.
STANDALONE = {
    "step02-minimal": ("step02_ws_gevent", [PYTHON, "minimal.py"], {}),
    "step03-minimal": ("step03_ws_asgi", [PYTHON, "minimal.py"], {}),
    "step04-minimal": ("step04_scale_out", [PYTHON, "minimal.py"], {}),  # + its own redis-server
    "step05-minimal": ("step05_resume", [PYTHON, "minimal.py"], {}),  # + its own redis-server
    "step02": ("step02_ws_gevent", [PYTHON, "wsgi.py", "--port", "{port}"], {}),
    "step02-simple": ("step02_ws_gevent", [PYTHON, "wsgi_simple.py", "--port", "{port}"], {}),
    "step03": ("step03_ws_asgi", [PYTHON, "server.py", "--port", "{port}"], {}),
    "step04": ("step04_scale_out", [PYTHON, "server.py", "--port", "{port}"], {"REDIS_URL": ""}),
    "step05": ("step05_resume", [PYTHON, "server.py", "--port", "{port}"], {}),  # + redis-server
    "step06": ("step06_production", [PYTHON, "server.py", "--port", "{port}"], {}),  # + Redis
}
HARDENED = ["step02", "step02-simple", "step03", "step04", "step05", "step06"]
NO_CLIENT = "no client at"


@pytest.fixture
def start_copy(request, make_server, tmp_path):
    """Copy a step's folder alone into tmp_path and start it from there."""

    def start(name):
        folder, command, env = STANDALONE[name]
        if name in ("step04-minimal", "step05-minimal", "step05", "step06"):
            env = {"REDIS_URL": request.getfixturevalue("redis_server").url}
        copy = tmp_path / folder
        shutil.copytree(ROOT / folder, copy, ignore=shutil.ignore_patterns("__pycache__"))
        server = make_server(name, cwd=copy, command=command, env=env)
        # step06 serves its sockets to a logged-in user only: log in, with the copy's auth.py.
        return authenticate(server) if name == "step06" else server

    return start


def get_status(server, path):
    """GET a path and return the HTTP status, errors included."""
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("name", list(STANDALONE))
def test_copy_serves_its_websocket(start_copy, name):
    """A copy of the folder alone echoes a text on "/"."""
    server = start_copy(name)
    with open_ws(server) as ws:
        ws.send("hello from a copy")
        assert ws.recv(timeout=TIMEOUT) == "hello from a copy"


@pytest.mark.parametrize("name", HARDENED)
def test_copy_without_client_does_not_serve_it(start_copy, name):
    """Without ../client, GET /client/ is 404."""
    server = start_copy(name)
    assert get_status(server, "/client/") == 404


@pytest.mark.parametrize("name", HARDENED)
def test_copy_without_client_says_so_once(start_copy, name):
    """Without ../client, the server says once that it does not serve it."""
    server = start_copy(name)
    assert server.output().count(NO_CLIENT) == 1, server.output()



@pytest.mark.parametrize("name", HARDENED)
def test_copy_without_client_does_not_advertise_it(start_copy, name):
    """Without ../client, the start-up banner offers no /client/ URL."""
    server = start_copy(name)
    assert "client at http://" not in server.output(), server.output()
