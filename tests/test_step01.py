"""step01: the post's resource over plain HTTP, in-process with falcon.testing."""

import urllib.request
import warnings

import falcon.testing
import pytest
from websockets.exceptions import InvalidMessage
from websockets.sync.client import connect

from conftest import load_module


@pytest.fixture(scope="module")
def client():
    return falcon.testing.TestClient(load_module("step01_app", "step01_http/app.py").app)


def test_get_answers_the_posts_text(client):
    result = client.simulate_get("/")
    assert result.status_code == 200
    assert result.text == "This endpoint is for Websockets only."


def test_get_says_it_is_plain_text(client):
    assert client.simulate_get("/").headers["Content-Type"].startswith("text/plain")


def test_health_answers_ok(client):
    assert client.simulate_get("/health").json == {"status": "ok"}


def test_starts_without_a_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_module("step01_app_strict", "step01_http/app.py")


def test_serves_the_posts_text_over_http(step01_server):
    with urllib.request.urlopen(step01_server.http_url + "/", timeout=5) as response:
        assert response.read() == b"This endpoint is for Websockets only."


def test_has_no_websocket(step01_server):
    # wsgiref answers the handshake in HTTP/1.0, which no WebSocket client accepts.
    with pytest.raises(InvalidMessage, match="did not receive a valid HTTP response"):
        connect(step01_server.ws_url + "/", open_timeout=5)
